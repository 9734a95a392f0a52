//! The global section, `[[runners]]`, `[runners.cache]` and friends of gitlab-runner's
//! `config.toml`, with gitlab-runner's defaults.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::GoDuration;
use crate::enums::{CacheType, Executor, LogFormat, LogLevel, Shell};
use crate::kubernetes::KubernetesConfig;

/// gitlab-runner's default `check_interval`, in seconds.
pub const DEFAULT_CHECK_INTERVAL_SECS: i64 = 3;
/// gitlab-runner's default `shutdown_timeout`, in seconds.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: i64 = 30;
/// gitlab-runner's default `output_limit`, in KiB.
pub const DEFAULT_OUTPUT_LIMIT_KIB: i64 = 4096;
/// The builds directory the Kubernetes executor uses.
pub const KUBERNETES_BUILDS_DIR: &str = "/builds";
/// The cache directory the Kubernetes executor uses.
pub const KUBERNETES_CACHE_DIR: &str = "/cache";

/// A whole `config.toml`: the global section and every `[[runners]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// Jobs run at once over all runners; must be at least 1.
    pub concurrent: i64,
    /// Seconds between job requests per runner (≤ 0 means 3).
    pub check_interval: i64,
    /// The manager's log level.
    pub log_level: LogLevel,
    /// The manager's log format.
    pub log_format: LogFormat,
    /// `host:port` of the metrics and health server.
    pub listen_address: Option<String>,
    /// Seconds to wait for running jobs on a forceful shutdown (≤ 0 means 30).
    pub shutdown_timeout: i64,
    /// How long an HTTP connection to GitLab is reused.
    pub connection_max_age: GoDuration,
    /// Sentry DSN for error reports.
    pub sentry_dsn: Option<String>,
    /// The user the shell executor runs jobs as.
    pub user: Option<String>,
    /// Default labels of every runner.
    pub labels: BTreeMap<String, String>,
    /// The interactive web-terminal server (not offered by podrunner; kept for compatibility).
    pub session_server: Option<SessionServerConfig>,
    /// The registered runners.
    pub runners: Vec<RunnerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrent: 0,
            check_interval: DEFAULT_CHECK_INTERVAL_SECS,
            log_level: LogLevel::Info,
            log_format: LogFormat::Runner,
            listen_address: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT_SECS,
            connection_max_age: GoDuration::from_secs(15 * 60),
            sentry_dsn: None,
            user: None,
            labels: BTreeMap::new(),
            session_server: None,
            runners: Vec::new(),
        }
    }
}

/// `[session_server]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SessionServerConfig {
    /// Address the session server listens on.
    pub listen_address: Option<String>,
    /// Address advertised to GitLab.
    pub advertise_address: Option<String>,
    /// Seconds a session stays open.
    pub session_timeout: i64,
}

impl Default for SessionServerConfig {
    fn default() -> Self {
        SessionServerConfig {
            listen_address: None,
            advertise_address: None,
            session_timeout: 1800,
        }
    }
}

/// A timestamp gitlab-runner writes for tokens, either as a TOML datetime or a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp(pub String);

impl Timestamp {
    /// gitlab-runner writes `0001-01-01T00:00:00Z` for "never".
    pub fn is_zero(&self) -> bool {
        self.0.starts_with("0001-01-01")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Datetime(toml::value::Datetime),
            Text(String),
        }
        match Repr::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected an RFC 3339 timestamp, e.g. 2025-01-31T12:00:00Z")
        })? {
            Repr::Datetime(dt) => Ok(Timestamp(dt.to_string())),
            Repr::Text(text) => Ok(Timestamp(text)),
        }
    }
}

