//! The agent's spec: one job payload plus everything the agent needs to run it without the
//! manager. The manager writes it (mode 0600; it holds the job token and variables); the
//! agent reads it with [`AgentSpec::from_json`]. It is versioned: a spec of another
//! [`SPEC_VERSION`] is refused, and so is one missing a required field (only the fields that
//! are `Option` may be left out).

use std::collections::BTreeMap;
use std::path::PathBuf;

use podrunner_gitlab::JobPayload;
use podrunner_gitlab::api::{FailureReason, JobState};
use serde::{Deserialize, Serialize};

use crate::script::ShellKind;

/// The version of the spec this agent reads and this manager writes. Bump it on every change
/// of [`AgentSpec`] that an agent of the previous version would misread or refuse; a
/// manager and agents of different podrunner releases then fail the job with a clear error
/// instead of running it half-configured.
pub const SPEC_VERSION: u32 = 1;

/// Why a spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not JSON, or no `version`.
    #[error("not a podrunner agent spec (a JSON object with a numeric `version`): {0}")]
    NotASpec(serde_json::Error),
    /// Written for another version.
    #[error(
        "the spec is version {found} and this agent reads version {expected}: the manager and the job's agent must be the same podrunner release (set the job image's podrunner to the manager's version)"
    )]
    Version {
        /// The spec's `version`.
        found: u32,
        /// [`SPEC_VERSION`].
        expected: u32,
    },
    /// A field is missing or malformed (the payload inside included).
    #[error("the spec is not valid: {0}")]
    Invalid(serde_json::Error),
}

/// How the agent reaches GitLab.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabConnection {
    /// GitLab's URL.
    pub url: String,
    /// `tls-ca-file`.
    pub tls_ca_file: Option<PathBuf>,
    /// `tls-cert-file`.
    pub tls_cert_file: Option<PathBuf>,
    /// `tls-key-file`.
    pub tls_key_file: Option<PathBuf>,
}

/// What the executor wants the job's log to say while preparing, in "Preparing
/// environment", in this order. The agent (or the manager, in a job pod's trace prelude)
/// writes each with [`crate::Prelude`]'s code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Note {
    /// A plain line.
    Info {
        /// The line.
        text: String,
    },
    /// A warning line (`WARNING: ` in yellow).
    Warning {
        /// The warning.
        text: String,
    },
    /// The Fargate size and price predicted for the job's pod before it exists.
    FargateSize {
        /// The declared profile that takes the pod; `None`: Fargate is assumed.
        profile: Option<String>,
        /// Provisioned vCPU.
        vcpu: f64,
        /// Provisioned memory, GB.
        memory_gb: f64,
        /// vCPU the pod requests.
        requested_vcpu: f64,
        /// Memory the pod requests, GB.
        requested_memory_gb: f64,
        /// USD per hour of that size.
        usd_per_hour: f64,
    },
}

impl Note {
    /// A plain line.
    pub fn info(text: impl Into<String>) -> Self {
        Note::Info { text: text.into() }
    }

    /// A warning.
    pub fn warning(text: impl Into<String>) -> Self {
        Note::Warning { text: text.into() }
    }

    /// The note's text, and whether it is a warning.
    pub fn text(&self) -> (String, bool) {
        match self {
            Note::Info { text } => (text.clone(), false),
            Note::Warning { text } => (text.clone(), true),
            Note::FargateSize {
                profile,
                vcpu,
                memory_gb,
                requested_vcpu,
                requested_memory_gb,
                usd_per_hour,
            } => (
                format!(
                    "Fargate: profile {}, pod sized {vcpu}vCPU {memory_gb}GB (requests {requested_vcpu} vCPU, {requested_memory_gb:.2} GB), ${usd_per_hour:.6}/h",
                    profile.as_deref().unwrap_or("(assumed)"),
                ),
                false,
            ),
        }
    }
}

