//! `podrunner exec`: runs jobs of a local `.gitlab-ci.yml` without GitLab, through the same
//! agent that runs jobs for GitLab. A small coordinator on the loopback interface speaks the
//! runner API to the agent: it prints the trace as it arrives and keeps artifacts in a local
//! directory, so later jobs (and later runs) receive them.

pub mod context;
pub mod model;
pub mod pipeline;
mod render;
mod state;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post, put};
use serde_json::{Value, json};

pub use pipeline::{Pipeline, PipelineError, PipelineJob};
use render::Renderer;

/// Why a local pipeline could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The pipeline file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The pipeline is not valid.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A job named on the command line is not in the pipeline.
    #[error("{0:?} is not a job of the pipeline (jobs: {1})")]
    UnknownJob(String, String),
    /// `--clean` needs a git repository.
    #[error("--clean needs the project to be in a git repository: {0}")]
    Clean(String),
    /// Something local failed.
    #[error("{0}")]
    Io(String),
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The pipeline file; its directory is the project.
    pub file: PathBuf,
    /// Jobs to run; empty runs the whole pipeline.
    pub jobs: Vec<String>,
    /// `--var KEY=VALUE`, after the pipeline's variables.
    pub variables: Vec<(String, String)>,
    /// Run in a clean checkout of the committed tree instead of the working tree.
    pub clean: bool,
    /// Where artifacts are kept between jobs and runs.
    pub artifacts_dir: Option<PathBuf>,
    /// The podrunner binary, started as the agent.
    pub agent_program: PathBuf,
    /// Keep colours (a terminal).
    pub color: bool,
}

/// How one job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    /// Job name.
    pub name: String,
    /// `success`, `failed` or `skipped`.
    pub status: String,
    /// Failure reason, if any.
    pub failure_reason: Option<String>,
    /// Allowed to fail.
    pub allow_failure: bool,
}

#[derive(Default)]
struct LocalJob {
    name: String,
    token: String,
    trace_len: usize,
    state: Option<String>,
    failure_reason: Option<String>,
}

struct Coordinator {
    jobs: Mutex<HashMap<i64, LocalJob>>,
    renderer: Mutex<Renderer<Box<dyn Write + Send>>>,
    artifacts_dir: PathBuf,
}

