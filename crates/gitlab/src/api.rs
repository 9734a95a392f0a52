//! The runner API's request bodies and what each answer means (gitlab-runner's
//! `network/gitlab.go`).

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// What the runner tells GitLab about itself (`info`), sent on verify and on every request.
#[derive(Debug, Clone, Serialize)]
pub struct RunnerInfo {
    /// Always `gitlab-runner`: GitLab keys behaviour on it.
    pub name: String,
    /// podrunner's version.
    pub version: String,
    /// Source revision.
    pub revision: String,
    /// `linux`.
    pub platform: String,
    /// Go-style architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// `kubernetes` or `shell`; empty on registration.
    pub executor: String,
    /// `bash`.
    pub shell: String,
    /// What podrunner implements.
    pub features: Features,
    /// `{"gpus": ""}`.
    pub config: serde_json::Value,
    /// Runner labels; omitted when empty.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl RunnerInfo {
    /// The info of this build of podrunner for `executor`.
    pub fn new(version: &str, executor: &str, features: Features) -> Self {
        RunnerInfo {
            name: "gitlab-runner".to_owned(),
            version: version.to_owned(),
            revision: "podrunner".to_owned(),
            platform: std::env::consts::OS.to_owned(),
            architecture: go_arch(std::env::consts::ARCH).to_owned(),
            executor: executor.to_owned(),
            shell: "bash".to_owned(),
            features,
            config: serde_json::json!({"gpus": ""}),
            labels: Default::default(),
        }
    }
}

/// Rust's architecture names in Go's spelling.
pub fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        other => other,
    }
}

/// Every feature key gitlab-runner sends; all are always present.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Features {
    /// Understands `variables`.
    pub variables: bool,
    /// Supports `image`.
    pub image: bool,
    /// Supports `services`.
    pub services: bool,
    /// Uploads artifacts.
    pub artifacts: bool,
    /// Supports `cache`.
    pub cache: bool,
    /// Supports `cache:fallback_keys`.
    pub fallback_cache_keys: bool,
    /// Reuses one environment between jobs.
    pub shared: bool,
    /// More than one `artifacts` entry.
    pub upload_multiple_artifacts: bool,
    /// Non-zip artifact formats.
    pub upload_raw_artifacts: bool,
    /// Interactive session.
    pub session: bool,
    /// Web terminal.
    pub terminal: bool,
    /// `git_info.refspecs` and `depth`.
    pub refspecs: bool,
    /// Masks masked variables.
    pub masking: bool,
    /// Service port proxying.
    pub proxy: bool,
    /// Honours `raw` variables.
    pub raw_variables: bool,
    /// `artifacts:exclude`.
    pub artifacts_exclude: bool,
    /// Steps other than script/after_script.
    pub multi_build_steps: bool,
    /// Resends the whole log on `412`.
    pub trace_reset: bool,
    /// Sends `output.checksum`.
    pub trace_checksum: bool,
    /// Sends `output.bytesize`.
    pub trace_size: bool,
    /// Resolves `secrets`.
    pub vault_secrets: bool,
    /// Reacts to `Job-Status`.
    pub cancelable: bool,
    /// Sends `exit_code`.
    pub return_exit_code: bool,
    /// Per-service variables.
    pub service_variables: bool,
    /// Several service aliases.
    pub service_multiple_aliases: bool,
    /// `image:kubernetes` options.
    pub image_executor_opts: bool,
    /// `services:kubernetes` options.
    pub service_executor_opts: bool,
    /// Runs `after_script` on cancel.
    pub cancel_gracefully: bool,
    /// `run:` steps.
    pub native_steps_integration: bool,
    /// Job committed only after the `running` ack.
    pub two_phase_job_commit: bool,
    /// Job `inputs`.
    pub job_inputs: bool,
}

impl Features {
    /// What podrunner's network client implements, whatever the executor.
    pub fn network() -> Self {
        Features {
            trace_reset: true,
            trace_checksum: true,
            trace_size: true,
            cancelable: true,
            cancel_gracefully: true,
            two_phase_job_commit: true,
            ..Features::default()
        }
    }
}