/// One `[[runners]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RunnerConfig {
    /// Description, local only.
    pub name: Option<String>,
    /// GitLab's base URL (environment variables expanded).
    pub url: Option<String>,
    /// The runner's ID, from registration.
    pub id: Option<i64>,
    /// The runner authentication token (environment variables expanded); `Debug` hides it.
    pub token: Option<crate::SecretString>,
    /// When the token was obtained.
    pub token_obtained_at: Option<Timestamp>,
    /// When the token expires.
    pub token_expires_at: Option<Timestamp>,
    /// CA bundle to trust for GitLab.
    #[serde(rename = "tls-ca-file")]
    pub tls_ca_file: Option<String>,
    /// Client certificate for GitLab.
    #[serde(rename = "tls-cert-file")]
    pub tls_cert_file: Option<String>,
    /// Client key for GitLab.
    #[serde(rename = "tls-key-file")]
    pub tls_key_file: Option<String>,
    /// The executor; required.
    pub executor: Option<Executor>,
    /// The shell scripts run in.
    pub shell: Option<Shell>,
    /// Jobs this runner runs at once (0 = only `concurrent` limits).
    pub limit: i64,
    /// `jobs/request` calls in flight at once (≤ 0 means 1).
    pub request_concurrency: i64,
    /// Wait `check_interval` even after receiving a job.
    pub strict_check_interval: bool,
    /// Maximum trace size in KiB (≤ 0 means 4096).
    pub output_limit: i64,
    /// Unhealthy answers in a row before polling pauses (≤ 0 means 3).
    pub unhealthy_requests_limit: i64,
    /// How long polling pauses once unhealthy.
    pub unhealthy_interval: GoDuration,
    /// Retries of the final job update.
    pub job_status_final_update_retry_limit: i64,
    /// Where builds are cloned (default: `/builds` on Kubernetes, `./builds` for shell).
    pub builds_dir: Option<String>,
    /// Where the local cache lives (default: `/cache` on Kubernetes, `./cache` for shell).
    pub cache_dir: Option<String>,
    /// Extra job variables as `KEY=VALUE`.
    pub environment: Vec<String>,
    /// Overrides the scheme and host of the clone URL.
    pub clone_url: Option<String>,
    /// Script run before sources are fetched.
    pub pre_get_sources_script: Option<String>,
    /// Script run after sources are fetched.
    pub post_get_sources_script: Option<String>,
    /// Script run before the job script.
    pub pre_build_script: Option<String>,
    /// Script run after the job script.
    pub post_build_script: Option<String>,
    /// Time allowed for preparation (default: the job timeout).
    pub prepare_timeout: Option<GoDuration>,
    /// Time allowed for fetching sources (default: the job timeout).
    pub get_sources_timeout: Option<GoDuration>,
    /// Refuse `CI_DEBUG_TRACE`.
    pub debug_trace_disabled: bool,
    /// Mark the checkout as a git safe.directory (default true on Kubernetes).
    pub safe_directory_checkout: Option<bool>,
    /// Reset git config after checkout (default true on Kubernetes).
    pub clean_git_config: Option<bool>,
    /// `[runners.feature_flags]`: `FF_*` name → on/off.
    pub feature_flags: BTreeMap<String, bool>,
    /// Labels of this runner.
    pub labels: BTreeMap<String, String>,
    /// `[runners.custom_build_dir]`.
    pub custom_build_dir: Option<CustomBuildDirConfig>,
    /// `[runners.cache]`.
    pub cache: Option<CacheConfig>,
    /// `[runners.artifact]`.
    pub artifact: ArtifactConfig,
    /// `[runners.kubernetes]`.
    pub kubernetes: Option<KubernetesConfig>,
    /// `[runners.docker]`: gitlab-runner's docker executor; unused by podrunner.
    pub docker: Option<toml::Table>,
    /// `[runners.machine]`: gitlab-runner's docker+machine executor; unused by podrunner.
    pub machine: Option<toml::Table>,
    /// `[runners.custom]`: gitlab-runner's custom executor; unused by podrunner.
    pub custom: Option<toml::Table>,
    /// `[runners.ssh]`: gitlab-runner's ssh executor; unused by podrunner.
    pub ssh: Option<toml::Table>,
    /// `[runners.parallels]`: unused by podrunner.
    pub parallels: Option<toml::Table>,
    /// `[runners.virtualbox]`: unused by podrunner.
    pub virtualbox: Option<toml::Table>,
    /// `[runners.autoscaler]`: gitlab-runner's fleeting autoscaler; unused by podrunner.
    pub autoscaler: Option<toml::Table>,
    /// `[runners.referees]`: unused by podrunner.
    pub referees: Option<toml::Table>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            name: None,
            url: None,
            id: None,
            token: None,
            token_obtained_at: None,
            token_expires_at: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            executor: None,
            shell: None,
            limit: 0,
            request_concurrency: 1,
            strict_check_interval: false,
            output_limit: DEFAULT_OUTPUT_LIMIT_KIB,
            unhealthy_requests_limit: 3,
            unhealthy_interval: GoDuration::from_secs(3600),
            job_status_final_update_retry_limit: 10,
            builds_dir: None,
            cache_dir: None,
            environment: Vec::new(),
            clone_url: None,
            pre_get_sources_script: None,
            post_get_sources_script: None,
            pre_build_script: None,
            post_build_script: None,
            prepare_timeout: None,
            get_sources_timeout: None,
            debug_trace_disabled: false,
            safe_directory_checkout: None,
            clean_git_config: None,
            feature_flags: BTreeMap::new(),
            labels: BTreeMap::new(),
            custom_build_dir: None,
            cache: None,
            artifact: ArtifactConfig::default(),
            kubernetes: None,
            docker: None,
            machine: None,
            custom: None,
            ssh: None,
            parallels: None,
            virtualbox: None,
            autoscaler: None,
            referees: None,
        }
    }
}