/// One job for the agent. Every field is required in the JSON except the `Option` ones;
/// `Default` is for building a spec in code (tests, `podrunner exec`), never for reading one.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// [`SPEC_VERSION`] of the writer.
    pub version: u32,
    /// How to reach GitLab.
    pub gitlab: GitlabConnection,
    /// The job payload: serialized exactly as GitLab sent it, parsed once with the spec.
    pub job: JobPayload,
    /// `builds_dir`.
    pub builds_dir: PathBuf,
    /// The project directory; default `<builds_dir>/<project full path>`.
    pub project_dir: Option<PathBuf>,
    /// Scripts and file variables; default `<project dir>.tmp`.
    pub temp_dir: Option<PathBuf>,
    /// `cache_dir`.
    pub cache_dir: PathBuf,
    /// `output_limit` in KiB.
    pub output_limit_kib: u64,
    /// `[runners.feature_flags]`.
    pub feature_flags: BTreeMap<String, bool>,
    /// `shell` from the config; unset: bash when present, else sh.
    pub shell: Option<ShellKind>,
    /// `pre_get_sources_script`.
    pub pre_get_sources_script: Option<String>,
    /// `post_get_sources_script`.
    pub post_get_sources_script: Option<String>,
    /// `pre_build_script`.
    pub pre_build_script: Option<String>,
    /// `post_build_script`.
    pub post_build_script: Option<String>,
    /// The runner's `environment` entries (`KEY=VALUE`).
    pub environment: Vec<String>,
    /// `clone_url`.
    pub clone_url: Option<String>,
    /// `[runners.custom_build_dir] enabled`.
    pub custom_build_dir_enabled: bool,
    /// `debug_trace_disabled`.
    pub debug_trace_disabled: bool,
    /// `job_status_final_update_retry_limit`.
    pub final_update_retry_limit: u32,
    /// The executor, reported to GitLab and in `CI_RUNNER_*` / `CI_*_ENVIRONMENT`.
    pub executor: podrunner_config::Executor,
    /// The runner's name, for the log header.
    pub runner_name: String,
    /// The runner's short token, for the log header and `CI_RUNNER_SHORT_TOKEN`.
    pub runner_short_token: String,
    /// The manager's system ID, for the log header.
    pub system_id: String,
    /// Where to write the termination report.
    pub termination_report: Option<PathBuf>,
    /// Slot of this job among the runner's concurrent jobs (`CI_CONCURRENT_ID`).
    pub concurrent_id: u32,
    /// What the executor wants the job's log to say while preparing.
    pub notes: Vec<Note>,
    /// The job's caches as the manager resolved them (keys and archive locations).
    pub caches: Vec<crate::cache_plan::CacheEntry>,
    /// Cache settings of the runner.
    pub cache_settings: crate::cache_plan::CacheSettings,
}

impl AgentSpec {
    /// Reads a spec: its version first (a spec of another version is refused before
    /// anything else of it is read), then every field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let Versioned { version } = serde_json::from_slice(bytes).map_err(SpecError::NotASpec)?;
        if version != SPEC_VERSION {
            return Err(SpecError::Version {
                found: version,
                expected: SPEC_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(SpecError::Invalid)
    }
}

/// The job payload inside is shown only by its job ID, the runner `environment` by its
/// keys, and the scripts by their length: they can hold tokens and masked values.
impl std::fmt::Debug for AgentSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let script = |s: &Option<String>| s.as_ref().map(|s| format!("[{} bytes]", s.len()));
        let keys: Vec<&str> = self
            .environment
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
            .collect();
        f.debug_struct("AgentSpec")
            .field("version", &self.version)
            .field("gitlab", &self.gitlab)
            .field(
                "job",
                &format_args!("[REDACTED payload of job {}]", self.job.job.id),
            )
            .field("builds_dir", &self.builds_dir)
            .field("project_dir", &self.project_dir)
            .field("temp_dir", &self.temp_dir)
            .field("cache_dir", &self.cache_dir)
            .field("output_limit_kib", &self.output_limit_kib)
            .field("feature_flags", &self.feature_flags)
            .field("shell", &self.shell)
            .field(
                "pre_get_sources_script",
                &script(&self.pre_get_sources_script),
            )
            .field(
                "post_get_sources_script",
                &script(&self.post_get_sources_script),
            )
            .field("pre_build_script", &script(&self.pre_build_script))
            .field("post_build_script", &script(&self.post_build_script))
            .field("environment_keys", &keys)
            .field("clone_url", &self.clone_url)
            .field("custom_build_dir_enabled", &self.custom_build_dir_enabled)
            .field("debug_trace_disabled", &self.debug_trace_disabled)
            .field("final_update_retry_limit", &self.final_update_retry_limit)
            .field("executor", &self.executor)
            .field("runner_name", &self.runner_name)
            .field("runner_short_token", &self.runner_short_token)
            .field("system_id", &self.system_id)
            .field("termination_report", &self.termination_report)
            .field("concurrent_id", &self.concurrent_id)
            .field("notes", &self.notes)
            .field("caches", &self.caches)
            .field("cache_settings", &self.cache_settings)
            .finish()
    }
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            version: SPEC_VERSION,
            gitlab: GitlabConnection::default(),
            job: JobPayload::default(),
            builds_dir: PathBuf::from("/builds"),
            project_dir: None,
            temp_dir: None,
            cache_dir: PathBuf::from("/cache"),
            output_limit_kib: podrunner_config::DEFAULT_OUTPUT_LIMIT_KIB as u64,
            feature_flags: BTreeMap::new(),
            shell: None,
            pre_get_sources_script: None,
            post_get_sources_script: None,
            pre_build_script: None,
            post_build_script: None,
            environment: Vec::new(),
            clone_url: None,
            custom_build_dir_enabled: true,
            debug_trace_disabled: false,
            final_update_retry_limit: 10,
            executor: podrunner_config::Executor::Shell,
            runner_name: String::new(),
            runner_short_token: String::new(),
            system_id: String::new(),
            termination_report: None,
            concurrent_id: 0,
            notes: Vec::new(),
            caches: Vec::new(),
            cache_settings: crate::cache_plan::CacheSettings::default(),
        }
    }
}

