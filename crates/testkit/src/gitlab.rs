//! A GitLab stand-in for the runner API (`/api/v4`): registration, long-polled job requests,
//! the job state machine with cancellation, trace PATCH with range checks, final PUT with
//! checksum validation, artifacts through a redirecting "object storage", and fault injection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// An endpoint whose answers can be scripted with faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST runners`.
    Register,
    /// `POST runners/verify`.
    Verify,
    /// `POST jobs/request`.
    RequestJob,
    /// `PUT jobs/:id`.
    UpdateJob,
    /// `PATCH jobs/:id/trace`.
    PatchTrace,
    /// `POST jobs/:id/artifacts`.
    UploadArtifact,
    /// `GET jobs/:id/artifacts`.
    DownloadArtifact,
}

/// What to do instead of the normal answer, once.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and headers, doing nothing else.
    Status(u16, Vec<(String, String)>),
    /// Wait, then answer normally.
    Delay(Duration),
    /// Close the connection without an answer.
    Drop,
    /// `PUT jobs/:id` only: answer this status after applying the final state (e.g. 202).
    UpdateStatus(u16),
    /// `POST jobs/:id/artifacts` only: answer 307 to the stand-in's second address.
    RedirectToSecondAddress,
    /// `PATCH jobs/:id/trace` only: store the bytes, then answer this status as if the
    /// answer was lost on the way (the runner will resend what GitLab already has).
    ApplyThenStatus(u16),
}

/// A request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// Body, when JSON.
    pub json: Option<Value>,
    /// When it arrived.
    pub at: std::time::SystemTime,
}

/// A job to queue.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Name.
    pub name: String,
    /// `script` lines.
    pub script: Vec<String>,
    /// `after_script` lines.
    pub after_script: Vec<String>,
    /// Variables as `(key, value, masked)`; all public unless masked.
    pub variables: Vec<(String, String, bool)>,
    /// File variables as `(key, content)`.
    pub file_variables: Vec<(String, String)>,
    /// Timeout in seconds.
    pub timeout: i64,
    /// Image name.
    pub image: String,
    /// Repository path (`group/project`) and commit of `git_info`.
    pub git: Option<(String, String)>,
    /// Jobs whose artifacts this job downloads; filled in when the job is picked.
    pub depends_on: Vec<i64>,
    /// Extra top-level payload fields, merged last.
    pub extra: serde_json::Map<String, Value>,
}