impl RunnerConfig {
    /// The executor, or `None` when the entry names none.
    pub fn executor(&self) -> Option<Executor> {
        self.executor
    }

    /// The builds directory with the executor's default.
    pub fn builds_dir(&self) -> String {
        match (&self.builds_dir, self.executor) {
            (Some(dir), _) if !dir.is_empty() => dir.clone(),
            (_, Some(Executor::Shell)) => "builds".to_owned(),
            _ => KUBERNETES_BUILDS_DIR.to_owned(),
        }
    }

    /// The cache directory with the executor's default.
    pub fn cache_dir(&self) -> String {
        match (&self.cache_dir, self.executor) {
            (Some(dir), _) if !dir.is_empty() => dir.clone(),
            (_, Some(Executor::Shell)) => "cache".to_owned(),
            _ => KUBERNETES_CACHE_DIR.to_owned(),
        }
    }

    /// The `[runners.kubernetes]` table, or its defaults when absent.
    pub fn kubernetes_or_default(&self) -> KubernetesConfig {
        self.kubernetes.clone().unwrap_or_default()
    }

    /// Whether a feature flag is on: `[runners.feature_flags]`, else the flag's default.
    pub fn feature_flag(&self, name: &str) -> bool {
        self.feature_flags
            .get(name)
            .copied()
            .unwrap_or_else(|| crate::feature_flags::default_of(name).unwrap_or(false))
    }

    /// Whether `safe_directory_checkout` is on (default true).
    pub fn safe_directory_checkout(&self) -> bool {
        self.safe_directory_checkout.unwrap_or(true)
    }

    /// Whether `clean_git_config` is on (default true).
    pub fn clean_git_config(&self) -> bool {
        self.clean_git_config.unwrap_or(true)
    }

    /// Whether jobs may choose their clone path with `GIT_CLONE_PATH` (default true).
    pub fn custom_build_dir_enabled(&self) -> bool {
        self.custom_build_dir
            .as_ref()
            .and_then(|c| c.enabled)
            .unwrap_or(true)
    }
}

/// `[runners.custom_build_dir]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CustomBuildDirConfig {
    /// Allow `GIT_CLONE_PATH` (default true).
    pub enabled: Option<bool>,
}

/// `[runners.artifact]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ArtifactConfig {
    /// Time allowed for one artifact upload.
    pub upload_timeout: GoDuration,
    /// Time allowed for the upload's response headers.
    pub response_header_timeout: GoDuration,
}

impl Default for ArtifactConfig {
    fn default() -> Self {
        ArtifactConfig {
            upload_timeout: GoDuration::from_secs(3600),
            response_header_timeout: GoDuration::from_secs(600),
        }
    }
}

