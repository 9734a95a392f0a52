//! Why the agent could not even start reporting to GitLab.

use std::path::PathBuf;

/// Why the agent could not even start reporting to GitLab.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The spec file could not be read.
    #[error("cannot read the spec {path}: {source}")]
    ReadSpec {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The spec is not valid, or of another version.
    #[error("{path}: {source}")]
    BadSpec {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::spec::SpecError,
    },
    /// The trace prelude handed over in the environment is not base64.
    #[error("{variable} is not base64: {reason}")]
    BadPrelude {
        /// The environment variable.
        variable: &'static str,
        /// Why.
        reason: String,
    },
    /// GitLab cannot be reached with the spec's settings.
    #[error("cannot talk to GitLab: {0}")]
    Client(#[from] podrunner_gitlab::ClientError),
}
