//! The HTTP client of GitLab's runner API (`/api/v4`), with gitlab-runner's headers, retry
//! layer and the meaning of each status.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;

use crate::api::{
    RegisterRequest, RemoteJobStatus, RunnerCredentials, RunnerInfo, UpdateJobRequest,
};
use crate::payload::{JobPayload, PayloadError};
use crate::retry::{Backoff, MAX_ATTEMPTS, is_retryable, server_wait};
use crate::secret::Secret;

/// The gitlab-runner version podrunner speaks for; GitLab reads it from `info.version` and
/// the `User-Agent`.
pub const COMPATIBLE_RUNNER_VERSION: &str = "18.9.0";

/// The longest trace update interval GitLab may ask for.
pub const MAX_UPDATE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Why a client could not be built or a call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http(s)://host...`.
    #[error("{url:?} is not an http:// or https:// URL of GitLab")]
    BadUrl {
        /// The URL as given.
        url: String,
    },
    /// A TLS file could not be used.
    #[error("cannot use {path}: {reason}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// The request failed before an answer arrived.
    #[error("{0}")]
    Transport(#[source] reqwest::Error),
    /// GitLab answered with a status the call does not expect.
    #[error("GitLab answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// The status.
        status: u16,
        /// The `message` of the error body, if any.
        message: Option<String>,
    },
    /// `403`: the token is not valid (or the runner was removed).
    #[error("GitLab refused the token (403 Forbidden): it is not valid, or the runner was deleted")]
    Forbidden,
    /// The answer could not be read.
    #[error("GitLab's answer could not be read: {0}")]
    Body(String),
    /// An artifact file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What happened.
        #[source]
        source: std::io::Error,
    },
}

/// How to reach GitLab.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// GitLab's URL as configured (`[[runners]] url`).
    pub url: String,
    /// `tls-ca-file`: more CAs to trust.
    pub tls_ca_file: Option<PathBuf>,
    /// `tls-cert-file`: client certificate.
    pub tls_cert_file: Option<PathBuf>,
    /// `tls-key-file`: client key.
    pub tls_key_file: Option<PathBuf>,
    /// podrunner's own version, for the `User-Agent`.
    pub podrunner_version: String,
}

/// A client of one GitLab.
#[derive(Debug, Clone)]
pub struct GitlabClient {
    http: reqwest::Client,
    api: reqwest::Url,
    user_agent: String,
}

/// The API base for a configured URL: trailing `/` and `/ci` removed, then `/api/v4/`.
pub fn api_base(url: &str) -> Result<reqwest::Url, ClientError> {
    let bad = || ClientError::BadUrl {
        url: url.to_owned(),
    };
    let original = reqwest::Url::parse(url.trim()).map_err(|_| bad())?;
    if !matches!(original.scheme(), "http" | "https")
        || original.host_str().is_none_or(str::is_empty)
    {
        return Err(bad());
    }
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed
        .strip_suffix("/ci")
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    let parsed = reqwest::Url::parse(&format!("{trimmed}/api/v4/")).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad());
    }
    Ok(parsed)
}