/// `POST runners` (legacy registration token).
#[derive(Debug, Clone, Serialize)]
pub struct RegisterRequest {
    /// The registration token.
    pub token: Secret,
    /// Description.
    pub description: String,
    /// Comma-separated tags.
    pub tag_list: String,
    /// Run jobs without tags.
    pub run_untagged: bool,
    /// Locked to its projects.
    pub locked: bool,
    /// `not_protected` or `ref_protected`.
    pub access_level: String,
    /// Longest job timeout, seconds; omitted when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub maximum_timeout: i64,
    /// Paused.
    pub paused: bool,
    /// About this runner.
    pub info: RunnerInfo,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// What registration and verification return.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunnerCredentials {
    /// Runner ID.
    #[serde(default)]
    pub id: i64,
    /// The token to keep in `config.toml`.
    #[serde(default)]
    pub token: Secret,
    /// When it expires (RFC 3339; absent or zero for never).
    #[serde(default)]
    pub token_expires_at: Option<String>,
}

/// A job's state in `PUT jobs/:id`, as gitlab-runner names it (`JobState` in
/// `common/network.go` of gitlabhq/gitlab-runner: `pending`, `running`, `failed`, `success`;
/// a runner never sends `pending`). Also the state in the agent's termination report and the
/// manager's `JobEnd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Running (the ack and the heartbeat).
    Running,
    /// Succeeded.
    Success,
    /// Failed.
    Failed,
}

impl JobState {
    /// GitLab's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Success => "success",
            JobState::Failed => "failed",
        }
    }
}

/// Why a job failed, as the runner knows it; mapped for GitLab by [`FailureReason::for_gitlab`].
/// The names are gitlab-runner's `JobFailureReason` values (`common/network.go` of
/// gitlabhq/gitlab-runner); GitLab's own list is `failure_reasons` in
/// `app/models/concerns/enums/ci/commit_status.rb` of gitlabhq/gitlabhq (`script_failure`,
/// `runner_system_failure`, `job_execution_timeout`, `unknown_failure`, ...), and a job's
/// `features.failure_reasons` says which of the runner-only ones this GitLab accepts.
/// `job_canceled` is runner-internal (gitlab-runner never sends it: see `for_gitlab`).
/// Serialized (termination report, `JobEnd`) by [`FailureReason::as_str`]'s name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The script exited non-zero.
    ScriptFailure,
    /// The runner or its infrastructure failed.
    RunnerSystemFailure,
    /// A timeout.
    JobExecutionTimeout,
    /// The image could not be pulled.
    ImagePullFailure,
    /// Something the runner cannot classify.
    UnknownFailure,
    /// The configuration or the job asked for something impossible.
    RunnerConfigurationError,
    /// A service outside the runner failed.
    RunnerExternalDependencyFailure,
    /// The runner was stopped.
    RunnerInterrupted,
    /// The job was canceled.
    JobCanceled,
}

impl FailureReason {
    /// The runner-side name.
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureReason::ScriptFailure => "script_failure",
            FailureReason::RunnerSystemFailure => "runner_system_failure",
            FailureReason::JobExecutionTimeout => "job_execution_timeout",
            FailureReason::ImagePullFailure => "image_pull_failure",
            FailureReason::UnknownFailure => "unknown_failure",
            FailureReason::RunnerConfigurationError => "runner_configuration_error",
            FailureReason::RunnerExternalDependencyFailure => "runner_external_dependency_failure",
            FailureReason::RunnerInterrupted => "runner_interrupted",
            FailureReason::JobCanceled => "job_canceled",
        }
    }

    /// The reason to send: as-is when GitLab lists it (or it is always supported), else
    /// gitlab-runner's compatibility mapping, else `unknown_failure`.
    pub fn for_gitlab(&self, supported: &[String]) -> FailureReason {
        let always = [
            FailureReason::ScriptFailure,
            FailureReason::RunnerSystemFailure,
            FailureReason::JobExecutionTimeout,
        ];
        if always.contains(self) || supported.iter().any(|s| s == self.as_str()) {
            return *self;
        }
        let compatible = match self {
            FailureReason::ImagePullFailure | FailureReason::RunnerExternalDependencyFailure => {
                Some(FailureReason::RunnerSystemFailure)
            }
            FailureReason::RunnerConfigurationError => Some(FailureReason::ScriptFailure),
            _ => None,
        };
        match compatible {
            Some(reason) => reason.for_gitlab(supported),
            None => FailureReason::UnknownFailure,
        }
    }
}