/// What the agent leaves behind for whoever started it (the shell executor reads the file,
/// the kubernetes executor the build container's termination message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminationReport {
    /// GitLab accepted the final state.
    pub final_update_delivered: bool,
    /// The final state sent: `success` or `failed`.
    pub state: JobState,
    /// Why it failed, as the runner knows it (before [`FailureReason::for_gitlab`]).
    pub failure_reason: Option<FailureReason>,
    /// The script's exit code.
    pub exit_code: Option<i32>,
    /// Trace bytes GitLab has.
    pub trace_bytes_sent: u64,
    /// GitLab told the agent to stop.
    pub aborted: bool,
    /// What the job's Fargate pod cost, as the job's log says it: the manager counts this
    /// in its cost metric, so the two agree.
    pub fargate: Option<FargateCost>,
}

/// The Fargate size of a job's pod and its price: decided once by the manager when Fargate
/// provisioned the pod, handed to the agent as this JSON in the pod annotation
/// [`crate::FARGATE_PRICE_ANNOTATION`], and the only place a job's Fargate cost is computed
/// ([`FargateBilling::cost`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FargateBilling {
    /// As `CapacityProvisioned` says it: `2vCPU 9GB`.
    pub capacity: String,
    /// USD per hour at the runner's prices.
    pub usd_per_hour: f64,
}

impl FargateBilling {
    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the annotation's value.
    pub fn from_annotation(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text.trim())
    }

    /// What running `seconds` costs: billed per second, rounded up, at least one minute
    /// (`podrunner_config::fargate::billed_cost`).
    pub fn cost(&self, seconds: f64) -> FargateCost {
        let seconds = seconds.max(0.0).ceil();
        FargateCost {
            capacity: self.capacity.clone(),
            usd_per_hour: self.usd_per_hour,
            seconds,
            usd: podrunner_config::fargate::billed_cost(self.usd_per_hour, seconds),
        }
    }
}

/// What a job's Fargate pod cost, computed once by [`FargateBilling::cost`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FargateCost {
    /// The size, as `CapacityProvisioned` says it.
    pub capacity: String,
    /// Its price.
    pub usd_per_hour: f64,
    /// Whole seconds since the job started.
    pub seconds: f64,
    /// USD.
    pub usd: f64,
}

impl FargateCost {
    /// The line at the end of the job's log.
    pub fn log_line(&self) -> String {
        format!(
            "Fargate: {} at ${:.6}/h, {} s since the job started: about ${:.6} (billed per second, at least one minute, until the pod is gone)",
            self.capacity, self.usd_per_hour, self.seconds, self.usd
        )
    }
}