/// `[runners.cache]` (gitlab-runner spells these keys in CamelCase).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheConfig {
    /// Object-storage kind; unset means the local cache only.
    #[serde(rename = "Type")]
    pub cache_type: Option<CacheType>,
    /// Prefix of every object name.
    #[serde(rename = "Path")]
    pub path: Option<String>,
    /// Share the cache between runners (drops `runner/<token>/` from names).
    #[serde(rename = "Shared")]
    pub shared: bool,
    /// Largest archive uploaded, in bytes (0 = no limit).
    #[serde(rename = "MaxUploadedArchiveSize")]
    pub max_uploaded_archive_size: i64,
    /// `[runners.cache.s3]`.
    pub s3: Option<CacheS3Config>,
    /// `[runners.cache.gcs]`.
    pub gcs: Option<CacheGcsConfig>,
    /// `[runners.cache.azure]`.
    pub azure: Option<CacheAzureConfig>,
}

/// `[runners.cache.s3]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheS3Config {
    /// Endpoint `host[:port]`; empty means AWS S3.
    #[serde(rename = "ServerAddress")]
    pub server_address: Option<String>,
    /// Access key ID.
    #[serde(rename = "AccessKey")]
    pub access_key: Option<String>,
    /// Secret access key.
    #[serde(rename = "SecretKey")]
    pub secret_key: Option<crate::SecretString>,
    /// Session token for temporary credentials.
    #[serde(rename = "SessionToken")]
    pub session_token: Option<crate::SecretString>,
    /// Bucket.
    #[serde(rename = "BucketName")]
    pub bucket_name: Option<String>,
    /// Bucket region.
    #[serde(rename = "BucketLocation")]
    pub bucket_location: Option<String>,
    /// Use plain HTTP.
    #[serde(rename = "Insecure")]
    pub insecure: bool,
    /// `access-key` or `iam`.
    #[serde(rename = "AuthenticationType")]
    pub authentication_type: Option<String>,
    /// `S3`, `KMS` or `DSSE-KMS`.
    #[serde(rename = "ServerSideEncryption")]
    pub server_side_encryption: Option<String>,
    /// KMS key for server-side encryption.
    #[serde(rename = "ServerSideEncryptionKeyID")]
    pub server_side_encryption_key_id: Option<String>,
    /// Use dual-stack endpoints.
    #[serde(rename = "DualStack")]
    pub dual_stack: Option<bool>,
    /// Use path-style addressing.
    #[serde(rename = "PathStyle")]
    pub path_style: Option<bool>,
    /// Use S3 Transfer Acceleration.
    #[serde(rename = "Accelerate")]
    pub accelerate: bool,
    /// Role to assume for cache access.
    #[serde(rename = "RoleARN")]
    pub role_arn: Option<String>,
    /// Role to assume for uploads.
    #[serde(rename = "UploadRoleARN")]
    pub upload_role_arn: Option<String>,
}

/// `[runners.cache.gcs]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheGcsConfig {
    /// Service-account JSON file.
    #[serde(rename = "CredentialsFile")]
    pub credentials_file: Option<String>,
    /// Service-account e-mail.
    #[serde(rename = "AccessID")]
    pub access_id: Option<String>,
    /// Service-account private key.
    #[serde(rename = "PrivateKey")]
    pub private_key: Option<crate::SecretString>,
    /// Bucket.
    #[serde(rename = "BucketName")]
    pub bucket_name: Option<String>,
}

/// `[runners.cache.azure]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheAzureConfig {
    /// Storage account.
    #[serde(rename = "AccountName")]
    pub account_name: Option<String>,
    /// Storage account key.
    #[serde(rename = "AccountKey")]
    pub account_key: Option<crate::SecretString>,
    /// Blob container.
    #[serde(rename = "ContainerName")]
    pub container_name: Option<String>,
    /// Storage domain (default `blob.core.windows.net`).
    #[serde(rename = "StorageDomain")]
    pub storage_domain: Option<String>,
}