/// The TLS configuration of every podrunner client: webpki roots, the system's roots when
/// present, `tls-ca-file`, and the client certificate when given. Works in an empty image.
pub fn tls_config(options: &ClientOptions) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // System roots when the image has them; an empty image has none, which is fine.
    let native = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(native.certs);
    let tls_error = |path: &Path, reason: String| ClientError::Tls {
        path: path.to_owned(),
        reason,
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if let Some(path) = &options.tls_ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| tls_error(path, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| tls_error(path, e.to_string()))?;
        if certs.is_empty() {
            return Err(tls_error(path, "holds no PEM certificate".to_owned()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| tls_error(path, e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    match (&options.tls_cert_file, &options.tls_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
                .map_err(|e| tls_error(cert_path, e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| tls_error(cert_path, e.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| tls_error(key_path, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error(cert_path, e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// What `jobs/request` gave.
#[derive(Debug)]
pub enum JobRequestOutcome {
    /// `201`: a job.
    Job(Box<JobPayload>),
    /// `204`: nothing to do.
    NoJob,
    /// `403`: the token is refused (counts toward unhealthy).
    Forbidden,
    /// `503` after the retries: GitLab is unavailable.
    Unavailable,
    /// `409`: a race on GitLab's side (`Ci::RegisterJobService`). Like gitlab-runner
    /// (`network/gitlab.go`, `RequestJob`: no job, healthy), ask again after `check_interval`.
    Conflict,
    /// Anything else: a transport error, an unreadable job, another status.
    Failed(String),
}

/// `jobs/request` with the `last_update` to send next time.
#[derive(Debug)]
pub struct JobRequestResult {
    /// What happened.
    pub outcome: JobRequestOutcome,
    /// `X-GitLab-Last-Update`, when the answer had one.
    pub last_update: Option<String>,
    /// The HTTP status, when GitLab answered.
    pub status: Option<u16>,
}

impl JobRequestResult {
    /// Whether the answer counts as healthy for the unhealthy back-off.
    pub fn healthy(&self) -> bool {
        !matches!(self.outcome, JobRequestOutcome::Forbidden)
    }
}

/// What `PUT jobs/:id` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// `200`: applied.
    Succeeded,
    /// `202`: accepted, but GitLab is still storing the log; send again after the interval.
    Accepted,
    /// `412`: the log does not match; upload it again from the start.
    TraceValidationFailed,
    /// `403`, `404` or `Job-Status` canceled/failed: stop.
    Abort,
    /// Anything else; retry with back-off.
    Failed(String),
}

/// What `PATCH jobs/:id/trace` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchOutcome {
    /// `202`: GitLab has everything up to this offset.
    Accepted {
        /// The next offset to send from.
        offset: u64,
    },
    /// `416`: GitLab has this many bytes; resend from there.
    RangeMismatch {
        /// Bytes GitLab has.
        offset: u64,
    },
    /// `404`: stop sending the log.
    NotFound,
    /// `403` or `Job-Status` canceled/failed: stop.
    Abort,
    /// Anything else; try again on the next tick.
    Failed(String),
}

/// Headers every job call may carry back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSignals {
    /// `Job-Status`.
    pub job_status: Option<RemoteJobStatus>,
    /// `X-GitLab-Trace-Update-Interval`, capped at 15 minutes.
    pub update_interval: Option<Duration>,
    /// The HTTP status of the answer.
    pub http_status: Option<u16>,
}

impl JobSignals {
    fn from_response(response: &Response) -> Self {
        JobSignals {
            http_status: Some(response.status().as_u16()),
            ..Self::from_headers(response.headers())
        }
    }

    fn from_headers(headers: &HeaderMap) -> Self {
        let job_status = headers
            .get("Job-Status")
            .and_then(|v| v.to_str().ok())
            .map(RemoteJobStatus::parse);
        let update_interval = headers
            .get("X-GitLab-Trace-Update-Interval")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s as u64).min(MAX_UPDATE_INTERVAL));
        JobSignals {
            job_status,
            update_interval,
            http_status: None,
        }
    }

    fn aborts(&self) -> bool {
        self.job_status
            .as_ref()
            .is_some_and(RemoteJobStatus::is_abort)
    }
}

/// Query parameters of an artifact upload.
#[derive(Debug, Clone, Default)]
pub struct ArtifactUpload {
    /// `artifact_format` (`zip`, `gzip`, `raw`, ...).
    pub format: Option<String>,
    /// `artifact_type` (`archive`, `junit`, ...).
    pub artifact_type: Option<String>,
    /// `expire_in`.
    pub expire_in: Option<String>,
    /// The file name GitLab stores.
    pub file_name: String,
}

/// What an artifact upload gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// `201`.
    Uploaded,
    /// `403`.
    Forbidden,
    /// `413`: larger than GitLab allows.
    TooLarge,
    /// The last failure after the retries.
    Failed(String),
}

/// What an artifact download gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadOutcome {
    /// Written to the destination.
    Downloaded {
        /// Bytes written.
        bytes: u64,
    },
    /// `401`/`403`.
    Forbidden,
    /// `404`.
    NotFound,
    /// The last failure after the retries.
    Failed(String),
}

#[derive(Serialize)]
struct TokenBody<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RunnerInfo>,
}

#[derive(Serialize)]
struct JobRequestBody<'a> {
    info: &'a RunnerInfo,
    token: &'a str,
    system_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_update: Option<&'a str>,
}

impl GitlabClient {
    /// A client for one GitLab URL and its TLS settings.
    pub fn new(options: &ClientOptions) -> Result<Self, ClientError> {
        let api = api_base(&options.url)?;
        let tls = tls_config(options)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(60 * 60))
            .pool_idle_timeout(Duration::from_secs(90))
            .hickory_dns(true)
            .build()
            .map_err(ClientError::Build)?;
        let user_agent = format!(
            "gitlab-runner {COMPATIBLE_RUNNER_VERSION} (podrunner-{}; rust; {}/{})",
            options.podrunner_version,
            std::env::consts::OS,
            crate::api::go_arch(std::env::consts::ARCH)
        );
        Ok(GitlabClient {
            http,
            api,
            user_agent,
        })
    }

    /// The API base URL (`…/api/v4/`).
    pub fn api_url(&self) -> &reqwest::Url {
        &self.api
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let url = self
            .api
            .join(path)
            .expect("API paths are relative and valid");
        self.http
            .request(method, url)
            .header(reqwest::header::USER_AGENT, &self.user_agent)
            .header("X-Request-Id", uuid::Uuid::new_v4().simple().to_string())
    }

    /// Sends with the retry layer; `build` makes the request anew for each attempt.
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<Response, ClientError> {
        let mut attempt = 0;
        loop {
            let response = build().send().await.map_err(ClientError::Transport)?;
            attempt += 1;
            if !is_retryable(response.status().as_u16()) || attempt >= MAX_ATTEMPTS {
                return Ok(response);
            }
            let wait = server_wait(response.headers(), SystemTime::now())
                .unwrap_or_else(|| Backoff::REQUESTS.delay(attempt - 1));
            tokio::time::sleep(wait.min(Backoff::REQUESTS.max)).await;
        }
    }

    async fn error_for(response: Response) -> ClientError {
        let status = response.status().as_u16();
        if status == 403 {
            return ClientError::Forbidden;
        }
        let message = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|body| error_message(&body));
        ClientError::Status { status, message }
    }

    /// `POST runners`: registers with a legacy registration token.
    pub async fn register(
        &self,
        request: &RegisterRequest,
    ) -> Result<RunnerCredentials, ClientError> {
        let response = self
            .send(|| {
                self.request(Method::POST, "runners")
                    .header("RUNNER-TOKEN", request.token.expose())
                    .header("Accept", "application/json")
                    .json(request)
            })
            .await?;
        if response.status() == StatusCode::CREATED {
            return response
                .json()
                .await
                .map_err(|e| ClientError::Body(e.to_string()));
        }
        Err(Self::error_for(response).await)
    }

    /// `POST runners/verify`: checks an authentication token and announces this manager.
    /// Old GitLab answers `200` with a plain body; then the token given is kept as it is.
    pub async fn verify(
        &self,
        token: &Secret,
        system_id: &str,
        info: &RunnerInfo,
    ) -> Result<RunnerCredentials, ClientError> {
        let body = TokenBody {
            token: token.expose(),
            system_id: Some(system_id),
            info: Some(info),
        };
        let response = self
            .send(|| {
                self.request(Method::POST, "runners/verify")
                    .header("RUNNER-TOKEN", token.expose())
                    .header("Accept", "application/json")
                    .json(&body)
            })
            .await?;
        if response.status() != StatusCode::OK {
            return Err(Self::error_for(response).await);
        }
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let mut credentials = if is_json {
            response
                .json::<RunnerCredentials>()
                .await
                .map_err(|e| ClientError::Body(e.to_string()))?
        } else {
            RunnerCredentials::default()
        };
        if credentials.token.is_empty() {
            credentials.token = token.clone();
        }
        Ok(credentials)
    }

    /// Unregisters: `DELETE runners/managers` (only this manager) for `glrt-` tokens,
    /// `DELETE runners` for legacy tokens.
    pub async fn unregister(&self, token: &Secret, system_id: &str) -> Result<(), ClientError> {
        let authentication_token = token.expose().starts_with("glrt-");
        let (path, body) = if authentication_token {
            (
                "runners/managers",
                TokenBody {
                    token: token.expose(),
                    system_id: Some(system_id),
                    info: None,
                },
            )
        } else {
            (
                "runners",
                TokenBody {
                    token: token.expose(),
                    system_id: None,
                    info: None,
                },
            )
        };
        let response = self
            .send(|| {
                self.request(Method::DELETE, path)
                    .header("RUNNER-TOKEN", token.expose())
                    .json(&body)
            })
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(());
        }
        Err(Self::error_for(response).await)
    }

    /// `POST runners/reset_authentication_token`.
    pub async fn reset_token(&self, token: &Secret) -> Result<RunnerCredentials, ClientError> {
        let body = TokenBody {
            token: token.expose(),
            system_id: None,
            info: None,
        };
        let response = self
            .send(|| {
                self.request(Method::POST, "runners/reset_authentication_token")
                    .header("Accept", "application/json")
                    .json(&body)
            })
            .await?;
        if response.status() == StatusCode::CREATED {
            return response
                .json()
                .await
                .map_err(|e| ClientError::Body(e.to_string()));
        }
        Err(Self::error_for(response).await)
    }

    /// `POST jobs/request`. The call may be held by GitLab for about 50 s (long polling).
    pub async fn request_job(
        &self,
        token: &Secret,
        system_id: &str,
        info: &RunnerInfo,
        last_update: Option<&str>,
    ) -> JobRequestResult {
        let body = JobRequestBody {
            info,
            token: token.expose(),
            system_id,
            last_update,
        };
        let response = match self
            .send(|| {
                self.request(Method::POST, "jobs/request")
                    .header("RUNNER-TOKEN", token.expose())
                    .header("Accept", "application/json")
                    .json(&body)
            })
            .await
        {
            Ok(response) => response,
            Err(error) => {
                return JobRequestResult {
                    outcome: JobRequestOutcome::Failed(error.to_string()),
                    last_update: None,
                    status: None,
                };
            }
        };
        let last_update = response
            .headers()
            .get("X-GitLab-Last-Update")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let status = Some(response.status().as_u16());
        let outcome = match response.status().as_u16() {
            201 => {
                let is_json = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/json"));
                match response.bytes().await {
                    Ok(bytes) if is_json => match JobPayload::from_slice(&bytes) {
                        Ok(payload) => JobRequestOutcome::Job(Box::new(payload)),
                        Err(PayloadError::Invalid(e)) => JobRequestOutcome::Failed(format!(
                            "the job GitLab sent cannot be read: {e}"
                        )),
                    },
                    Ok(_) => JobRequestOutcome::Failed(
                        "GitLab answered 201 without a JSON job".to_owned(),
                    ),
                    Err(e) => JobRequestOutcome::Failed(e.to_string()),
                }
            }
            204 => JobRequestOutcome::NoJob,
            403 => JobRequestOutcome::Forbidden,
            409 => JobRequestOutcome::Conflict,
            503 => JobRequestOutcome::Unavailable,
            _ => JobRequestOutcome::Failed(Self::error_for(response).await.to_string()),
        };
        JobRequestResult {
            outcome,
            last_update,
            status,
        }
    }

    /// `PUT jobs/:id`: the ack, a heartbeat, or the final state.
    pub async fn update_job(
        &self,
        job_id: i64,
        request: &UpdateJobRequest,
    ) -> (UpdateOutcome, JobSignals) {
        let path = format!("jobs/{job_id}");
        let response = match self
            .send(|| {
                self.request(Method::PUT, &path)
                    .header("JOB-TOKEN", request.token.expose())
                    .json(request)
            })
            .await
        {
            Ok(response) => response,
            Err(error) => {
                return (
                    UpdateOutcome::Failed(error.to_string()),
                    JobSignals::default(),
                );
            }
        };
        let signals = JobSignals::from_response(&response);
        let status = response.status().as_u16();
        let outcome = if signals.aborts() || status == 403 {
            UpdateOutcome::Abort
        } else {
            match status {
                200 => UpdateOutcome::Succeeded,
                202 => UpdateOutcome::Accepted,
                412 => UpdateOutcome::TraceValidationFailed,
                404 => UpdateOutcome::Abort,
                _ => UpdateOutcome::Failed(Self::error_for(response).await.to_string()),
            }
        };
        (outcome, signals)
    }

    /// `PATCH jobs/:id/trace`: bytes from `offset`.
    pub async fn patch_trace(
        &self,
        job_id: i64,
        job_token: &Secret,
        offset: u64,
        bytes: &[u8],
        debug_trace: bool,
    ) -> (PatchOutcome, JobSignals) {
        if bytes.is_empty() {
            return (PatchOutcome::Accepted { offset }, JobSignals::default());
        }
        let path = format!("jobs/{job_id}/trace?debug_trace={debug_trace}");
        let end = offset + bytes.len() as u64 - 1;
        let body = bytes::Bytes::copy_from_slice(bytes);
        let response = match self
            .send(|| {
                self.request(Method::PATCH, &path)
                    .header("JOB-TOKEN", job_token.expose())
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .header(reqwest::header::CONTENT_RANGE, format!("{offset}-{end}"))
                    .body(body.clone())
            })
            .await
        {
            Ok(response) => response,
            Err(error) => {
                return (
                    PatchOutcome::Failed(error.to_string()),
                    JobSignals::default(),
                );
            }
        };
        let signals = JobSignals::from_response(&response);
        let status = response.status().as_u16();
        let outcome = if signals.aborts() || status == 403 {
            PatchOutcome::Abort
        } else {
            match status {
                202 => PatchOutcome::Accepted { offset: end + 1 },
                404 => PatchOutcome::NotFound,
                416 => match response
                    .headers()
                    .get(reqwest::header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(range_end)
                {
                    Some(offset) => PatchOutcome::RangeMismatch { offset },
                    None => PatchOutcome::Failed(
                        "GitLab answered 416 without a usable Range header".to_owned(),
                    ),
                },
                _ => PatchOutcome::Failed(Self::error_for(response).await.to_string()),
            }
        };
        (outcome, signals)
    }

    /// `POST jobs/:id/artifacts`: streams `file` as multipart; follows `307` to another
    /// host; retries `503` up to 6 tries and other failures up to 3.
    pub async fn upload_artifact(
        &self,
        job_id: i64,
        job_token: &Secret,
        file: &Path,
        upload: &ArtifactUpload,
    ) -> UploadOutcome {
        let mut query: Vec<(&str, &str)> = Vec::new();
        for (key, value) in [
            ("artifact_format", &upload.format),
            ("artifact_type", &upload.artifact_type),
            ("expire_in", &upload.expire_in),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                query.push((key, value));
            }
        }
        let mut base = self.api.clone();
        let (mut tries_503, mut tries_other) = (0, 0);
        loop {
            let mut url = base
                .join(&format!("jobs/{job_id}/artifacts"))
                .expect("relative path");
            if !query.is_empty() {
                url.query_pairs_mut().extend_pairs(&query);
            }
            let stream = match tokio::fs::File::open(file).await {
                Ok(f) => reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f)),
                Err(e) => return UploadOutcome::Failed(format!("{}: {e}", file.display())),
            };
            let part = reqwest::multipart::Part::stream(stream).file_name(upload.file_name.clone());
            // gitlab-runner sends the parameters in the query; other runners send format
            // and type as form fields. GitLab reads both, so both carry the same values.
            let mut form = reqwest::multipart::Form::new();
            for (key, value) in [
                ("artifact_format", &upload.format),
                ("artifact_type", &upload.artifact_type),
            ] {
                if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                    form = form.text(key, value.to_owned());
                }
            }
            let form = form.part("file", part);
            let result = self
                .http
                .post(url)
                .header(reqwest::header::USER_AGENT, &self.user_agent)
                .header("X-Request-Id", uuid::Uuid::new_v4().simple().to_string())
                .header("JOB-TOKEN", job_token.expose())
                .multipart(form)
                .send()
                .await;
            let failure = match result {
                Ok(response) => match response.status().as_u16() {
                    201 => return UploadOutcome::Uploaded,
                    403 => return UploadOutcome::Forbidden,
                    413 => return UploadOutcome::TooLarge,
                    307 => {
                        let location = response
                            .headers()
                            .get(reqwest::header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|l| base.join(l).ok());
                        match location {
                            Some(target) => {
                                // Same API path, on the redirect's scheme and host.
                                base.set_scheme(target.scheme()).ok();
                                base.set_host(target.host_str()).ok();
                                base.set_port(target.port()).ok();
                                continue;
                            }
                            None => "GitLab answered 307 without a Location".to_owned(),
                        }
                    }
                    503 => {
                        tries_503 += 1;
                        if tries_503 >= 6 {
                            return UploadOutcome::Failed(
                                "GitLab answered 503 Service Unavailable".to_owned(),
                            );
                        }
                        "503".to_owned()
                    }
                    _ => Self::error_for(response).await.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if failure != "503" {
                tries_other += 1;
                if tries_other >= 3 {
                    return UploadOutcome::Failed(failure);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// `GET jobs/:id/artifacts` with the dependency's token, following the `302` to object
    /// storage (without the token), into `destination`. Retries twice, a second apart.
    pub async fn download_artifact(
        &self,
        job_id: i64,
        dependency_token: &Secret,
        direct_download: bool,
        destination: &Path,
    ) -> DownloadOutcome {
        let path = format!("jobs/{job_id}/artifacts?direct_download={direct_download}");
        let mut last_failure = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let response = match self
                .send(|| {
                    self.request(Method::GET, &path)
                        .header("JOB-TOKEN", dependency_token.expose())
                })
                .await
            {
                Ok(response) => response,
                Err(e) => {
                    last_failure = e.to_string();
                    continue;
                }
            };
            let response = if matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                let Some(target) = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| response.url().join(l).ok())
                else {
                    last_failure = "a redirect without a Location".to_owned();
                    continue;
                };
                match self
                    .http
                    .get(target)
                    .header(reqwest::header::USER_AGENT, &self.user_agent)
                    .send()
                    .await
                {
                    Ok(response) => response,
                    Err(e) => {
                        last_failure = e.to_string();
                        continue;
                    }
                }
            } else {
                response
            };
            match response.status().as_u16() {
                200 => {
                    return write_body(response, destination)
                        .await
                        .unwrap_or_else(DownloadOutcome::Failed);
                }
                401 | 403 => return DownloadOutcome::Forbidden,
                404 => return DownloadOutcome::NotFound,
                status => last_failure = format!("GitLab answered {status}"),
            }
        }
        DownloadOutcome::Failed(last_failure)
    }
}

