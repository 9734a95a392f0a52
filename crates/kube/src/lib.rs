//! podrunner's Kubernetes executor. Today: the pod plan, the pure builder of the job Pod
//! from the runner's configuration and the job payload. The lifecycle on the API server comes
//! next (see the issue tracker).

pub mod fargate;
pub mod plan;

pub use plan::{PlanContext, PlanError, PodPlan, plan};
