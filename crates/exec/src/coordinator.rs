//! The coordinator: a stand-in for GitLab's job API on the loopback interface, for the agents
//! exec starts. It takes each job's trace (rendered as it arrives), its final state, and its
//! artifacts, which it keeps in the artifacts directory by job name: the archive as
//! `artifacts.zip`, a dotenv report parsed as GitLab does (`dotenv.json`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post, put};
use serde_json::Value;

use crate::render::{Output, Renderer};
use crate::{dotenv, state};

#[derive(Default)]
struct LocalJob {
    name: String,
    token: String,
    trace_len: usize,
    state: Option<String>,
    failure_reason: Option<String>,
    exit_code: Option<i32>,
    renderer: Renderer,
}

/// The final state an agent reported.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reported {
    /// `success` or `failed`; `None` when the agent never said.
    pub(crate) state: Option<String>,
    /// `failure_reason`.
    pub(crate) failure_reason: Option<String>,
    /// `exit_code` of the script.
    pub(crate) exit_code: Option<i32>,
}

/// The coordinator's state.
pub(crate) struct Coordinator {
    jobs: Mutex<HashMap<i64, LocalJob>>,
    pub(crate) output: Arc<Output>,
    artifacts_dir: PathBuf,
}

impl Coordinator {
    /// A coordinator that keeps artifacts in `artifacts_dir`.
    pub(crate) fn new(output: Arc<Output>, artifacts_dir: PathBuf) -> Self {
        Coordinator {
            jobs: Mutex::new(HashMap::new()),
            output,
            artifacts_dir,
        }
    }

    /// Accepts requests for job `id` with `token` (a job, or a dependency's download).
    pub(crate) fn register(&self, id: i64, name: &str, token: &str) {
        let color = self.output.color();
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            LocalJob {
                name: name.to_owned(),
                token: token.to_owned(),
                renderer: Renderer::new(color),
                ..LocalJob::default()
            },
        );
    }

    /// Prints what is left of job `id`'s trace and forgets the job; returns what it reported.
    pub(crate) fn finish(&self, id: i64) -> Reported {
        let job = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let Some(mut job) = job else {
            return Reported::default();
        };
        self.output.job(&job.name, &job.renderer.finish());
        Reported {
            state: job.state,
            failure_reason: job.failure_reason,
            exit_code: job.exit_code,
        }
    }

    /// Forgets a dependency's registration.
    pub(crate) fn forget(&self, id: i64) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn authorized(&self, id: i64, headers: &HeaderMap) -> Option<String> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let job = jobs.get(&id)?;
        (headers.get("job-token").and_then(|v| v.to_str().ok()) == Some(job.token.as_str()))
            .then(|| job.name.clone())
    }
}

/// The routes of GitLab's job API the agent uses.
pub(crate) fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/api/v4/jobs/{id}", put(update))
        .route("/api/v4/jobs/{id}/trace", patch(trace))
        .route("/api/v4/jobs/{id}/artifacts", post(upload).get(download))
        .with_state(coordinator)
}

async fn update(
    State(c): State<Arc<Coordinator>>,
    UrlPath(id): UrlPath<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if c.authorized(id, &headers).is_none() {
        return StatusCode::FORBIDDEN.into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let state = body["state"].as_str().unwrap_or("").to_owned();
    if state == "success" || state == "failed" {
        let mut jobs = c.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = jobs.get_mut(&id) {
            job.state = Some(state);
            job.failure_reason = body["failure_reason"].as_str().map(str::to_owned);
            job.exit_code = body["exit_code"]
                .as_i64()
                .and_then(|c| i32::try_from(c).ok());
        }
    }
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert("job-status", HeaderValue::from_static("running"));
    response
}

async fn trace(
    State(c): State<Arc<Coordinator>>,
    UrlPath(id): UrlPath<i64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if c.authorized(id, &headers).is_none() {
        return StatusCode::FORBIDDEN.into_response();
    }
    let start = headers
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, _)| a.parse::<usize>().ok());
    let mut jobs = c.jobs.lock().unwrap_or_else(|p| p.into_inner());
    let Some(job) = jobs.get_mut(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let have = job.trace_len;
    let mut response = if start != Some(have) {
        StatusCode::RANGE_NOT_SATISFIABLE.into_response()
    } else {
        job.trace_len += body.len();
        let lines = job.renderer.trace(&body);
        let name = job.name.clone();
        drop(jobs);
        c.output.job(&name, &lines);
        StatusCode::ACCEPTED.into_response()
    };
    let length = if response.status() == StatusCode::ACCEPTED {
        have + body.len()
    } else {
        have
    };
    response.headers_mut().insert(
        "range",
        HeaderValue::from_str(&format!("0-{length}")).unwrap_or(HeaderValue::from_static("0-0")),
    );
    // Short intervals keep the output live.
    response.headers_mut().insert(
        "x-gitlab-trace-update-interval",
        HeaderValue::from_static("1"),
    );
    response
        .headers_mut()
        .insert("job-status", HeaderValue::from_static("running"));
    response
}

async fn upload(
    State(c): State<Arc<Coordinator>>,
    UrlPath(id): UrlPath<i64>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    let Some(name) = c.authorized(id, &headers) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let artifact_type = query
        .get("artifact_type")
        .map(String::as_str)
        .unwrap_or("archive")
        .to_owned();
    let gzip = query.get("artifact_format").is_some_and(|f| f == "gzip");
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() != Some("file") {
            continue;
        }
        let file_name = field.file_name().unwrap_or("artifacts").to_owned();
        let Ok(bytes) = field.bytes().await else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let dir = c.artifacts_dir.join(state::component(&name));
        let (target, contents) = match artifact_type.as_str() {
            "archive" => (dir.join("artifacts.zip"), bytes.to_vec()),
            "dotenv" => match dotenv::parse_upload(&bytes, gzip) {
                Ok(variables) => (dir.join(dotenv::FILE), dotenv::to_json(&variables)),
                Err(why) => {
                    // GitLab answers 400 and the runner fails the job.
                    return (
                        StatusCode::BAD_REQUEST,
                        axum::Json(serde_json::json!({"message": why})),
                    )
                        .into_response();
                }
            },
            other => (
                dir.join(format!(
                    "{}-{}",
                    state::component(other),
                    state::component(&file_name)
                )),
                bytes.to_vec(),
            ),
        };
        if std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&target, &contents))
            .is_err()
        {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        return StatusCode::CREATED.into_response();
    }
    StatusCode::BAD_REQUEST.into_response()
}

async fn download(
    State(c): State<Arc<Coordinator>>,
    UrlPath(id): UrlPath<i64>,
    headers: HeaderMap,
) -> Response {
    let Some(name) = c.authorized(id, &headers) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    match std::fs::read(
        c.artifacts_dir
            .join(state::component(&name))
            .join("artifacts.zip"),
    ) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