impl JobSpec {
    /// A job running `script`.
    pub fn new(name: &str, script: &[&str]) -> Self {
        JobSpec {
            name: name.to_owned(),
            script: script.iter().map(|s| s.to_string()).collect(),
            after_script: Vec::new(),
            variables: Vec::new(),
            file_variables: Vec::new(),
            timeout: 3600,
            image: "alpine:3.20".to_owned(),
            git: None,
            depends_on: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }

    /// Adds a file variable.
    pub fn file_variable(mut self, key: &str, content: &str) -> Self {
        self.file_variables
            .push((key.to_owned(), content.to_owned()));
        self
    }

    /// Sets `after_script`.
    pub fn after_script(mut self, lines: &[&str]) -> Self {
        self.after_script = lines.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the job timeout in seconds.
    pub fn timeout(mut self, seconds: i64) -> Self {
        self.timeout = seconds;
        self
    }

    /// Downloads the artifacts of these jobs.
    pub fn depends_on(mut self, ids: &[i64]) -> Self {
        self.depends_on.extend_from_slice(ids);
        self
    }

    /// Sets a top-level payload field (`artifacts`, `cache`, ...).
    pub fn payload_field(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// Points `git_info` at a repository of the stand-in and a commit.
    pub fn git(mut self, path: &str, sha: &str) -> Self {
        self.git = Some((path.to_owned(), sha.to_owned()));
        self
    }

    /// Adds a variable.
    pub fn variable(mut self, key: &str, value: &str, masked: bool) -> Self {
        self.variables
            .push((key.to_owned(), value.to_owned(), masked));
        self
    }
}

/// The stand-in's record of a job.
#[derive(Debug, Clone)]
pub struct JobView {
    /// ID.
    pub id: i64,
    /// `pending`, `running`, `canceling`, `canceled`, `success`, `failed`.
    pub status: String,
    /// The trace bytes received.
    pub trace: Vec<u8>,
    /// `failure_reason` of the final update.
    pub failure_reason: Option<String>,
    /// `exit_code` of the final update.
    pub exit_code: Option<i64>,
    /// Every `PUT jobs/:id` body.
    pub updates: Vec<Value>,
    /// Number of trace PATCH calls accepted.
    pub patches: usize,
    /// Uploaded artifacts: query parameters, file name and bytes.
    pub artifacts: Vec<(BTreeMap<String, String>, String, Vec<u8>)>,
}

#[derive(Debug)]
struct Job {
    id: i64,
    token: String,
    payload: Value,
    status: String,
    trace: Vec<u8>,
    failure_reason: Option<String>,
    exit_code: Option<i64>,
    updates: Vec<Value>,
    patches: usize,
    artifacts: Vec<(BTreeMap<String, String>, String, Vec<u8>)>,
    final_accepted: bool,
    depends_on: Vec<i64>,
}

#[derive(Debug, Default)]
struct Inner {
    registration_tokens: Vec<String>,
    runner_tokens: HashMap<String, i64>,
    managers: Vec<(String, String)>,
    next_runner_id: i64,
    next_job_id: i64,
    queue: VecDeque<i64>,
    queue_version: u64,
    jobs: BTreeMap<i64, Job>,
    faults: HashMap<Endpoint, VecDeque<Fault>>,
    requests: Vec<RecordedRequest>,
    conflicts: usize,
    long_poll: Duration,
    trace_update_interval: Option<u64>,
    second_address: String,
    object_store: HashMap<String, Vec<u8>>,
    git_root: Option<std::path::PathBuf>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    queued: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running GitLab stand-in.
pub struct GitlabStandIn {
    shared: Shared,
    url: String,
    second_url: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    git_root: tempfile::TempDir,
}

impl Drop for GitlabStandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl GitlabStandIn {
    /// Starts the stand-in on two loopback ports (the second serves redirect targets).
    pub async fn start() -> Self {
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                next_runner_id: 1,
                next_job_id: 1000,
                long_poll: Duration::from_secs(50),
                ..Inner::default()
            })),
            queued: Arc::new(Notify::new()),
        };
        let router = router(shared.clone());
        let first = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let second = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", first.local_addr().expect("address"));
        let second_url = format!("http://{}", second.local_addr().expect("address"));
        let git_root = tempfile::tempdir().expect("temporary directory for repositories");
        {
            let mut inner = shared.lock();
            inner.second_address = second_url.clone();
            inner.git_root = Some(git_root.path().to_owned());
        }
        let tasks = vec![
            tokio::spawn(serve(first, router.clone())),
            tokio::spawn(serve(second, router)),
        ];
        GitlabStandIn {
            shared,
            url,
            second_url,
            tasks,
            git_root,
        }
    }

    /// GitLab's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The second address (redirect target).
    pub fn second_url(&self) -> &str {
        &self.second_url
    }

    /// Creates the repository `path` (e.g. `group/project`) with one commit of `files`,
    /// served at `<url>/<path>.git`; returns the commit's SHA.
    pub fn create_repository(&self, path: &str, files: &[(&str, &str)]) -> std::io::Result<String> {
        crate::git_http::create_repository(self.git_root.path(), path, files)
    }

    /// Adds a commit to `main` of repository `path`; returns its SHA.
    pub fn add_commit(&self, path: &str, files: &[(&str, &str)]) -> std::io::Result<String> {
        crate::git_http::add_commit(self.git_root.path(), path, files)
    }

    /// Accepts this legacy registration token.
    pub fn add_registration_token(&self, token: &str) {
        self.shared
            .lock()
            .registration_tokens
            .push(token.to_owned());
    }

    /// Accepts this runner authentication token; returns the runner ID.
    pub fn add_runner_token(&self, token: &str) -> i64 {
        let mut inner = self.shared.lock();
        let id = inner.next_runner_id;
        inner.next_runner_id += 1;
        inner.runner_tokens.insert(token.to_owned(), id);
        id
    }

    /// Whether a runner token is still valid.
    pub fn runner_token_valid(&self, token: &str) -> bool {
        self.shared.lock().runner_tokens.contains_key(token)
    }

    /// The runner managers that verified, as `(token, system_id)`.
    pub fn managers(&self) -> Vec<(String, String)> {
        self.shared.lock().managers.clone()
    }