/// Runs the pipeline, writing the traces to `out`; returns each job's summary.
pub async fn run(
    options: &ExecOptions,
    out: Box<dyn Write + Send>,
) -> Result<Vec<JobSummary>, ExecError> {
    let text = std::fs::read_to_string(&options.file).map_err(|source| ExecError::Read {
        path: options.file.clone(),
        source,
    })?;
    let pipeline = Pipeline::parse(&text, &options.file.display().to_string())?;
    let file = std::path::absolute(&options.file).map_err(|e| ExecError::Io(e.to_string()))?;
    let working_tree = file
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let selected: Vec<&PipelineJob> = if options.jobs.is_empty() {
        pipeline.jobs.iter().collect()
    } else {
        let names: Vec<String> = pipeline.jobs.iter().map(|j| j.name.clone()).collect();
        for wanted in &options.jobs {
            if !names.contains(wanted) {
                return Err(ExecError::UnknownJob(wanted.clone(), names.join(", ")));
            }
        }
        pipeline
            .jobs
            .iter()
            .filter(|j| options.jobs.contains(&j.name))
            .collect()
    };
    let scratch = tempfile::Builder::new()
        .prefix("podrunner-exec-")
        .tempdir()
        .map_err(|e| ExecError::Io(e.to_string()))?;
    let project_dir = if options.clean {
        clean_checkout(&working_tree, scratch.path())?
    } else {
        working_tree.clone()
    };
    let artifacts_dir = options
        .artifacts_dir
        .clone()
        .map(Ok)
        .unwrap_or_else(|| state::default_artifacts_dir(&working_tree))
        .map_err(ExecError::Io)?;
    std::fs::create_dir_all(&artifacts_dir)
        .map_err(|e| ExecError::Io(format!("{}: {e}", artifacts_dir.display())))?;

    let coordinator = Arc::new(Coordinator {
        jobs: Mutex::new(HashMap::new()),
        renderer: Mutex::new(Renderer::new(out, options.color)),
        artifacts_dir: artifacts_dir.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| ExecError::Io(format!("cannot listen on loopback: {e}")))?;
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| ExecError::Io(e.to_string()))?
    );
    let server = tokio::spawn(axum::serve(listener, router(coordinator.clone())).into_future());

    for warning in &pipeline.warnings {
        coordinator.print(&format!("WARNING: {warning}\n"));
    }
    let mut summaries = Vec::new();
    let mut failed_stage = false;
    let mut next_id = 1i64;
    for job in selected {
        if failed_stage {
            coordinator.print(&format!(
                "Skipping {}: a job of an earlier stage failed\n",
                job.name
            ));
            summaries.push(JobSummary {
                name: job.name.clone(),
                status: "skipped".into(),
                failure_reason: None,
                allow_failure: job.allow_failure,
            });
            continue;
        }
        let id = next_id;
        next_id += 1;
        let token = format!("glcbt-local-{id}-{:08x}", std::process::id());
        let mut dependencies = Vec::new();
        for source in pipeline.artifact_sources(job) {
            let archive = artifacts_dir
                .join(state::component(&source))
                .join("artifacts.zip");
            if let Ok(metadata) = std::fs::metadata(&archive) {
                let dependency_id = next_id;
                next_id += 1;
                let dependency_token =
                    format!("glcbt-local-{dependency_id}-{:08x}", std::process::id());
                coordinator.register(dependency_id, &source, &dependency_token);
                dependencies.push(json!({"id": dependency_id, "token": dependency_token, "name": source, "artifacts_file": {"filename": "artifacts.zip", "size": metadata.len()}}));
            }
        }
        coordinator.register(id, &job.name, &token);
        let payload = payload(
            job,
            &pipeline,
            &options.variables,
            id,
            &token,
            &project_dir,
            dependencies,
        );
        let started = Instant::now();
        coordinator.print(&format!(
            "\n{}Running job {} (stage {}){}\n",
            bold(options.color),
            job.name,
            job.stage,
            reset(options.color)
        ));
        let job_scratch = scratch.path().join(format!("job-{id}"));
        std::fs::create_dir_all(&job_scratch).map_err(|e| ExecError::Io(e.to_string()))?;
        let spec = json!({
            "gitlab": {"url": url},
            "job": payload,
            "builds_dir": project_dir.parent().unwrap_or(Path::new("/")),
            "project_dir": project_dir,
            "temp_dir": job_scratch.join("tmp"),
            "cache_dir": artifacts_dir.join(".cache"),
            "feature_flags": {"FF_TIMESTAMPS": false},
            "executor": "shell",
            "runner_name": "podrunner exec",
            "runner_short_token": "local",
            "system_id": "r_localexec000",
            "termination_report": job_scratch.join("report.json"),
        });
        let spec_path = job_scratch.join("spec.json");
        std::fs::write(&spec_path, spec.to_string()).map_err(|e| ExecError::Io(e.to_string()))?;
        let status = tokio::process::Command::new(&options.agent_program)
            .arg("agent")
            .arg("--spec")
            .arg(&spec_path)
            .stdin(std::process::Stdio::null())
            .status()
            .await;
        coordinator.flush();
        let (state, reason) = coordinator.result(id);
        let state = match (&status, state) {
            (_, Some(state)) => state,
            (Ok(status), None) => {
                coordinator.print(&format!(
                    "ERROR: the agent ended ({status}) without a final state\n"
                ));
                "failed".to_owned()
            }
            (Err(e), None) => {
                coordinator.print(&format!(
                    "ERROR: cannot start the agent {}: {e}\n",
                    options.agent_program.display()
                ));
                "failed".to_owned()
            }
        };
        let mark = if state == "success" {
            "passed"
        } else if job.allow_failure {
            "failed (allowed to fail)"
        } else {
            "failed"
        };
        coordinator.print(&format!(
            "{}Job {} {mark} in {:.1}s{}\n",
            bold(options.color),
            job.name,
            started.elapsed().as_secs_f64(),
            reset(options.color)
        ));
        if state != "success" && !job.allow_failure {
            failed_stage = true;
        }
        summaries.push(JobSummary {
            name: job.name.clone(),
            status: state,
            failure_reason: reason,
            allow_failure: job.allow_failure,
        });
    }
    server.abort();
    Ok(summaries)
}

fn bold(color: bool) -> &'static str {
    if color { "\x1b[1m" } else { "" }
}

fn reset(color: bool) -> &'static str {
    if color { "\x1b[0m" } else { "" }
}

/// Clones the committed tree of the repository holding `working_tree` into `scratch`;
/// returns the project directory inside the clone.
fn clean_checkout(working_tree: &Path, scratch: &Path) -> Result<PathBuf, ExecError> {
    let git = |args: &[&str], dir: &Path| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
    };
    let top = git(&["rev-parse", "--show-toplevel"], working_tree)
        .map_err(|e| ExecError::Clean(e.to_string()))?;
    if !top.status.success() {
        return Err(ExecError::Clean(
            String::from_utf8_lossy(&top.stderr).trim().to_owned(),
        ));
    }
    let top = PathBuf::from(String::from_utf8_lossy(&top.stdout).trim());
    let relative = working_tree
        .strip_prefix(&top)
        .unwrap_or(Path::new(""))
        .to_owned();
    let target = scratch.join("checkout");
    let clone = git(
        &[
            "clone",
            "--quiet",
            "--no-hardlinks",
            &top.display().to_string(),
            &target.display().to_string(),
        ],
        scratch,
    )
    .map_err(|e| ExecError::Clean(e.to_string()))?;
    if !clone.status.success() {
        return Err(ExecError::Clean(
            String::from_utf8_lossy(&clone.stderr).trim().to_owned(),
        ));
    }
    Ok(target.join(relative))
}

