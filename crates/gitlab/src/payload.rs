//! The job payload GitLab sends on `201` from `jobs/request` (gitlab-runner's `JobResponse`):
//! typed for every field podrunner uses, tolerant of unknown and `null` fields, and keeping
//! the raw JSON so nothing is lost when the payload is passed on to the agent.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::secret::Secret;

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or a field of the wrong type.
    #[error("the job payload is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// `null` reads as the type's default.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// A job as GitLab sent it. `Debug` shows the typed view (its secrets redacted), never the
/// raw JSON, which holds the job token and masked values. It serializes as the JSON exactly as
/// received, and deserializes from it into both views, so a payload handed on (in the agent's
/// spec) is parsed once, where it is read, and loses nothing GitLab sent.
#[derive(Clone)]
pub struct JobPayload {
    /// The typed view.
    pub job: JobResponse,
    /// The JSON exactly as received: its text, not a parsed tree (a tree of a payload takes
    /// several times its size, for each job a manager runs), shared by the payload's clones.
    pub raw: Arc<RawValue>,
}

impl std::fmt::Debug for JobPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobPayload")
            .field("job", &self.job)
            .field("raw", &format_args!("[REDACTED JSON]"))
            .finish()
    }
}

impl JobPayload {
    /// Parses a payload.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PayloadError> {
        let raw: Box<RawValue> = serde_json::from_slice(bytes)?;
        JobPayload::from_raw(raw).map_err(PayloadError::from)
    }

    /// Reads a payload from JSON already parsed.
    pub fn from_value(raw: serde_json::Value) -> Result<Self, serde_json::Error> {
        JobPayload::from_raw(serde_json::value::to_raw_value(&raw)?)
    }

    /// Reads a payload from its JSON text.
    fn from_raw(raw: Box<RawValue>) -> Result<Self, serde_json::Error> {
        let job: JobResponse = serde_json::from_str(raw.get())?;
        Ok(JobPayload {
            job,
            raw: Arc::from(raw),
        })
    }

    /// The payload of `job`, its raw JSON made from the typed view (for payloads built in
    /// code: tests, `podrunner exec`).
    pub fn from_typed(job: JobResponse) -> Self {
        let raw = serde_json::value::to_raw_value(&job)
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        JobPayload {
            job,
            raw: Arc::from(raw),
        }
    }

    /// The job timeout in seconds: `runner_info.timeout`, or 7200 when not positive.
    pub fn timeout_secs(&self) -> u64 {
        if self.job.runner_info.timeout > 0 {
            self.job.runner_info.timeout as u64
        } else {
            7200
        }
    }
}

impl Serialize for JobPayload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (*self.raw).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JobPayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        JobPayload::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

impl Default for JobPayload {
    fn default() -> Self {
        JobPayload::from_typed(JobResponse::default())
    }
}

/// Top level of the payload.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct JobResponse {
    /// Job ID.
    pub id: i64,
    /// The job token (`JOB-TOKEN`, git URL, `CI_JOB_TOKEN`).
    pub token: Secret,
    /// Default `GIT_STRATEGY` is `fetch` when true, else `clone`.
    #[serde(deserialize_with = "nullable")]
    pub allow_git_fetch: bool,
    /// About the job.
    #[serde(deserialize_with = "nullable")]
    pub job_info: JobInfo,
    /// Where the sources are.
    #[serde(deserialize_with = "nullable")]
    pub git_info: GitInfo,
    /// Timeout and runner UUID.
    #[serde(deserialize_with = "nullable")]
    pub runner_info: RunnerInfo,
    /// Job variables, later entries overriding earlier ones.
    #[serde(deserialize_with = "nullable")]
    pub variables: Vec<JobVariable>,
    /// `script`, `after_script`, `release`, ...
    #[serde(deserialize_with = "nullable")]
    pub steps: Vec<Step>,
    /// The job image.
    #[serde(deserialize_with = "nullable")]
    pub image: Image,
    /// Service containers.
    #[serde(deserialize_with = "nullable")]
    pub services: Vec<Image>,
    /// Artifacts to upload.
    #[serde(deserialize_with = "nullable")]
    pub artifacts: Vec<Artifact>,
    /// Caches.
    #[serde(deserialize_with = "nullable")]
    pub cache: Vec<Cache>,
    /// Registry logins.
    #[serde(deserialize_with = "nullable")]
    pub credentials: Vec<Credentials>,
    /// Jobs whose artifacts this job downloads.
    #[serde(deserialize_with = "nullable")]
    pub dependencies: Vec<Dependency>,
    /// What GitLab supports for this job.
    #[serde(deserialize_with = "nullable")]
    pub features: GitlabFeatures,
    /// `pre_get_sources_script` / `post_get_sources_script` hooks.
    #[serde(deserialize_with = "nullable")]
    pub hooks: Vec<Hook>,
}