async fn write_body(mut response: Response, destination: &Path) -> Result<DownloadOutcome, String> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(destination)
        .await
        .map_err(|e| format!("{}: {e}", destination.display()))?;
    let mut bytes = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("{}: {e}", destination.display()))?;
        bytes += chunk.len() as u64;
    }
    file.flush()
        .await
        .map_err(|e| format!("{}: {e}", destination.display()))?;
    Ok(DownloadOutcome::Downloaded { bytes })
}

/// The number after the dash of a `Range: 0-N` header.
pub fn range_end(value: &str) -> Option<u64> {
    value
        .trim()
        .trim_start_matches("bytes=")
        .split_once('-')
        .and_then(|(_, end)| end.trim().parse().ok())
}

/// GitLab's error `message`: a string, or a map of field → list of strings flattened as
/// `key: a; b, key2: ...`.
pub fn error_message(body: &serde_json::Value) -> Option<String> {
    match body.get("message")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(map) => Some(
            map.iter()
                .map(|(key, value)| {
                    let items = match value {
                        serde_json::Value::Array(items) => items
                            .iter()
                            .map(|i| {
                                i.as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| i.to_string())
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                        other => other
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| other.to_string()),
                    };
                    format!("{key}: {items}")
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_follows_gitlab_runner() {
        for (url, base) in [
            (
                "https://gitlab.example.com",
                "https://gitlab.example.com/api/v4/",
            ),
            (
                "https://gitlab.example.com/",
                "https://gitlab.example.com/api/v4/",
            ),
            (
                "https://gitlab.example.com/ci",
                "https://gitlab.example.com/api/v4/",
            ),
            (
                "https://gitlab.example.com/ci/",
                "https://gitlab.example.com/api/v4/",
            ),
            (
                "http://host:8080/gitlab/",
                "http://host:8080/gitlab/api/v4/",
            ),
        ] {
            assert_eq!(api_base(url).unwrap().as_str(), base, "{url}");
        }
        for bad in [
            "gitlab.example.com",
            "ftp://gitlab.example.com",
            "",
            "https://",
        ] {
            assert!(api_base(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn range_and_error_messages() {
        assert_eq!(range_end("0-1234"), Some(1234));
        assert_eq!(range_end("bytes=0-5"), Some(5));
        assert_eq!(range_end("junk"), None);
        let body = serde_json::json!({"message": {"token": ["is invalid", "is missing"], "name": ["taken"]}});
        assert_eq!(
            error_message(&body).unwrap(),
            "token: is invalid; is missing, name: taken"
        );
        assert_eq!(
            error_message(&serde_json::json!({"message": "403 Forbidden"})).unwrap(),
            "403 Forbidden"
        );
        assert_eq!(error_message(&serde_json::json!({})), None);
    }
}