fn payload(
    job: &PipelineJob,
    pipeline: &Pipeline,
    extra: &[(String, String)],
    id: i64,
    token: &str,
    project_dir: &Path,
    dependencies: Vec<Value>,
) -> Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(project_dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let sha = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "0".repeat(40));
    let git_ref = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "local".to_owned());
    let project_name = project_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".to_owned());
    let variable = |key: &str, value: &str, raw: bool| json!({"key": key, "value": value, "public": true, "masked": false, "file": false, "raw": raw});
    let mut variables = vec![
        variable("CI", "true", true),
        variable("GITLAB_CI", "true", true),
        variable("CI_JOB_ID", &id.to_string(), true),
        variable("CI_JOB_NAME", &job.name, true),
        variable("CI_JOB_STAGE", &job.stage, true),
        variable("CI_PIPELINE_ID", "1", true),
        variable("CI_PIPELINE_SOURCE", "local", true),
        variable("CI_PROJECT_NAME", &project_name, true),
        variable("CI_COMMIT_SHA", &sha, true),
        variable("CI_COMMIT_SHORT_SHA", sha.get(..8).unwrap_or(&sha), true),
        variable("CI_COMMIT_REF_NAME", &git_ref, true),
        variable("GIT_STRATEGY", "none", true),
    ];
    for (key, value, raw) in pipeline.variables.iter().chain(&job.variables) {
        variables.push(variable(key, value, *raw));
    }
    for (key, value) in extra {
        variables.push(variable(key, value, false));
    }
    let mut steps = vec![
        json!({"name": "script", "script": job.before_script.iter().chain(&job.script).collect::<Vec<_>>(), "when": "on_success", "timeout": 3600, "allow_failure": job.allow_failure}),
    ];
    if !job.after_script.is_empty() {
        steps.push(json!({"name": "after_script", "script": job.after_script, "when": "always", "timeout": 3600, "allow_failure": true}));
    }
    let artifacts: Vec<Value> = job
        .artifacts
        .iter()
        .map(|a| {
            json!({"name": a.name.clone().unwrap_or_default(), "paths": a.paths, "exclude": a.exclude, "untracked": a.untracked,
                   "when": a.when.clone().unwrap_or_else(|| "on_success".to_owned()), "artifact_type": "archive", "artifact_format": "zip",
                   "expire_in": a.expire_in.clone().unwrap_or_default()})
        })
        .collect();
    json!({
        "id": id,
        "token": token,
        "allow_git_fetch": false,
        "job_info": {"name": job.name, "stage": job.stage, "project_id": 0, "project_name": project_name, "project_full_path": format!("local/{project_name}"), "pipeline_id": 1},
        "git_info": {"repo_url": "", "ref": git_ref, "sha": sha, "ref_type": "branch", "refspecs": [], "depth": 0},
        "runner_info": {"timeout": job.timeout.unwrap_or(3600)},
        "variables": variables,
        "steps": steps,
        "image": {"name": job.image.clone().unwrap_or_default()},
        "artifacts": artifacts,
        "cache": job.cache.clone().unwrap_or(Value::Array(Vec::new())),
        "dependencies": dependencies,
        "features": {"trace_sections": true, "failure_reasons": ["script_failure", "runner_system_failure", "job_execution_timeout", "unknown_failure"]}
    })
}

impl Coordinator {
    fn register(&self, id: i64, name: &str, token: &str) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            LocalJob {
                name: name.to_owned(),
                token: token.to_owned(),
                ..LocalJob::default()
            },
        );
    }

    fn print(&self, text: &str) {
        self.renderer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .message(text);
    }

    fn flush(&self) {
        self.renderer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finish();
    }

    fn result(&self, id: i64) -> (Option<String>, Option<String>) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.get(&id)
            .map(|j| (j.state.clone(), j.failure_reason.clone()))
            .unwrap_or_default()
    }

    fn authorized(&self, id: i64, headers: &HeaderMap) -> Option<String> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let job = jobs.get(&id)?;
        (headers.get("job-token").and_then(|v| v.to_str().ok()) == Some(job.token.as_str()))
            .then(|| job.name.clone())
    }
}

fn router(coordinator: Arc<Coordinator>) -> Router {
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
        drop(jobs);
        c.renderer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trace(&body);
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
    let archive = query.get("artifact_type").is_none_or(|t| t == "archive");
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() != Some("file") {
            continue;
        }
        let file_name = field.file_name().unwrap_or("artifacts").to_owned();
        let Ok(bytes) = field.bytes().await else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let dir = c.artifacts_dir.join(state::component(&name));
        let target = dir.join(if archive {
            "artifacts.zip".to_owned()
        } else {
            state::component(&file_name)
        });
        if std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&target, &bytes))
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
