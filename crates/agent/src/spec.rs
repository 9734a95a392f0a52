//! The agent's spec: one job payload plus everything the agent needs to run it without the
//! manager. The manager writes it (mode 0600; it holds the job token and variables).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the agent reaches GitLab.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
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

/// One job for the agent.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSpec {
    /// How to reach GitLab.
    pub gitlab: GitlabConnection,
    /// The job payload exactly as GitLab sent it.
    pub job: serde_json::Value,
    /// Trace bytes GitLab already has (written by the manager).
    pub trace_start_offset: u64,
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
    /// `shell` from the config (`bash` or `sh`); unset: bash when present, else sh.
    pub shell: Option<String>,
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
    /// The executor name reported to GitLab and in `CI_RUNNER_*`.
    pub executor: String,
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
    /// What the executor wants the job's log to say while preparing (e.g. the Fargate size
    /// and price of the pod, ignored overwrites). A line starting with `WARNING: ` is shown
    /// as a warning.
    pub notes: Vec<String>,
    /// The job's caches as the manager resolved them (keys and archive locations).
    pub caches: Vec<crate::cache_plan::CacheEntry>,
    /// Cache settings of the runner.
    pub cache_settings: crate::cache_plan::CacheSettings,
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
            .field("gitlab", &self.gitlab)
            .field(
                "job",
                &format_args!("[REDACTED payload of job {}]", self.job["id"]),
            )
            .field("trace_start_offset", &self.trace_start_offset)
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
            gitlab: GitlabConnection::default(),
            job: serde_json::Value::Null,
            trace_start_offset: 0,
            builds_dir: PathBuf::from("/builds"),
            project_dir: None,
            temp_dir: None,
            cache_dir: PathBuf::from("/cache"),
            output_limit_kib: 4096,
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
            executor: "shell".to_owned(),
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

/// What the agent leaves behind for whoever started it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminationReport {
    /// GitLab accepted the final state.
    pub final_update_delivered: bool,
    /// `success` or `failed`.
    pub state: String,
    /// The failure reason as the runner knows it.
    pub failure_reason: Option<String>,
    /// The script's exit code.
    pub exit_code: Option<i32>,
    /// Trace bytes GitLab has.
    pub trace_bytes_sent: u64,
    /// GitLab told the agent to stop.
    pub aborted: bool,
}

/// The Fargate size of a job's pod and what it costs.
#[derive(Debug, Clone, PartialEq)]
pub struct FargateBilling {
    /// As `CapacityProvisioned` says it: `2vCPU 9GB`.
    pub capacity: String,
    /// USD per hour at the runner's prices.
    pub usd_per_hour: f64,
}