/// `job_info`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct JobInfo {
    /// Job name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Stage name.
    #[serde(deserialize_with = "nullable")]
    pub stage: String,
    /// Project ID.
    #[serde(deserialize_with = "nullable")]
    pub project_id: i64,
    /// Project name.
    #[serde(deserialize_with = "nullable")]
    pub project_name: String,
    /// `group/project`.
    #[serde(deserialize_with = "nullable")]
    pub project_full_path: String,
    /// Pipeline ID.
    #[serde(deserialize_with = "nullable")]
    pub pipeline_id: i64,
    /// Namespace ID.
    #[serde(deserialize_with = "nullable")]
    pub namespace_id: i64,
    /// Root namespace ID.
    #[serde(deserialize_with = "nullable")]
    pub root_namespace_id: i64,
    /// Seconds the job waited in the queue.
    #[serde(deserialize_with = "nullable")]
    pub time_in_queue_seconds: f64,
}

/// `git_info`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct GitInfo {
    /// HTTPS URL with `gitlab-ci-token:<job token>@` inside.
    pub repo_url: Secret,
    /// `sha1` or `sha256`.
    #[serde(deserialize_with = "nullable")]
    pub repo_object_format: String,
    /// Branch or tag name.
    #[serde(rename = "ref", deserialize_with = "nullable")]
    pub git_ref: String,
    /// Commit.
    #[serde(deserialize_with = "nullable")]
    pub sha: String,
    /// Previous commit.
    #[serde(deserialize_with = "nullable")]
    pub before_sha: String,
    /// `branch` or `tag`.
    #[serde(deserialize_with = "nullable")]
    pub ref_type: String,
    /// Refspecs to fetch.
    #[serde(deserialize_with = "nullable")]
    pub refspecs: Vec<String>,
    /// Shallow clone depth (0 = full history).
    #[serde(deserialize_with = "nullable")]
    pub depth: i64,
    /// Whether the ref is protected.
    pub protected: Option<bool>,
}

/// `runner_info`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RunnerInfo {
    /// Runner UUID.
    #[serde(deserialize_with = "nullable")]
    pub uuid: String,
    /// Job timeout in seconds (≤ 0 means 7200).
    #[serde(deserialize_with = "nullable")]
    pub timeout: i64,
}

/// One entry of `variables`.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct JobVariable {
    /// Name.
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    /// Value.
    #[serde(deserialize_with = "nullable")]
    pub value: String,
    /// May be exposed in the pod spec.
    #[serde(deserialize_with = "nullable")]
    pub public: bool,
    /// Written to a file; the variable holds its path.
    #[serde(deserialize_with = "nullable")]
    pub file: bool,
    /// Masked in the log.
    #[serde(deserialize_with = "nullable")]
    pub masked: bool,
    /// No `$` expansion inside.
    #[serde(deserialize_with = "nullable")]
    pub raw: bool,
}

impl std::fmt::Debug for JobVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value: &dyn std::fmt::Debug = if self.public && !self.masked {
            &self.value
        } else {
            &"[REDACTED]"
        };
        f.debug_struct("JobVariable")
            .field("key", &self.key)
            .field("value", value)
            .field("public", &self.public)
            .field("file", &self.file)
            .field("masked", &self.masked)
            .field("raw", &self.raw)
            .finish()
    }
}

/// One entry of `steps`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Step {
    /// `script`, `after_script`, `release`, ...
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Command lines.
    #[serde(deserialize_with = "nullable")]
    pub script: Vec<String>,
    /// Seconds (not enforced by the runner).
    #[serde(deserialize_with = "nullable")]
    pub timeout: i64,
    /// `on_success` (default), `on_failure` or `always`.
    #[serde(deserialize_with = "nullable")]
    pub when: String,
    /// Failure does not fail the job.
    #[serde(deserialize_with = "nullable")]
    pub allow_failure: bool,
}

/// `image` and each entry of `services`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Image {
    /// Image reference.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Host name(s), space or comma separated.
    #[serde(deserialize_with = "nullable")]
    pub alias: String,
    /// Command (arguments).
    #[serde(deserialize_with = "nullable")]
    pub command: Vec<String>,
    /// Entrypoint.
    #[serde(deserialize_with = "nullable")]
    pub entrypoint: Vec<String>,
    /// Exposed ports.
    #[serde(deserialize_with = "nullable")]
    pub ports: Vec<Port>,
    /// Service variables.
    #[serde(deserialize_with = "nullable")]
    pub variables: Vec<JobVariable>,
    /// `always`, `if-not-present`, `never`.
    #[serde(deserialize_with = "nullable")]
    pub pull_policy: Vec<String>,
    /// Executor options (`kubernetes.user`); kept as JSON so unknown keys can be refused.
    pub executor_opts: Option<serde_json::Value>,
}

/// A service port.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Port {
    /// Port number.
    #[serde(deserialize_with = "nullable")]
    pub number: i64,
    /// `http`, `https`, ...
    #[serde(deserialize_with = "nullable")]
    pub protocol: String,
    /// Name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

