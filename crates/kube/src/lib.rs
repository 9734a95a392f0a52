//! podrunner's Kubernetes executor: the pod plan (pure: the job Pod from the runner's
//! configuration and the job payload), the Fargate size and price model, and the executor that
//! runs each job in its own pod.

pub mod calls;
pub mod executor;
pub mod fargate;
pub mod job_client;
mod judge;
pub mod lease;
mod namespaces;
mod pdb;
pub mod plan;
pub mod pod_security;
mod pod_view;
mod prelude;
pub mod pull_policy;
pub mod registry_auth;

pub use executor::{ConnectError, Connection, KubernetesExecutor, connect};
pub use plan::{PlanContext, PlanError, PodPlan, plan};