/// The log's size and checksum, as sent with every state update.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TraceOutput {
    /// `crc32:` + 8 hex digits.
    pub checksum: String,
    /// Bytes.
    pub bytesize: u64,
}

/// `PUT jobs/:id` body.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateJobRequest {
    /// About this runner.
    pub info: RunnerInfo,
    /// The job token.
    pub token: Secret,
    /// New state.
    pub state: JobState,
    /// Why it failed, as GitLab accepts it ([`FailureReason::for_gitlab`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,
    /// Deprecated duplicate of `output.checksum`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Log size and checksum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<TraceOutput>,
    /// The script's exit code; omitted when 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// The job's state in GitLab, from the `Job-Status` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteJobStatus {
    /// Still running.
    Running,
    /// Graceful cancel asked: run after_script, then report.
    Canceling,
    /// Canceled: stop now.
    Canceled,
    /// Failed in GitLab: stop now.
    Failed,
    /// Anything else GitLab says.
    Other(String),
}

impl RemoteJobStatus {
    /// Parses the header value.
    pub fn parse(value: &str) -> Self {
        match value {
            "running" => RemoteJobStatus::Running,
            "canceling" => RemoteJobStatus::Canceling,
            "canceled" => RemoteJobStatus::Canceled,
            "failed" => RemoteJobStatus::Failed,
            other => RemoteJobStatus::Other(other.to_owned()),
        }
    }

    /// Whether the job must stop at once.
    pub fn is_abort(&self) -> bool {
        matches!(self, RemoteJobStatus::Canceled | RemoteJobStatus::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_are_mapped_for_gitlab() {
        let supported = vec!["script_failure".to_owned(), "image_pull_failure".to_owned()];
        assert_eq!(
            FailureReason::ImagePullFailure
                .for_gitlab(&supported)
                .as_str(),
            "image_pull_failure"
        );
        assert_eq!(
            FailureReason::ImagePullFailure.for_gitlab(&[]).as_str(),
            "runner_system_failure"
        );
        assert_eq!(
            FailureReason::RunnerConfigurationError
                .for_gitlab(&[])
                .as_str(),
            "script_failure"
        );
        assert_eq!(
            FailureReason::RunnerExternalDependencyFailure
                .for_gitlab(&[])
                .as_str(),
            "runner_system_failure"
        );
        assert_eq!(
            FailureReason::JobCanceled.for_gitlab(&[]).as_str(),
            "unknown_failure"
        );
        assert_eq!(
            FailureReason::RunnerInterrupted
                .for_gitlab(&["runner_interrupted".into()])
                .as_str(),
            "runner_interrupted"
        );
        assert_eq!(
            FailureReason::JobExecutionTimeout.for_gitlab(&[]).as_str(),
            "job_execution_timeout"
        );
    }

    #[test]
    fn reasons_and_states_serialize_by_their_gitlab_names() {
        use FailureReason::*;
        for reason in [
            ScriptFailure,
            RunnerSystemFailure,
            JobExecutionTimeout,
            ImagePullFailure,
            UnknownFailure,
            RunnerConfigurationError,
            RunnerExternalDependencyFailure,
            RunnerInterrupted,
            JobCanceled,
        ] {
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, reason.as_str());
            assert_eq!(
                serde_json::from_value::<FailureReason>(json).unwrap(),
                reason
            );
        }
        assert_eq!(serde_json::to_value(JobState::Success).unwrap(), "success");
        assert_eq!(
            serde_json::from_value::<JobState>("failed".into()).unwrap(),
            JobState::Failed
        );
        assert!(serde_json::from_value::<FailureReason>("script failure".into()).is_err());
    }

    #[test]
    fn every_feature_key_is_sent() {
        let json = serde_json::to_value(Features::network()).unwrap();
        assert_eq!(json.as_object().unwrap().len(), 31);
        assert_eq!(json["cancel_gracefully"], true);
        assert_eq!(json["shared"], false);
    }
}