/// One entry of `artifacts`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Artifact {
    /// Archive name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Include untracked files.
    #[serde(deserialize_with = "nullable")]
    pub untracked: bool,
    /// Paths and globs.
    #[serde(deserialize_with = "nullable")]
    pub paths: Vec<String>,
    /// Excluded globs.
    #[serde(deserialize_with = "nullable")]
    pub exclude: Vec<String>,
    /// `on_success`, `on_failure`, `always`.
    #[serde(deserialize_with = "nullable")]
    pub when: String,
    /// `archive`, `junit`, ...
    #[serde(deserialize_with = "nullable")]
    pub artifact_type: String,
    /// `zip`, `gzip`, `raw`, ...
    #[serde(deserialize_with = "nullable")]
    pub artifact_format: String,
    /// Expiry, e.g. `1 week`.
    #[serde(deserialize_with = "nullable")]
    pub expire_in: String,
}

/// One entry of `cache`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Cache {
    /// Key.
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    /// Include untracked files.
    #[serde(deserialize_with = "nullable")]
    pub untracked: bool,
    /// `pull-push`, `pull`, `push`.
    #[serde(deserialize_with = "nullable")]
    pub policy: String,
    /// Paths.
    #[serde(deserialize_with = "nullable")]
    pub paths: Vec<String>,
    /// `on_success`, `on_failure`, `always`.
    #[serde(deserialize_with = "nullable")]
    pub when: String,
    /// Keys tried when `key` has no cache.
    #[serde(deserialize_with = "nullable")]
    pub fallback_keys: Vec<String>,
}

/// A registry login.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Credentials {
    /// `registry`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// Registry URL.
    #[serde(deserialize_with = "nullable")]
    pub url: String,
    /// User name.
    #[serde(deserialize_with = "nullable")]
    pub username: String,
    /// Password.
    pub password: Secret,
}

/// A job whose artifacts this job downloads.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Dependency {
    /// Job ID.
    #[serde(deserialize_with = "nullable")]
    pub id: i64,
    /// That job's token, used to download its artifacts.
    pub token: Secret,
    /// Job name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// The archive; entries without a file name are skipped.
    pub artifacts_file: Option<ArtifactsFile>,
}

/// A dependency's archive.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ArtifactsFile {
    /// File name.
    #[serde(deserialize_with = "nullable")]
    pub filename: String,
    /// Size in bytes.
    #[serde(deserialize_with = "nullable")]
    pub size: i64,
}

/// `features` GitLab enables for this job.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct GitlabFeatures {
    /// Emit section markers.
    #[serde(deserialize_with = "nullable")]
    pub trace_sections: bool,
    /// Extra token prefixes to mask.
    #[serde(deserialize_with = "nullable")]
    pub token_mask_prefixes: Vec<String>,
    /// Failure reasons GitLab understands.
    #[serde(deserialize_with = "nullable")]
    pub failure_reasons: Vec<String>,
}

/// A source hook.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Hook {
    /// `pre_get_sources_script` or `post_get_sources_script`.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Command lines.
    #[serde(deserialize_with = "nullable")]
    pub script: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_nulls_and_unknown_fields_and_keeps_the_raw_json() {
        let body = br#"{"id": 7, "token": "glcbt-abc", "allow_git_fetch": null, "job_info": {"name": "test", "project_id": 3, "new_field": [1]},
            "git_info": {"repo_url": "https://gitlab-ci-token:glcbt-abc@gitlab.example.com/g/p.git", "ref": "main", "sha": "abc", "refspecs": null, "depth": 20, "protected": null},
            "runner_info": {"timeout": 0}, "variables": [{"key": "A", "value": "1", "public": true}, {"key": "S", "value": "hidden", "masked": true}],
            "steps": [{"name": "script", "script": ["echo hi"], "when": "on_success"}], "image": null, "services": null,
            "features": {"trace_sections": true, "failure_reasons": ["script_failure"], "tracing": null}, "future": {"x": 1}}"#;
        let payload = JobPayload::from_slice(body).unwrap();
        assert_eq!(payload.job.id, 7);
        assert_eq!(payload.job.token.expose(), "glcbt-abc");
        assert_eq!(payload.job.git_info.git_ref, "main");
        assert_eq!(payload.job.git_info.depth, 20);
        assert!(payload.job.git_info.refspecs.is_empty());
        assert_eq!(payload.timeout_secs(), 7200);
        assert!(payload.job.features.trace_sections);
        let raw: serde_json::Value = serde_json::from_str(payload.raw.get()).unwrap();
        assert_eq!(raw["future"]["x"], 1);
        let debug = format!("{:?}", payload.job);
        assert!(
            !debug.contains("glcbt-abc") && !debug.contains("hidden"),
            "{debug}"
        );
        assert!(JobPayload::from_slice(b"{\"id\": \"seven\"}").is_err());
        assert!(JobPayload::from_slice(b"not json").is_err());
    }
}
