//! Stand-ins for the outside world, written from the wire protocols only. They never import
//! podrunner's own crates, so tests check the product against the protocol, not against
//! itself.

pub mod git_http;
pub mod gitlab;
pub mod kubernetes;

pub use gitlab::{Endpoint, Fault, GitlabStandIn, JobSpec, JobView, RecordedRequest};
pub use kubernetes::{ConnectionFault, Image, Injection, KubernetesStandIn, Snapshot};