    /// How long `jobs/request` is held when nothing is queued (Workhorse long polling).
    pub fn set_long_poll(&self, duration: Duration) {
        self.shared.lock().long_poll = duration;
    }

    /// `X-GitLab-Trace-Update-Interval` sent on trace and update answers.
    pub fn set_trace_update_interval(&self, seconds: Option<u64>) {
        self.shared.lock().trace_update_interval = seconds;
    }

    /// The next `n` job requests get `409 Conflict`.
    pub fn inject_conflicts(&self, n: usize) {
        self.shared.lock().conflicts = n;
    }

    /// Queues a fault for the next call of `endpoint`.
    pub fn fault(&self, endpoint: Endpoint, fault: Fault) {
        self.shared
            .lock()
            .faults
            .entry(endpoint)
            .or_default()
            .push_back(fault);
    }

    /// Queues a job; returns its ID.
    pub fn enqueue(&self, spec: JobSpec) -> i64 {
        let mut inner = self.shared.lock();
        let id = inner.next_job_id;
        inner.next_job_id += 1;
        let token = format!("glcbt-{id}-{:016x}", rand::random::<u64>());
        let depends_on = spec.depends_on.clone();
        let mut payload = payload_for(id, &token, &spec, &self.url);
        if let Value::Object(map) = &mut payload {
            for (key, value) in spec.extra {
                map.insert(key, value);
            }
        }
        inner.jobs.insert(
            id,
            Job {
                id,
                token,
                payload,
                status: "pending".to_owned(),
                trace: Vec::new(),
                failure_reason: None,
                exit_code: None,
                updates: Vec::new(),
                patches: 0,
                artifacts: Vec::new(),
                final_accepted: false,
                depends_on,
            },
        );
        inner.queue.push_back(id);
        inner.queue_version += 1;
        drop(inner);
        self.shared.queued.notify_waiters();
        id
    }

    /// A job's record.
    pub fn job(&self, id: i64) -> Option<JobView> {
        self.shared.lock().jobs.get(&id).map(|job| JobView {
            id: job.id,
            status: job.status.clone(),
            trace: job.trace.clone(),
            failure_reason: job.failure_reason.clone(),
            exit_code: job.exit_code,
            updates: job.updates.clone(),
            patches: job.patches,
            artifacts: job.artifacts.clone(),
        })
    }

    /// A job's token.
    pub fn job_token(&self, id: i64) -> Option<String> {
        self.shared.lock().jobs.get(&id).map(|j| j.token.clone())
    }

    /// Sets a job's status, as a user canceling in the UI would (`canceling`, `canceled`).
    pub fn set_status(&self, id: i64, status: &str) {
        if let Some(job) = self.shared.lock().jobs.get_mut(&id) {
            job.status = status.to_owned();
        }
    }

    /// Stores an artifact archive for job `id` as if that job had uploaded it.
    pub fn put_artifact(&self, id: i64, bytes: Vec<u8>) {
        if let Some(job) = self.shared.lock().jobs.get_mut(&id) {
            job.artifacts
                .push((BTreeMap::new(), "artifacts.zip".to_owned(), bytes));
        }
    }

    /// Drops all but the first `len` trace bytes, as if GitLab lost chunks.
    pub fn truncate_trace(&self, id: i64, len: usize) {
        if let Some(job) = self.shared.lock().jobs.get_mut(&id) {
            job.trace.truncate(len);
        }
    }

