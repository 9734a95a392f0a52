//! The agent: runs one GitLab CI job from a spec to its final state, streaming the trace to
//! GitLab itself. The shell executor starts it as a child process; in Kubernetes it is PID 1
//! of the job's build container.

pub mod archive_format;
pub mod archive_write;
mod builtin_git;
mod cache;
pub mod cache_key;
pub mod cache_plan;
mod error;
pub mod extract;
pub mod files;
mod handover;
mod job;
pub mod process;
#[cfg(test)]
mod proptests;
pub mod script;
pub mod sources;
pub mod spec;
pub mod transfer;
pub mod variables;

pub use handover::{
    FARGATE_CAPACITY_ENV, FARGATE_PRICE_ANNOTATION, FARGATE_PRICE_ENV, Handover, PRELUDE_CATCH_UP,
    Prelude, TRACE_PRELUDE_ANNOTATION, TRACE_PRELUDE_ENV, TRACE_PRELUDE_FILE_ENV,
};
pub use job::{AgentError, JOB_FEATURES, agent_features, run, run_from_file};
pub use spec::{
    AgentSpec, FargateBilling, FargateCost, GitlabConnection, Note, SPEC_VERSION, SpecError,
    TerminationReport,
};
