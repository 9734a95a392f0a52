//! A GitLab stand-in for the runner API (`/api/v4`): registration, long-polled job requests,
//! the job state machine with two-phase commit and cancellation, trace PATCH appended only at
//! the exact end, the final PUT with its "accepted" back-off, artifacts through a redirecting
//! "object storage", and fault injection.
//!
//! Each GitLab rule lives in a module of its own naming the upstream file it follows:
//! `features` (which jobs a runner may take), `lifecycle` (picking, two-phase commit,
//! cancel, drop), `request` (`POST jobs/request`), `trace` (`PATCH jobs/:id/trace`),
//! `update` (`PUT jobs/:id`), `artifacts` (`POST`/`GET jobs/:id/artifacts` and the object
//! storage downloads redirect to) and `runners` (registration, verification, unregistration
//! and token reset).

mod artifacts;
pub mod features;
mod lifecycle;
mod request;
mod runners;
mod trace;
mod update;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
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
    /// What the job's YAML says that its payload does not carry.
    pub options: features::JobOptions,
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
            options: features::JobOptions::default(),
        }
    }

    /// `allow_failure: exit_codes:` (needs the runner's `return_exit_code`).
    pub fn allow_failure_exit_codes(mut self, codes: &[i64]) -> Self {
        self.options.allow_failure_exit_codes = codes.to_vec();
        self
    }

    /// A pipeline for a merge request: `git_info.refspecs` fetches its ref (needs the
    /// runner's `refspecs`).
    pub fn merge_request_ref(mut self, iid: u64) -> Self {
        self.options.merge_request_ref = Some(iid);
        self
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
    /// The `info.features` of the runner that picked it (`null` before).
    pub runner_features: Value,
    /// Failed with an exit code listed in `allow_failure:exit_codes`
    /// (`Ci::Build#allowed_to_fail_with_code?`).
    pub allowed_to_fail: bool,
    /// The trace bytes received.
    pub trace: Vec<u8>,
    /// Why GitLab failed the job: the final update's `failure_reason`, or its own drop
    /// (`runner_unsupported`, `trace_size_exceeded`, `runner_provisioning_timeout`).
    pub failure_reason: Option<String>,
    /// `exit_code` of the final `failed` update.
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
    options: features::JobOptions,
    status: String,
    trace: Vec<u8>,
    failure_reason: Option<String>,
    exit_code: Option<i64>,
    updates: Vec<Value>,
    patches: usize,
    artifacts: Vec<(BTreeMap<String, String>, String, Vec<u8>)>,
    depends_on: Vec<i64>,
    runner_features: Value,
    cancel_gracefully: bool,
    /// Picked by a two-phase runner that has not acknowledged it yet: when the wait expires.
    ack_deadline: Option<tokio::time::Instant>,
    /// When the first final update with a checksum came (`Ci::BuildPendingState#created_at`).
    pending_state_since: Option<tokio::time::Instant>,
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
    rate_limited: (usize, u64),
    long_poll: Duration,
    trace_settings: trace::TraceSettings,
    live_chunks_pending: bool,
    two_phase_commit: bool,
    ack_timeout: Duration,
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
                trace_settings: trace::TraceSettings {
                    size_limit_mib: trace::DEFAULT_TRACE_SIZE_LIMIT_MIB,
                    update_interval: trace::UPDATE_FREQUENCY_WHEN_BEING_WATCHED,
                },
                two_phase_commit: true,
                ack_timeout: lifecycle::RUNNER_ACK_QUEUE_EXPIRY_TIME,
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

    /// `X-GitLab-Trace-Update-Interval` on trace answers: 3 s while the log is watched (the
    /// default here), 60 s otherwise (`lib/gitlab/ci/trace.rb`).
    pub fn set_trace_update_interval(&self, seconds: u64) {
        self.shared.lock().trace_settings.update_interval = seconds;
    }

    /// The plan's `ci_jobs_trace_size_limit` in MiB (100 by default; 0: none).
    pub fn set_trace_size_limit_mib(&self, mib: u64) {
        self.shared.lock().trace_settings.size_limit_mib = mib;
    }

    /// Whether live trace chunks are still to be persisted: while they are, a final update
    /// with a checksum is answered 202 with a back-off (`update_build_state_service.rb`).
    pub fn set_live_chunks_pending(&self, pending: bool) {
        self.shared.lock().live_chunks_pending = pending;
    }

    /// The `allow_runner_job_acknowledgement` feature flag (on by default): whether runners
    /// announcing `two_phase_job_commit` get the two-phase workflow.
    pub fn set_two_phase_commit(&self, enabled: bool) {
        self.shared.lock().two_phase_commit = enabled;
    }

    /// How long a two-phase pick waits for its acknowledgement (2 minutes by default).
    pub fn set_ack_timeout(&self, timeout: Duration) {
        self.shared.lock().ack_timeout = timeout;
    }

    /// The next `n` job requests get `409 Conflict`, as GitLab answers when the runner's
    /// queue could not be read consistently: a build picked concurrently
    /// (`ActiveRecord::StaleObjectError`, `StateMachines::InvalidTransition`), a build
    /// locked by another request, stale `ci_pending_builds`, a queue deeper than
    /// `MAX_QUEUE_DEPTH`, or a replica behind the primary with nothing found
    /// (`app/services/ci/register_job_service.rb`; `conflict!` in
    /// `lib/api/ci/helpers/job_request.rb`).
    pub fn inject_conflicts(&self, n: usize) {
        self.shared.lock().conflicts = n;
    }

    /// The next `n` job requests are throttled: `check_rate_limit!(:runner_jobs_request_api)`
    /// (`lib/api/ci/runner.rb`) answers 429 with `Retry-After` set to the limit's interval
    /// (`lib/api/helpers/rate_limiter.rb`; the interval is the limit's own setting, given
    /// here), before the runner is even authenticated.
    pub fn rate_limit_job_requests(&self, n: usize, interval: Duration) {
        self.shared.lock().rate_limited = (n, interval.as_secs());
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
        let options = spec.options.clone();
        let mut payload = payload_for(id, &token, &spec, &self.url);
        if let Value::Object(map) = &mut payload {
            for (key, value) in spec.extra {
                map.insert(key, value);
            }
        }
        // `Ci::BuildRunnerPresenter#refspecs` adds the merge request's ref.
        if let Some(iid) = options.merge_request_ref
            && let Some(refspecs) = payload["git_info"]["refspecs"].as_array_mut()
        {
            refspecs.push(json!(format!(
                "+refs/merge-requests/{iid}/head:refs/merge-requests/{iid}/head"
            )));
        }
        inner.jobs.insert(
            id,
            Job {
                id,
                token,
                payload,
                options,
                status: "pending".to_owned(),
                trace: Vec::new(),
                failure_reason: None,
                exit_code: None,
                updates: Vec::new(),
                patches: 0,
                artifacts: Vec::new(),
                depends_on,
                runner_features: Value::Null,
                cancel_gracefully: false,
                ack_deadline: None,
                pending_state_since: None,
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
            runner_features: job.runner_features.clone(),
            allowed_to_fail: job.status == "failed"
                && job
                    .exit_code
                    .is_some_and(|c| job.options.allow_failure_exit_codes.contains(&c)),
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

    /// Cancels a job as a user does (the `cancel` event): `canceling` for a running job whose
    /// runner announced `cancel_gracefully`, else `canceled`.
    pub fn cancel(&self, id: i64) {
        if let Some(job) = self.shared.lock().jobs.get_mut(&id) {
            lifecycle::cancel(job);
        }
    }

    /// Force-cancels a `canceling` job (the `force_cancel` event).
    pub fn force_cancel(&self, id: i64) {
        if let Some(job) = self.shared.lock().jobs.get_mut(&id) {
            lifecycle::force_cancel(job);
        }
    }

    /// Sets a job's status directly, bypassing GitLab's state machine (prefer
    /// [`GitlabStandIn::cancel`]; this is for states a test needs to start from).
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
        .route(
            "/api/v4/runners",
            post(runners::register).delete(runners::unregister),
        )
        .route("/api/v4/runners/verify", post(runners::verify))
        .route(
            "/api/v4/runners/managers",
            delete(runners::unregister_manager),
        )
        .route(
            "/api/v4/runners/reset_authentication_token",
            post(runners::reset_token),
        )
        .route("/api/v4/jobs/request", post(request::request_job))
        .route("/api/v4/jobs/{id}", put(update_job))
        .route("/api/v4/jobs/{id}/trace", patch(patch_trace))
        .route(
            "/api/v4/jobs/{id}/artifacts",
            post(artifacts::upload).get(artifacts::download),
        )
        .route("/object-storage/{key}", get(artifacts::object_storage))
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
    let settings = update::UpdateSettings {
        live_chunks_pending: inner.live_chunks_pending,
        ack_timeout: inner.ack_timeout,
    };
    lifecycle::expire_ack_waits(inner.jobs.values_mut());
    let Some(job) = inner.jobs.get_mut(&id) else {
        return forbidden();
    };
    // `requires :token`; `job_token` is the parameter, else the `JOB-TOKEN` header.
    let Some(token) = body["token"].as_str() else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "token is missing"}),
        );
    };
    if let Some(response) = lifecycle::refuse_job(job, Some(token), true) {
        return response;
    }
    job.updates.push(body.clone());
    update::update(job, &body, settings)
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
    let settings = inner.trace_settings;
    lifecycle::expire_ack_waits(inner.jobs.values_mut());
    let Some(job) = inner.jobs.get_mut(&id) else {
        return forbidden();
    };
    let token = headers.get("job-token").and_then(|v| v.to_str().ok());
    if let Some(response) = lifecycle::refuse_job(job, token, false) {
        return response;
    }
    let range = headers.get("content-range").and_then(|v| v.to_str().ok());
    trace::append(job, settings, range, &body, fault)
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