    /// Every request seen, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Waits until `check` holds for the job, or panics after `timeout`.
    pub async fn wait_for_job(
        &self,
        id: i64,
        timeout: Duration,
        check: impl Fn(&JobView) -> bool,
    ) -> JobView {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(view) = self.job(id)
                && check(&view)
            {
                return view;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "job {id} did not reach the expected state in {timeout:?}: {:?}",
                    self.job(id)
                        .map(|j| (j.status, String::from_utf8_lossy(&j.trace).into_owned()))
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(listener: TcpListener, router: Router) {
    let _ = axum::serve(listener, router).await;
}

fn payload_for(id: i64, token: &str, spec: &JobSpec, url: &str) -> Value {
    let mut variables = vec![
        json!({"key": "CI_JOB_ID", "value": id.to_string(), "public": true, "masked": false}),
        json!({"key": "CI_JOB_TOKEN", "value": token, "public": false, "masked": true}),
        json!({"key": "CI_SERVER_URL", "value": url, "public": true, "masked": false}),
        json!({"key": "CI_JOB_NAME", "value": spec.name, "public": true, "masked": false}),
    ];
    for (key, value, masked) in &spec.variables {
        variables.push(json!({"key": key, "value": value, "public": !masked, "masked": masked, "file": false, "raw": false}));
    }
    for (key, value) in &spec.file_variables {
        variables.push(json!({"key": key, "value": value, "public": false, "masked": false, "file": true, "raw": false}));
    }
    let mut steps = vec![
        json!({"name": "script", "script": spec.script, "timeout": spec.timeout, "when": "on_success", "allow_failure": false}),
    ];
    if !spec.after_script.is_empty() {
        steps.push(json!({"name": "after_script", "script": spec.after_script, "timeout": spec.timeout, "when": "always", "allow_failure": false}));
    }
    let host = url.trim_start_matches("http://");
    let (repo, sha) = spec.git.clone().unwrap_or_else(|| {
        (
            "group/project".to_owned(),
            "0000000000000000000000000000000000000000".to_owned(),
        )
    });
    json!({
        "id": id,
        "token": token,
        "allow_git_fetch": false,
        "job_info": {"name": spec.name, "stage": "test", "project_id": 7, "project_name": "project", "project_full_path": "group/project", "pipeline_id": 70},
        "git_info": {"repo_url": format!("http://gitlab-ci-token:{token}@{host}/{repo}.git"), "ref": "main", "sha": sha, "before_sha": "0000000000000000000000000000000000000000", "ref_type": "branch", "refspecs": [], "depth": 20},
        "runner_info": {"timeout": spec.timeout},
        "variables": variables,
        "steps": steps,
        "image": {"name": spec.image},
        "services": [],
        "artifacts": [],
        "cache": [],
        "credentials": [],
        "dependencies": [],
        "features": {"trace_sections": true, "failure_reasons": ["script_failure", "runner_system_failure", "job_execution_timeout", "unknown_failure"]}
    })
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/v4/runners", post(register).delete(unregister_legacy))
        .route("/api/v4/runners/verify", post(verify))
        .route("/api/v4/runners/managers", delete(unregister_manager))
        .route(
            "/api/v4/runners/reset_authentication_token",
            post(reset_token),
        )
        .route("/api/v4/jobs/request", post(request_job))
        .route("/api/v4/jobs/{id}", put(update_job))
        .route("/api/v4/jobs/{id}/trace", patch(patch_trace))
        .route(
            "/api/v4/jobs/{id}/artifacts",
            post(upload_artifact).get(download_artifact),
        )
        .route("/object-storage/{key}", get(object_storage))
        .fallback(git_smart_http)
        .with_state(shared)
}

fn record(shared: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let json = serde_json::from_slice(body).ok();
    shared.lock().requests.push(RecordedRequest {
        method: method.to_string(),
        path: uri.to_string(),
        headers,
        json,
        at: std::time::SystemTime::now(),
    });
}

/// Applies a queued fault, if any: `Some(response)` replaces the normal answer.
async fn take_fault(shared: &Shared, endpoint: Endpoint) -> Option<Fault> {
    let fault = shared
        .lock()
        .faults
        .get_mut(&endpoint)
        .and_then(VecDeque::pop_front);
    match fault {
        Some(Fault::Delay(duration)) => {
            tokio::time::sleep(duration).await;
            None
        }
        Some(Fault::Drop) => panic!("fault injection: dropping the connection"),
        other => other,
    }
}

fn status_response(status: u16, headers: &[(String, String)]) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({"message": format!("{status} injected")}).to_string(),
    )
        .into_response();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

fn forbidden() -> Response {
    json_response(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"}))
}

async fn register(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    if let Some(Fault::Status(status, h)) = take_fault(&shared, Endpoint::Register).await {
        return status_response(status, &h);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let mut inner = shared.lock();
    if !inner.registration_tokens.contains(&token) {
        return forbidden();
    }
    let id = inner.next_runner_id;
    inner.next_runner_id += 1;
    let new_token = format!(
        "legacy{id:04}{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    );
    inner.runner_tokens.insert(new_token.clone(), id);
    json_response(
        StatusCode::CREATED,
        json!({"id": id, "token": new_token, "token_expires_at": null}),
    )
}

async fn verify(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    if let Some(Fault::Status(status, h)) = take_fault(&shared, Endpoint::Verify).await {
        return status_response(status, &h);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let system_id = body["system_id"].as_str().unwrap_or("").to_owned();
    let mut inner = shared.lock();
    let Some(id) = inner.runner_tokens.get(&token).copied() else {
        return forbidden();
    };
    if !system_id.is_empty() && !inner.managers.contains(&(token.clone(), system_id.clone())) {
        inner.managers.push((token.clone(), system_id));
    }
    json_response(
        StatusCode::OK,
        json!({"id": id, "token": token, "token_expires_at": null}),
    )
}

async fn unregister_legacy(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("");
    let mut inner = shared.lock();
    match inner.runner_tokens.remove(token) {
        Some(_) => {
            inner.managers.retain(|(t, _)| t != token);
            StatusCode::NO_CONTENT.into_response()
        }
        None => forbidden(),
    }
}

async fn unregister_manager(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let system_id = body["system_id"].as_str().unwrap_or("").to_owned();
    let mut inner = shared.lock();
    if !inner.runner_tokens.contains_key(&token) || system_id.is_empty() {
        return forbidden();
    }
    inner
        .managers
        .retain(|m| m != &(token.clone(), system_id.clone()));
    StatusCode::NO_CONTENT.into_response()
}

async fn reset_token(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let mut inner = shared.lock();
    let Some(id) = inner.runner_tokens.remove(&token) else {
        return forbidden();
    };
    let new_token = format!("glrt-reset{:016x}", rand::random::<u64>());
    inner.runner_tokens.insert(new_token.clone(), id);
    json_response(
        StatusCode::CREATED,
        json!({"token": new_token, "token_expires_at": null}),
    )
}

async fn request_job(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    if let Some(Fault::Status(status, h)) = take_fault(&shared, Endpoint::RequestJob).await {
        return status_response(status, &h);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let header_token = headers
        .get("runner-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if header_token != token || !shared.lock().runner_tokens.contains_key(&token) {
        return forbidden();
    }
    let last_update = body["last_update"].as_str().map(str::to_owned);
    let long_poll = shared.lock().long_poll;
    let deadline = tokio::time::Instant::now() + long_poll;
    loop {
        let notified = shared.queued.notified();
        {
            let mut inner = shared.lock();
            if inner.conflicts > 0 {
                inner.conflicts -= 1;
                return json_response(StatusCode::CONFLICT, json!({"message": "409 Conflict"}));
            }
            let version = inner.queue_version.to_string();
            if let Some(id) = inner.queue.pop_front() {
                inner.queue_version += 1;
                let version = inner.queue_version.to_string();
                // Like GitLab, dependencies are resolved when the job is picked.
                let depends_on = inner
                    .jobs
                    .get(&id)
                    .map(|j| j.depends_on.clone())
                    .unwrap_or_default();
                let dependencies: Vec<Value> = depends_on
                    .iter()
                    .filter_map(|dep| inner.jobs.get(dep))
                    .map(|dep| {
                        let archive = dep.artifacts.iter().find(|(q, _, _)| q.get("artifact_type").is_none_or(|t| t == "archive"));
                        json!({
                            "id": dep.id,
                            "token": dep.token,
                            "name": dep.payload["job_info"]["name"],
                            "artifacts_file": archive.map(|(_, name, bytes)| json!({"filename": name, "size": bytes.len()})),
                        })
                    })
                    .collect();
                let job = inner.jobs.get_mut(&id).expect("queued jobs exist");
                if !dependencies.is_empty() {
                    job.payload["dependencies"] = Value::Array(dependencies);
                }
                job.status = "running".to_owned();
                let mut response = json_response(StatusCode::CREATED, job.payload.clone());
                response.headers_mut().insert(
                    "x-gitlab-last-update",
                    HeaderValue::from_str(&version).expect("digits"),
                );
                return response;
            }
            // Workhorse holds the request only when the runner is up to date.
            if last_update.as_deref() != Some(version.as_str())
                || tokio::time::Instant::now() >= deadline
            {
                let mut response = StatusCode::NO_CONTENT.into_response();
                response.headers_mut().insert(
                    "x-gitlab-last-update",
                    HeaderValue::from_str(&version).expect("digits"),
                );
                return response;
            }
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn job_headers(response: &mut Response, status: &str, interval: Option<u64>) {
    response.headers_mut().insert(
        "job-status",
        HeaderValue::from_str(status).unwrap_or(HeaderValue::from_static("running")),
    );
    if let Some(interval) = interval {
        response.headers_mut().insert(
            "x-gitlab-trace-update-interval",
            HeaderValue::from(interval),
        );
    }
}

async fn update_job(
    State(shared): State<Shared>,
    Path(id): Path<i64>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    let fault = take_fault(&shared, Endpoint::UpdateJob).await;
    if let Some(Fault::Status(status, h)) = &fault {
        return status_response(*status, h);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut inner = shared.lock();
    let interval = inner.trace_update_interval;
    let Some(job) = inner.jobs.get_mut(&id) else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
    };
    let header_token = headers
        .get("job-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if header_token != job.token
        || body["token"].as_str() != Some(job.token.as_str())
        || job.final_accepted
    {
        return forbidden();
    }
    job.updates.push(body.clone());
    let state = body["state"].as_str().unwrap_or("");
    let mut response = match state {
        "running" => StatusCode::OK.into_response(),
        "success" | "failed" => {
            if matches!(job.status.as_str(), "canceled" | "failed") && job.status != state {
                let mut response = forbidden();
                job_headers(&mut response, &job.status, interval);
                return response;
            }
            let expected = format!("crc32:{:08x}", crc32fast::hash(&job.trace));
            // Like GitLab, the trace is checked only when the runner sends its checksum.
            let checksum_ok = body["output"]["checksum"]
                .as_str()
                .is_none_or(|c| c == expected);
            let size_ok = body["output"]["bytesize"]
                .as_u64()
                .is_none_or(|b| b == job.trace.len() as u64);
            if !checksum_ok || !size_ok {
                // The trace does not match: the runner must send it again from the start.
                job.trace.clear();
                StatusCode::PRECONDITION_FAILED.into_response()
            } else {
                job.status = state.to_owned();
                job.failure_reason = body["failure_reason"].as_str().map(str::to_owned);
                job.exit_code = body["exit_code"].as_i64();
                match fault {
                    Some(Fault::UpdateStatus(status)) => StatusCode::from_u16(status)
                        .unwrap_or(StatusCode::OK)
                        .into_response(),
                    _ => {
                        job.final_accepted = true;
                        StatusCode::OK.into_response()
                    }
                }
            }
        }
        _ => json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": {"state": ["is invalid"]}}),
        ),
    };
    let status = job.status.clone();
    job_headers(&mut response, &status, interval);
    response
}

async fn patch_trace(
    State(shared): State<Shared>,
    Path(id): Path<i64>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &[]);
    let fault = take_fault(&shared, Endpoint::PatchTrace).await;
    if let Some(Fault::Status(status, h)) = &fault {
        return status_response(*status, h);
    }
    let mut inner = shared.lock();
    let interval = inner.trace_update_interval;
    let Some(job) = inner.jobs.get_mut(&id) else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
    };
    if headers.get("job-token").and_then(|v| v.to_str().ok()) != Some(job.token.as_str())
        || !matches!(job.status.as_str(), "running" | "canceling")
    {
        let mut response = forbidden();
        let status = job.status.clone();
        job_headers(&mut response, &status, interval);
        return response;
    }
    let Some(range) = headers.get("content-range").and_then(|v| v.to_str().ok()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": "400 Bad request - Content-Range missing"}),
        );
    };
    let parsed = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    let Some((start, end)) = parsed.filter(|(s, e)| e + 1 == s + body.len()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": format!("400 Bad request - Content-Range {range:?} does not match the body")}),
        );
    };
    // GitLab appends only at the exact end of the log: `Ci::Trace#append`
    // (gitlabhq/gitlabhq `lib/gitlab/ci/trace.rb`) writes nothing unless the offset equals the
    // current size and returns that size; `Ci::AppendBuildTraceService`
    // (`app/services/ci/append_build_trace_service.rb`) then answers 416 and the API puts
    // `Range: 0-<size>` on it (`lib/api/ci/runner.rb`, `PATCH /jobs/:id/trace`).
    let have = job.trace.len();
    let mut response = if start != have {
        let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        response.headers_mut().insert(
            "range",
            HeaderValue::from_str(&format!("0-{have}")).expect("digits"),
        );
        response
    } else {
        job.trace.extend_from_slice(&body);
        job.patches += 1;
        if let Some(Fault::ApplyThenStatus(status)) = fault {
            return status_response(status, &[]);
        }
        let mut response = StatusCode::ACCEPTED.into_response();
        response.headers_mut().insert(
            "range",
            HeaderValue::from_str(&format!("0-{}", end + 1)).expect("digits"),
        );
        response
    };
    let status = job.status.clone();
    job_headers(&mut response, &status, interval);
    response
}

async fn upload_artifact(
    State(shared): State<Shared>,
    Path(id): Path<i64>,
    Query(query): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    record(&shared, &method, &uri, &headers, &[]);
    // Read the whole upload first, so an early answer never races the client's body.
    let mut stored = None;
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() == Some("file") {
            let name = field.file_name().unwrap_or("").to_owned();
            match field.bytes().await {
                Ok(bytes) => stored = Some((name, bytes.to_vec())),
                Err(_) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"message": "unreadable file part"}),
                    );
                }
            }
        }
    }
    match take_fault(&shared, Endpoint::UploadArtifact).await {
        Some(Fault::Status(status, h)) => return status_response(status, &h),
        Some(Fault::RedirectToSecondAddress) => {
            let target = format!("{}/somewhere/else?ignored=1", shared.lock().second_address);
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            response
                .headers_mut()
                .insert("location", HeaderValue::from_str(&target).expect("url"));
            return response;
        }
        _ => {}
    }
    let mut inner = shared.lock();
    let Some(job) = inner.jobs.get_mut(&id) else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
    };
    if headers.get("job-token").and_then(|v| v.to_str().ok()) != Some(job.token.as_str()) {
        return forbidden();
    }
    let Some((name, bytes)) = stored else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": "400 Bad request - file is missing"}),
        );
    };
    job.artifacts.push((query, name, bytes));
    json_response(StatusCode::CREATED, json!({}))
}

