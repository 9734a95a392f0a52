//! podrunner's configuration: gitlab-runner's `config.toml`, read the way gitlab-runner reads
//! it (same keys, same defaults), validated completely before anything touches the network,
//! with errors that name `file:line:column`, the key path and the fix.
//!
//! Two inputs lead to the same [`Config`]: a `config.toml` ([`load_file`], [`load_str`]) and
//! the values of the official GitLab Runner Helm chart ([`load_helm_values`]), whose
//! `runners.config` holds the TOML of the runner.

pub mod chart_values;
mod diagnostics;
mod duration;
pub mod edit;
mod enums;
mod env;
pub mod fargate;
mod feature_flags;
mod helm;
pub mod honoured;
pub mod kubernetes;
mod load;
mod model;
mod pattern;
mod quantity;
mod secret;
mod summary;
mod validate;
mod wildcard;

use std::fmt;
use std::path::PathBuf;

pub use diagnostics::{Diagnostic, KeyPath, Location, Segment, Severity, SourceText};
pub use duration::{DurationError, GoDuration};
pub use enums::{
    CacheType, DnsPolicy, Executor, LogFormat, LogLevel, PatchType, PullPolicies, PullPolicy,
    Shell, TaintEffect, UnknownValue,
};
pub use env::{Environment, ProcessEnvironment, expand, expand_with};
pub use fargate::{FargateConfig, FargateProfile, FargateSelector};
pub use feature_flags::KNOWN as KNOWN_FEATURE_FLAGS;
pub use helm::{HelmOptions, load_helm_values, load_helm_values_file};
pub use honoured::IgnoredSetting;
pub use kubernetes::{ContainerRole, KubernetesConfig, ResourceKind, ResourceSetting};
pub use load::{LoadedConfig, load_file, load_str};
pub use model::*;
pub use pattern::ConfigRegex;
pub use quantity::{Quantity, QuantityError};
pub use secret::SecretString;
pub use summary::{ConfigSummary, ResourceSummary, RunnerSummary};
pub use wildcard::Wildcard;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a usable configuration.
    #[error("{}", ErrorList(errors))]
    Invalid {
        /// What makes it unusable.
        errors: Vec<Diagnostic>,
        /// Findings that would not have stopped it.
        warnings: Vec<Diagnostic>,
    },
}

impl ConfigError {
    pub(crate) fn invalid(errors: Vec<Diagnostic>) -> Self {
        ConfigError::Invalid {
            errors,
            warnings: Vec::new(),
        }
    }

    /// The warnings found before the error, if any.
    pub fn warnings(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { warnings, .. } => warnings,
            ConfigError::Read { .. } => &[],
        }
    }
}

struct ErrorList<'a>(&'a [Diagnostic]);

impl fmt::Display for ErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Where gitlab-runner looks for `config.toml`: `/etc/gitlab-runner/config.toml` for root,
/// else `~/.gitlab-runner/config.toml`.
pub fn default_config_path(is_root: bool, home: Option<PathBuf>) -> PathBuf {
    if is_root {
        PathBuf::from("/etc/gitlab-runner/config.toml")
    } else {
        home.unwrap_or_else(|| PathBuf::from("."))
            .join(".gitlab-runner")
            .join("config.toml")
    }
}