async fn download_artifact(
    State(shared): State<Shared>,
    Path(id): Path<i64>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&shared, &method, &uri, &headers, &[]);
    if let Some(Fault::Status(status, h)) = take_fault(&shared, Endpoint::DownloadArtifact).await {
        return status_response(status, &h);
    }
    let mut inner = shared.lock();
    let Some(job) = inner.jobs.get(&id) else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
    };
    if headers.get("job-token").and_then(|v| v.to_str().ok()) != Some(job.token.as_str()) {
        return forbidden();
    }
    let Some((_, _, bytes)) = job
        .artifacts
        .iter()
        .find(|(q, _, _)| q.get("artifact_type").is_none_or(|t| t == "archive"))
        .cloned()
    else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
    };
    let key = format!("job-{id}-{:08x}", rand::random::<u32>());
    inner.object_store.insert(key.clone(), bytes);
    let mut response = StatusCode::FOUND.into_response();
    let location = format!("/object-storage/{key}?X-Amz-Signature=signed");
    response
        .headers_mut()
        .insert("location", HeaderValue::from_str(&location).expect("path"));
    response
}

async fn object_storage(
    State(shared): State<Shared>,
    Path(key): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&shared, &method, &uri, &headers, &[]);
    if headers.contains_key("job-token") {
        // Object storage must never see a job token.
        return (StatusCode::BAD_REQUEST, "job token sent to object storage").into_response();
    }
    match shared.lock().object_store.get(&key) {
        Some(bytes) => (StatusCode::OK, bytes.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response(),
    }
}

/// `<repo>.git/info/refs` and `<repo>.git/git-upload-pack`, for running jobs' tokens only.
async fn git_smart_http(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &[]);
    let path = uri.path().to_owned();
    if !(path.ends_with(".git/info/refs") || path.ends_with(".git/git-upload-pack")) {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not Found"}));
    }
    let (root, allowed) = {
        let inner = shared.lock();
        let password = crate::git_http::basic_password(&headers);
        let allowed = password.is_some_and(|p| {
            inner
                .jobs
                .values()
                .any(|j| j.token == p && matches!(j.status.as_str(), "running" | "canceling"))
        });
        (inner.git_root.clone(), allowed)
    };
    if !allowed {
        return crate::git_http::unauthorized();
    }
    let Some(root) = root else {
        return StatusCode::NOT_FOUND.into_response();
    };
    crate::git_http::serve(
        root,
        method.as_str(),
        &path,
        uri.query().unwrap_or(""),
        &headers,
        body,
    )
    .await
}
