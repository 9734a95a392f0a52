//! One job from its spec to its final state, in gitlab-runner's stage order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use podrunner_gitlab::api::{FailureReason, JobState};
use podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION;
use podrunner_gitlab::log::{self, LogSettings, Stream, SystemClock, Trace, TraceWriter};
use podrunner_gitlab::{
    ClientOptions, FinalState, GitlabClient, JobPayload, RemoteControl, RunnerInfo, TraceTarget,
    TraceUploader, UploaderTimings,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handover::{FargateBilling, Handover, TRACE_PRELUDE_ENV};
use crate::process::{self, ProcessOutcome, StopReason};
use crate::script::{ShellKind, StageScript, render};
use crate::sources::{self, Strategy};
use crate::spec::{AgentSpec, TerminationReport};
use crate::variables::{Variable, Variables};

/// `after_script` gets this long unless `RUNNER_AFTER_SCRIPT_TIMEOUT` says otherwise.
const DEFAULT_AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Why the agent could not even start reporting to GitLab.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The spec file could not be read.
    #[error("cannot read the spec {path}: {source}")]
    ReadSpec {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The spec is not valid.
    #[error("the spec {path} is not valid: {source}")]
    BadSpec {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The job payload inside the spec is not valid.
    #[error("the job payload in the spec is not valid: {0}")]
    BadPayload(#[from] serde_json::Error),
    /// The trace prelude handed over in the environment is not base64.
    #[error("{TRACE_PRELUDE_ENV} is not base64: {0}")]
    BadPrelude(String),
    /// GitLab cannot be reached with the spec's settings.
    #[error("cannot talk to GitLab: {0}")]
    Client(#[from] podrunner_gitlab::ClientError),
}

/// How the job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Success,
    Failed {
        reason: FailureReason,
        exit_code: Option<i32>,
        message: String,
    },
    Aborted,
}

/// When a stage is stopped by a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the user script: a graceful cancel stops everything.
    Preparation,
    /// The user script: a graceful cancel stops only the script.
    UserScript,
    /// after_script: already past any cancel.
    AfterScript,
}

/// The payload features the job side honours, each with what of the payload it reads (or,
/// for `return_exit_code`, sends): the one list [`agent_features`] announces beyond the
/// network side's own. GitLab drops a job needing a feature a runner does not announce
/// (`runner_unsupported`), so announcing one the agent ignores, or honouring one not
/// announced, is a bug either way. `vault_secrets` stays off: `secrets:` are not resolved.
pub const JOB_FEATURES: &[(&str, &str)] = &[
    ("variables", "variables"),
    ("image", "image"),
    ("services", "services"),
    ("masking", "variables[].masked"),
    ("raw_variables", "variables[].raw"),
    ("refspecs", "git_info.refspecs"),
    (
        "multi_build_steps",
        "steps[] besides script and after_script",
    ),
    ("return_exit_code", "the final update's exit_code"),
    ("artifacts", "artifacts"),
    (
        "upload_multiple_artifacts",
        "artifacts[].artifact_type (reports)",
    ),
    (
        "upload_raw_artifacts",
        "artifacts[].artifact_format (raw, gzip)",
    ),
    ("artifacts_exclude", "artifacts[].exclude"),
    ("cache", "cache"),
    ("fallback_cache_keys", "cache[].fallback_keys"),
];

/// What podrunner's agent implements, advertised to GitLab: the network side's features
/// and [`JOB_FEATURES`].
pub fn agent_features() -> podrunner_gitlab::Features {
    let mut features = serde_json::to_value(podrunner_gitlab::Features::network())
        .expect("features serialize to an object");
    for (feature, _) in JOB_FEATURES {
        features[*feature] = serde_json::Value::Bool(true);
    }
    serde_json::from_value(features).expect("every JOB_FEATURES key is a Features field")
}

/// Reads a spec file and runs its job.
pub async fn run_from_file(
    path: &Path,
    interrupt: CancellationToken,
) -> Result<TerminationReport, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|source| AgentError::ReadSpec {
        path: path.to_owned(),
        source,
    })?;
    let spec: AgentSpec = serde_json::from_str(&text).map_err(|source| AgentError::BadSpec {
        path: path.to_owned(),
        source,
    })?;
    run(spec, Handover::from_env()?, interrupt).await
}

pub(crate) fn write_line(out: &mut TraceWriter, text: &str) {
    let _ = out.write_bytes(text.as_bytes());
    let _ = out.write_bytes(b"\n");
    let _ = out.flush_all();
}

pub(crate) fn write_raw(out: &mut TraceWriter, text: &str) {
    let _ = out.write_bytes(text.as_bytes());
    let _ = out.flush_all();
}

/// The header, then "Preparing environment" opened with the executor's notes.
pub(crate) fn write_opening(
    out: &mut TraceWriter,
    spec: &AgentSpec,
    variables: &Variables,
    sections: bool,
) {
    let name = if spec.runner_name.is_empty() {
        "podrunner"
    } else {
        &spec.runner_name
    };
    write_line(
        out,
        &format!(
            "Running with podrunner {} (gitlab-runner {COMPATIBLE_RUNNER_VERSION} compatible)",
            env!("CARGO_PKG_VERSION")
        ),
    );
    write_line(
        out,
        &format!(
            "  on {name} {}, system ID: {}",
            spec.runner_short_token, spec.system_id
        ),
    );
    if spec.debug_trace_disabled && variables.flag("CI_DEBUG_TRACE") == Some(true) {
        write_raw(
            out,
            &log::warning_line(
                "CI_DEBUG_TRACE is disabled on this runner (debug_trace_disabled); the job runs without it",
            ),
        );
    }
    if sections {
        write_raw(out, &log::section_start("prepare_script", now_unix()));
    }
    write_raw(out, &log::section_header("Preparing environment"));
    for note in &spec.notes {
        match note.strip_prefix("WARNING: ") {
            Some(warning) => write_raw(out, &log::warning_line(warning)),
            None => write_line(out, note),
        }
    }
}

/// The project and temp directories of a job.
pub(crate) fn job_dirs(spec: &AgentSpec, payload: &JobPayload) -> (PathBuf, PathBuf) {
    let project_dir = project_dir(spec, payload);
    let temp_dir = spec
        .temp_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.tmp", project_dir.display())));
    (project_dir, temp_dir)
}

/// How the job's log is masked, stamped and limited.
pub(crate) fn log_settings(
    spec: &AgentSpec,
    payload: &JobPayload,
    variables: &Variables,
) -> LogSettings {
    let job = &payload.job;
    let flag = |name: &str| {
        variables
            .flag(name)
            .or_else(|| spec.feature_flags.get(name).copied())
            .unwrap_or_else(|| default_flag(name))
    };
    let mut masked = variables.masked_values();
    masked.push(job.token.expose().to_owned());
    LogSettings {
        masked_phrases: masked,
        token_prefixes: LogSettings::token_prefixes(
            flag("FF_MASK_ALL_DEFAULT_TOKENS"),
            &job.features.token_mask_prefixes,
        ),
        timestamps: flag("FF_TIMESTAMPS"),
        output_limit_bytes: usize::try_from(spec.output_limit_kib.max(1).saturating_mul(1024))
            .unwrap_or(usize::MAX),
        spill_threshold: log::DEFAULT_SPILL_THRESHOLD,
        clock: Arc::new(SystemClock),
    }
}

/// The job's side of the cache code, borrowing only the fields it reads (so the log can be
/// borrowed mutably next to it).
macro_rules! cache_job {
    ($job:expr) => {
        crate::cache::CacheJob {
            spec: &$job.spec,
            payload: &$job.payload,
            variables: &$job.variables,
            project_dir: &$job.project_dir,
            temp_dir: &$job.temp_dir,
        }
    };
}

impl crate::cache::CacheLog for Writers {
    fn line(&mut self, text: &str) {
        Writers::line(self, text);
    }

    fn warning(&mut self, text: &str) {
        self.raw(&log::warning_line(text));
    }
}

/// The runner's own lines, and the job's output (stdout and stderr as one stream, see
/// [`crate::process`]).
struct Writers {
    runner: TraceWriter,
    job: TraceWriter,
}

impl Writers {
    fn line(&mut self, text: &str) {
        write_line(&mut self.runner, text);
    }

    fn raw(&mut self, text: &str) {
        write_raw(&mut self.runner, text);
    }

    fn flush(&mut self) {
        let _ = self.job.flush_all();
        let _ = self.runner.flush_all();
    }
}

struct Job {
    client: GitlabClient,
    spec: AgentSpec,
    payload: JobPayload,
    variables: Variables,
    project_dir: PathBuf,
    temp_dir: PathBuf,
    shell: ShellKind,
    sections: bool,
    debug_trace: bool,
    deadline: Instant,
    timeout: Duration,
    control: watch::Receiver<RemoteControl>,
    interrupt: CancellationToken,
    out: Writers,
    /// The manager already wrote the header and opened "Preparing environment".
    opened: bool,
    /// The pod's Fargate size and price, for the cost line at the end.
    fargate: Option<FargateBilling>,
    /// When the agent started.
    started: Instant,
}

/// Runs a job to its final state and reports how it went.
pub async fn run(
    spec: AgentSpec,
    handover: Handover,
    interrupt: CancellationToken,
) -> Result<TerminationReport, AgentError> {
    let started = Instant::now();
    let prelude = handover.trace_prelude.clone();
    let payload = JobPayload::from_value(spec.job.clone())?;
    let client = GitlabClient::new(&ClientOptions {
        url: spec.gitlab.url.clone(),
        tls_ca_file: spec.gitlab.tls_ca_file.clone(),
        tls_cert_file: spec.gitlab.tls_cert_file.clone(),
        tls_key_file: spec.gitlab.tls_key_file.clone(),
        podrunner_version: env!("CARGO_PKG_VERSION").to_owned(),
    })?;
    let job = &payload.job;
    let (project_dir, temp_dir) = job_dirs(&spec, &payload);
    let variables = build_variables(&spec, &payload, &project_dir, &temp_dir);
    let trace = Trace::new(&log_settings(&spec, &payload, &variables));
    if !prelude.is_empty() {
        // The manager's bytes are already masked and stamped; they count like any others.
        let _ = trace.sink().write(&prelude);
    }
    let info = RunnerInfo::new(COMPATIBLE_RUNNER_VERSION, &spec.executor, agent_features());
    let debug_trace =
        variables.flag("CI_DEBUG_TRACE").unwrap_or(false) && !spec.debug_trace_disabled;
    let target = TraceTarget {
        job_id: job.id,
        token: job.token.clone(),
        debug_trace,
        info,
        start_offset: spec.trace_start_offset,
        final_update_retry_limit: spec.final_update_retry_limit.max(1),
        supported_failure_reasons: job.features.failure_reasons.clone(),
        // The manager may still be writing the log: claim it (crate::handover).
        handover: handover.trace_handover(),
    };
    // The uploader outlives an interrupt: the final state must still reach GitLab.
    let uploader = TraceUploader::start(
        client.clone(),
        target,
        trace.clone(),
        UploaderTimings::default(),
        &CancellationToken::new(),
    );
    let timeout = Duration::from_secs(payload.timeout_secs());
    let mut run = Job {
        client,
        shell: choose_shell(spec.shell.as_deref()),
        sections: job.features.trace_sections,
        debug_trace,
        deadline: deadline_after(timeout),
        timeout,
        control: uploader.control(),
        interrupt,
        out: Writers {
            runner: trace.writer(Stream::RUNNER),
            job: trace.writer(Stream::JOB),
        },
        variables,
        project_dir,
        temp_dir,
        payload,
        spec,
        opened: !prelude.is_empty(),
        fargate: handover.fargate,
        started,
    };
    let outcome = run.execute().await;
    run.out.flush();
    let final_state = match &outcome {
        Outcome::Success => FinalState {
            state: JobState::Success,
            failure_reason: None,
            exit_code: None,
        },
        Outcome::Failed {
            reason, exit_code, ..
        } => FinalState {
            state: JobState::Failed,
            failure_reason: Some(*reason),
            exit_code: *exit_code,
        },
        Outcome::Aborted => FinalState {
            state: JobState::Failed,
            failure_reason: Some(FailureReason::JobCanceled),
            exit_code: None,
        },
    };
    drop(run.out);
    trace.sink().finish().ok();
    let delivered = uploader.finish(final_state.clone()).await;
    let report = TerminationReport {
        final_update_delivered: delivered.delivered,
        state: if final_state.state == JobState::Success {
            "success"
        } else {
            "failed"
        }
        .to_owned(),
        failure_reason: final_state.failure_reason.map(|r| r.as_str().to_owned()),
        exit_code: final_state.exit_code,
        trace_bytes_sent: delivered.trace_bytes_sent,
        aborted: delivered.aborted || outcome == Outcome::Aborted,
    };
    write_report(run.spec.termination_report.as_deref(), &report);
    Ok(report)
}

fn default_flag(name: &str) -> bool {
    matches!(
        name,
        "FF_TIMESTAMPS" | "FF_MASK_ALL_DEFAULT_TOKENS" | "FF_USE_POD_ACTIVE_DEADLINE_SECONDS"
    )
}

fn write_report(path: Option<&Path>, report: &TerminationReport) {
    let Ok(json) = serde_json::to_string(report) else {
        return;
    };
    if let Some(path) = path {
        let _ = std::fs::write(path, &json);
    }
    let termination_log = Path::new("/dev/termination-log");
    if termination_log.exists() {
        let _ = std::fs::write(termination_log, &json);
    }
}

/// `<builds_dir>/<project full path>`, or the spec's choice, or a valid `GIT_CLONE_PATH`.
fn project_dir(spec: &AgentSpec, payload: &JobPayload) -> PathBuf {
    if spec.custom_build_dir_enabled
        && let Some(clone_path) = payload
            .job
            .variables
            .iter()
            .rev()
            .find(|v| v.key == "GIT_CLONE_PATH")
            .map(|v| PathBuf::from(&v.value))
        && clone_path.starts_with(&spec.builds_dir)
    {
        return clone_path;
    }
    if let Some(dir) = &spec.project_dir {
        return dir.clone();
    }
    let full_path = payload.job.job_info.project_full_path.trim_matches('/');
    let full_path = if full_path.is_empty() {
        format!("project-{}", payload.job.job_info.project_id)
    } else {
        full_path.to_owned()
    };
    spec.builds_dir.join(full_path)
}

fn choose_shell(configured: Option<&str>) -> ShellKind {
    match configured {
        Some("sh") => ShellKind::Sh,
        Some("bash") => ShellKind::Bash,
        _ => {
            let has_bash = std::env::var_os("PATH").is_some_and(|paths| {
                std::env::split_paths(&paths).any(|dir| dir.join("bash").is_file())
            });
            if has_bash {
                ShellKind::Bash
            } else {
                ShellKind::Sh
            }
        }
    }
}

/// The runner's predefined variables, then the job's, then the runner's `environment`.
pub(crate) fn build_variables(
    spec: &AgentSpec,
    payload: &JobPayload,
    project_dir: &Path,
    temp_dir: &Path,
) -> Variables {
    let mut variables = Variables::new();
    if let Some(ca) = spec
        .gitlab
        .tls_ca_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        variables.push(Variable {
            file: true,
            ..Variable::runner("CI_SERVER_TLS_CA_FILE", ca)
        });
    }
    variables.set("CI_BUILDS_DIR", spec.builds_dir.display().to_string());
    variables.set("CI_PROJECT_DIR", project_dir.display().to_string());
    variables.set("CI_CONCURRENT_ID", spec.concurrent_id.to_string());
    variables.set("CI_CONCURRENT_PROJECT_ID", spec.concurrent_id.to_string());
    variables.set("CI_SERVER", "yes");
    variables.set("CI_RUNNER_SHORT_TOKEN", spec.runner_short_token.clone());
    variables.set("CI_RUNNER_VERSION", COMPATIBLE_RUNNER_VERSION);
    variables.set(
        "CI_RUNNER_REVISION",
        format!("podrunner-{}", env!("CARGO_PKG_VERSION")),
    );
    variables.set(
        "CI_RUNNER_EXECUTABLE_ARCH",
        format!(
            "{}/{}",
            std::env::consts::OS,
            podrunner_gitlab::api::go_arch(std::env::consts::ARCH)
        ),
    );
    if spec.executor == "shell" {
        variables.set("CI_SHARED_ENVIRONMENT", "true");
    } else {
        variables.set("CI_DISPOSABLE_ENVIRONMENT", "true");
    }
    variables.set("RUNNER_TEMP_PROJECT_DIR", temp_dir.display().to_string());
    for variable in &payload.job.variables {
        variables.push(Variable::from_payload(variable));
    }
    for entry in &spec.environment {
        if let Some((key, value)) = entry.split_once('=') {
            variables.push(Variable {
                raw: false,
                ..Variable::runner(key, value)
            });
        }
    }
    variables
}

/// Parses a Go duration such as `10m` or `1h30m` (for `RUNNER_*_TIMEOUT`).
fn go_duration(text: &str) -> Option<Duration> {
    text.trim()
        .parse::<podrunner_config::GoDuration>()
        .ok()
        .map(|d| d.get())
}

/// Thirty years: the deadline of a timeout too large to add to the clock (as tokio's own
/// far future).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `timeout` from now; a timeout past what the clock can hold saturates to
/// [`FAR_FUTURE`] instead of overflowing.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout.min(FAR_FUTURE)).unwrap_or(now)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Job {
    async fn execute(&mut self) -> Outcome {
        if !self.opened {
            write_opening(
                &mut self.out.runner,
                &self.spec,
                &self.variables,
                self.sections,
            );
        }
        if let Err(outcome) = self.prepare().await {
            return self.finish(outcome).await;
        }
        if let Err(outcome) = self.get_sources().await {
            return self.finish_with_uploads(outcome).await;
        }
        self.restore_cache().await;
        if let Err(outcome) = self.download_artifacts().await {
            return self.finish_with_uploads(outcome).await;
        }
        let mut outcome = Outcome::Success;
        let steps: Vec<_> = self
            .payload
            .job
            .steps
            .iter()
            .filter(|s| s.name != "after_script")
            .cloned()
            .collect();
        for step in steps {
            let runs = match step.when.as_str() {
                "always" => true,
                "on_failure" => outcome != Outcome::Success,
                _ => outcome == Outcome::Success,
            };
            if !runs || step.script.iter().all(|l| l.trim().is_empty()) {
                continue;
            }
            let stage = format!("step_{}", step.name);
            let mut commands: Vec<String> = self.spec.pre_build_script.iter().cloned().collect();
            commands.extend(step.script.iter().cloned());
            commands.extend(self.spec.post_build_script.iter().cloned());
            let script_deadline = self
                .variables
                .get("RUNNER_SCRIPT_TIMEOUT")
                .and_then(go_duration)
                .map(deadline_after);
            let description = format!("Executing \"{stage}\" stage of the job script");
            let result = self
                .script_stage(
                    &stage,
                    &description,
                    &commands,
                    Phase::UserScript,
                    script_deadline,
                )
                .await;
            outcome = match result {
                ProcessOutcome::Exited(0) => Outcome::Success,
                ProcessOutcome::Exited(code) => Outcome::Failed {
                    reason: FailureReason::ScriptFailure,
                    exit_code: Some(code),
                    message: format!("exit code {code}"),
                },
                ProcessOutcome::Stopped(reason) => self.stopped(reason),
                ProcessOutcome::NotStarted(e) => Outcome::Failed {
                    reason: FailureReason::RunnerSystemFailure,
                    exit_code: None,
                    message: format!("cannot start {}: {e}", self.shell.program()),
                },
            };
            if outcome != Outcome::Success {
                break;
            }
        }
        let after_script_allowed = match &outcome {
            Outcome::Aborted => false,
            Outcome::Failed {
                reason: FailureReason::RunnerInterrupted,
                ..
            } => false,
            Outcome::Failed { message, .. } if message.starts_with("execution took longer") => {
                false
            }
            _ => true,
        };
        if after_script_allowed {
            self.after_script(&outcome).await;
        }
        self.finish_with_uploads(outcome).await
    }

    /// Cache and artifacts for the outcome so far, then the end of the job. An upload error
    /// fails a job that had succeeded; nothing is uploaded for aborted or interrupted jobs.
    async fn finish_with_uploads(&mut self, outcome: Outcome) -> Outcome {
        let uploads = !matches!(
            outcome,
            Outcome::Aborted
                | Outcome::Failed {
                    reason: FailureReason::RunnerInterrupted,
                    ..
                }
        ) && !(matches!(&outcome, Outcome::Failed { message, .. } if message.starts_with("execution took longer")));
        let mut outcome = outcome;
        if uploads {
            let success = outcome == Outcome::Success;
            self.archive_cache(success).await;
            if let Err(error) = self.upload_artifacts(success).await
                && outcome == Outcome::Success
            {
                outcome = error;
            }
        }
        self.finish(outcome).await
    }

    async fn restore_cache(&mut self) {
        let entries = cache_job!(self).entries();
        if !crate::cache::restores(&entries) {
            return;
        }
        self.section_start("restore_cache", "Restoring cache");
        crate::cache::restore(&cache_job!(self), &entries, &mut self.out).await;
        self.section_end("restore_cache");
    }

    async fn archive_cache(&mut self, success: bool) {
        let entries = cache_job!(self).entries();
        let saved: Vec<_> = crate::cache::to_save(&cache_job!(self), &entries, success)
            .into_iter()
            .cloned()
            .collect();
        if saved.is_empty() {
            return;
        }
        let (stage, description) = if success {
            ("archive_cache", "Saving cache for successful job")
        } else {
            ("archive_cache_on_failure", "Saving cache for failed job")
        };
        self.section_start(stage, description);
        let saved: Vec<_> = saved.iter().collect();
        crate::cache::save(&cache_job!(self), &saved, &mut self.out).await;
        self.section_end(stage);
    }

    async fn download_artifacts(&mut self) -> Result<(), Outcome> {
        let dependencies: Vec<_> = self
            .payload
            .job
            .dependencies
            .iter()
            .filter(|d| {
                d.artifacts_file
                    .as_ref()
                    .is_some_and(|f| !f.filename.is_empty())
            })
            .cloned()
            .collect();
        if dependencies.is_empty() {
            return Ok(());
        }
        if let Some(outcome) = self.stop_now(Phase::Preparation) {
            return Err(outcome);
        }
        self.section_start("download_artifacts", "Downloading artifacts");
        let direct = self
            .variables
            .flag("FF_USE_DIRECT_DOWNLOAD")
            .or_else(|| {
                self.spec
                    .feature_flags
                    .get("FF_USE_DIRECT_DOWNLOAD")
                    .copied()
            })
            .unwrap_or(true);
        let mut result = Ok(());
        for dependency in dependencies {
            self.out.line(&format!(
                "Downloading artifacts for {} ({})...",
                dependency.name, dependency.id
            ));
            let archive = self
                .temp_dir
                .join(format!("artifacts-{}.zip", dependency.id));
            let outcome = self
                .client
                .download_artifact(dependency.id, &dependency.token, direct, &archive)
                .await;
            let failure = match outcome {
                podrunner_gitlab::client::DownloadOutcome::Downloaded { .. } => {
                    match crate::files::extract_zip(&archive, &self.project_dir) {
                        Ok(_) => {
                            self.out
                                .line("Downloading artifacts from coordinator... ok");
                            None
                        }
                        Err(e) => Some(format!(
                            "cannot extract the artifacts of {}: {e}",
                            dependency.name
                        )),
                    }
                }
                podrunner_gitlab::client::DownloadOutcome::Forbidden => {
                    Some("Downloading artifacts from coordinator... forbidden".to_owned())
                }
                podrunner_gitlab::client::DownloadOutcome::NotFound => {
                    Some("Downloading artifacts from coordinator... not found".to_owned())
                }
                podrunner_gitlab::client::DownloadOutcome::Failed(e) => Some(format!(
                    "Downloading artifacts from coordinator... error: {e}"
                )),
            };
            let _ = std::fs::remove_file(&archive);
            if let Some(message) = failure {
                self.out.raw(&log::error_line(&message));
                result = Err(Outcome::Failed {
                    reason: FailureReason::ScriptFailure,
                    exit_code: None,
                    message,
                });
                break;
            }
        }
        self.section_end("download_artifacts");
        result
    }

    async fn upload_artifacts(&mut self, success: bool) -> Result<(), Outcome> {
        let artifacts: Vec<_> = self
            .payload
            .job
            .artifacts
            .iter()
            .filter(|a| !a.paths.is_empty() || a.untracked)
            .filter(|a| match a.when.as_str() {
                "always" => true,
                "on_failure" => !success,
                _ => success,
            })
            .cloned()
            .collect();
        if artifacts.is_empty() {
            return Ok(());
        }
        let (stage, description) = if success {
            (
                "upload_artifacts_on_success",
                "Uploading artifacts for successful job",
            )
        } else {
            (
                "upload_artifacts_on_failure",
                "Uploading artifacts for failed job",
            )
        };
        self.section_start(stage, description);
        let mut result = Ok(());
        for artifact in artifacts {
            self.out.line("Uploading artifacts...");
            let untracked = if artifact.untracked {
                crate::files::untracked(&self.project_dir)
            } else {
                Vec::new()
            };
            let paths: Vec<String> = artifact
                .paths
                .iter()
                .map(|p| self.variables.expand(p))
                .collect();
            let exclude: Vec<String> = artifact
                .exclude
                .iter()
                .map(|p| self.variables.expand(p))
                .collect();
            let collected =
                match crate::files::collect(&self.project_dir, &paths, &exclude, &untracked) {
                    Ok(collected) => collected,
                    Err(e) => {
                        result = Err(Outcome::Failed {
                            reason: FailureReason::ScriptFailure,
                            exit_code: None,
                            message: e.to_string(),
                        });
                        self.out.raw(&log::error_line(&e.to_string()));
                        break;
                    }
                };
            for (pattern, count) in &collected.per_pattern {
                self.out.line(&format!(
                    "{pattern}: found {count} matching artifact files and directories"
                ));
                if *count == 0 {
                    self.out.raw(&log::warning_line(&format!("{pattern}: no matching files. Ensure that the artifact path is relative to the working directory ({})", self.project_dir.display())));
                }
            }
            let files: Vec<&PathBuf> = collected
                .entries
                .iter()
                .filter(|p| self.project_dir.join(p).is_file())
                .collect();
            if files.is_empty() {
                self.out.raw(&log::error_line("No files to upload"));
                continue;
            }
            let artifact_type = if artifact.artifact_type.is_empty() {
                "archive".to_owned()
            } else {
                artifact.artifact_type.clone()
            };
            let format = if artifact.artifact_format.is_empty() {
                "zip".to_owned()
            } else {
                artifact.artifact_format.clone()
            };
            let name = self.variables.expand(&artifact.name);
            let prepared = match format.as_str() {
                "zip" => {
                    let archive = self.temp_dir.join("artifacts.zip");
                    let level = crate::files::CompressionLevel::from_name(self.variables.get("ARTIFACT_COMPRESSION_LEVEL").unwrap_or("")).unwrap_or_else(|e| {
                        self.out.raw(&log::warning_line(&e.to_string()));
                        crate::files::CompressionLevel::Default
                    });
                    crate::files::write_zip_with(&self.project_dir, &collected.entries, &archive, &crate::files::ZipOptions { level }).map(|_| (archive, format!("{}.zip", if name.is_empty() { "artifacts" } else { &name })))
                }
                "gzip" if files.len() > 1 => {
                    let archive = self.temp_dir.join("artifacts.gz");
                    let sources: Vec<PathBuf> = files.iter().map(|f| self.project_dir.join(f)).collect();
                    let base = if name.is_empty() { "artifacts".to_owned() } else { name.clone() };
                    crate::files::write_gzip_members(&sources, &archive).map(|_| (archive, format!("{base}.gz")))
                }
                "gzip" | "raw" if files.len() == 1 => {
                    let source = self.project_dir.join(files[0]);
                    let base = files[0].file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                    if format == "gzip" {
                        let archive = self.temp_dir.join("artifacts.gz");
                        crate::files::write_gzip(&source, &archive).map(|_| (archive, format!("{base}.gz")))
                    } else {
                        Ok((source, base))
                    }
                }
                other => Err(crate::files::FilesError::Pattern { pattern: other.to_owned(), reason: "this artifact format needs files (raw: exactly one), or is not supported (zip, gzip, raw)".to_owned() }),
            };
            let (file, file_name) = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    self.out.raw(&log::error_line(&format!(
                        "cannot prepare the artifacts: {e}"
                    )));
                    result = Err(Outcome::Failed {
                        reason: FailureReason::ScriptFailure,
                        exit_code: None,
                        message: e.to_string(),
                    });
                    break;
                }
            };
            let upload = podrunner_gitlab::client::ArtifactUpload {
                format: Some(format.clone()),
                artifact_type: Some(artifact_type.clone()),
                expire_in: Some(artifact.expire_in.clone()).filter(|e| !e.is_empty()),
                file_name,
            };
            let job_id = self.payload.job.id;
            let token = self.payload.job.token.clone();
            let outcome = self
                .client
                .upload_artifact(job_id, &token, &file, &upload)
                .await;
            let message = format!("Uploading artifacts as \"{artifact_type}\" to coordinator...");
            match outcome {
                podrunner_gitlab::client::UploadOutcome::Uploaded => {
                    self.out.line(&format!("{message} 201 Created"))
                }
                other => {
                    let why = match other {
                        podrunner_gitlab::client::UploadOutcome::Forbidden => {
                            "403 Forbidden".to_owned()
                        }
                        podrunner_gitlab::client::UploadOutcome::TooLarge => {
                            "413 Request Entity Too Large".to_owned()
                        }
                        podrunner_gitlab::client::UploadOutcome::Failed(e) => e,
                        podrunner_gitlab::client::UploadOutcome::Uploaded => {
                            unreachable!("handled above")
                        }
                    };
                    self.out.raw(&log::error_line(&format!("{message} {why}")));
                    result = Err(Outcome::Failed {
                        reason: FailureReason::ScriptFailure,
                        exit_code: None,
                        message: format!("uploading artifacts failed: {why}"),
                    });
                }
            }
        }
        self.section_end(stage);
        result
    }

    /// Turns a stop into the job's outcome, printing what happened.
    fn stopped(&mut self, reason: StopReason) -> Outcome {
        match reason {
            StopReason::Canceled => {
                self.out
                    .raw(&log::warning_line("script canceled externally (UI, API)"));
                Outcome::Failed {
                    reason: FailureReason::JobCanceled,
                    exit_code: None,
                    message: "canceled".to_owned(),
                }
            }
            StopReason::Aborted => Outcome::Aborted,
            StopReason::JobTimeout => {
                self.out.raw(&log::error_line(
                    "Job's script could not run to completion because the timeout was exceeded",
                ));
                Outcome::Failed {
                    reason: FailureReason::JobExecutionTimeout,
                    exit_code: None,
                    message: format!(
                        "execution took longer than {} seconds",
                        self.timeout.as_secs()
                    ),
                }
            }
            StopReason::StageTimeout => {
                self.out.raw(&log::error_line("Job's script could not run to completion because the script timeout was exceeded"));
                Outcome::Failed {
                    reason: FailureReason::JobExecutionTimeout,
                    exit_code: None,
                    message: "script timeout exceeded".to_owned(),
                }
            }
            StopReason::Interrupted => {
                self.out
                    .raw(&log::error_line("the runner was stopped while the job ran"));
                Outcome::Failed {
                    reason: FailureReason::RunnerInterrupted,
                    exit_code: None,
                    message: "runner interrupted".to_owned(),
                }
            }
        }
    }

    fn section_start(&mut self, name: &str, description: &str) {
        if self.sections {
            self.out.raw(&log::section_start(name, now_unix()));
        }
        self.out.raw(&log::section_header(description));
    }

    fn section_end(&mut self, name: &str) {
        self.out.flush();
        if self.sections {
            self.out.raw(&log::section_end(name, now_unix()));
        }
    }

    /// A future that resolves when the current stage must stop.
    fn stop(
        &self,
        phase: Phase,
        stage_deadline: Option<Instant>,
    ) -> impl std::future::Future<Output = StopReason> + use<> {
        let mut control = self.control.clone();
        let deadline = self.deadline;
        let interrupt = self.interrupt.clone();
        async move {
            let stage_timer = async {
                match stage_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::pin!(stage_timer);
            loop {
                let current = control.borrow_and_update().clone();
                match (current, phase) {
                    (RemoteControl::Abort, _) => return StopReason::Aborted,
                    (RemoteControl::Canceling, Phase::UserScript) => return StopReason::Canceled,
                    (RemoteControl::Canceling, Phase::Preparation) => return StopReason::Aborted,
                    _ => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return StopReason::JobTimeout,
                    _ = &mut stage_timer => return StopReason::StageTimeout,
                    _ = interrupt.cancelled() => return StopReason::Interrupted,
                    changed = control.changed() => if changed.is_err() { std::future::pending::<()>().await },
                }
            }
        }
    }

    /// Stops before a stage begins, if the job must stop already.
    fn stop_now(&mut self, phase: Phase) -> Option<Outcome> {
        let reason = match (self.control.borrow().clone(), phase) {
            (RemoteControl::Abort, _) | (RemoteControl::Canceling, Phase::Preparation) => {
                Some(StopReason::Aborted)
            }
            _ if self.interrupt.is_cancelled() => Some(StopReason::Interrupted),
            _ if Instant::now() >= self.deadline => Some(StopReason::JobTimeout),
            _ => None,
        };
        reason.map(|r| self.stopped(r))
    }

    async fn prepare(&mut self) -> Result<(), Outcome> {
        if let Some(outcome) = self.stop_now(Phase::Preparation) {
            return Err(outcome);
        }
        // "Preparing environment" was opened with the header (write_opening).
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        self.out.line(&format!("Running on {host}..."));
        let created = std::fs::create_dir_all(&self.spec.builds_dir)
            .and_then(|_| create_private_dir(&self.temp_dir));
        self.section_end("prepare_script");
        created.map_err(|e| Outcome::Failed {
            reason: FailureReason::RunnerSystemFailure,
            exit_code: None,
            message: format!("cannot prepare {}: {e}", self.temp_dir.display()),
        })?;
        self.write_file_variables()
    }

    /// File variables become files in the temp dir named by their key, and the variable
    /// their path. gitlab-runner joins the key into the path unchecked and then fails the
    /// script at `export` (`Variable` in `shells/bash.go`); a key that is not a shell name is
    /// refused here before it touches the filesystem.
    fn write_file_variables(&mut self) -> Result<(), Outcome> {
        use std::os::unix::fs::OpenOptionsExt;
        let files: Vec<(String, String)> = self
            .variables
            .effective()
            .into_iter()
            .filter(|v| v.file)
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        for (key, value) in files {
            if !crate::script::is_shell_name(&key) {
                let message = format!(
                    "the file variable {key:?} cannot be exported or written: a variable name is letters, digits and `_`, not starting with a digit; rename the variable"
                );
                self.out.raw(&log::error_line(&message));
                return Err(Outcome::Failed {
                    reason: FailureReason::ScriptFailure,
                    exit_code: None,
                    message,
                });
            }
            let path = self.temp_dir.join(&key);
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, value.as_bytes()));
            if let Err(e) = written {
                return Err(Outcome::Failed {
                    reason: FailureReason::RunnerSystemFailure,
                    exit_code: None,
                    message: format!("cannot write file variables: {}: {e}", path.display()),
                });
            }
            self.variables.push(Variable {
                file: false,
                ..Variable::runner(&key, path.display().to_string())
            });
        }
        Ok(())
    }

    fn exports(&self) -> Vec<(String, String)> {
        self.variables
            .effective()
            .into_iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect()
    }

    /// Runs `commands` as one script in the project directory (or `workdir`).
    async fn run_script(
        &mut self,
        stage: &str,
        commands: &[String],
        workdir: &Path,
        phase: Phase,
        stage_deadline: Option<Instant>,
    ) -> ProcessOutcome {
        let exports = self.exports();
        let text = render(&StageScript {
            shell: self.shell,
            exports: exports
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            workdir: &workdir.display().to_string(),
            commands: commands.iter().map(String::as_str).collect(),
            debug_trace: self.debug_trace,
        });
        let path = self.temp_dir.join(format!("{stage}.sh"));
        if let Err(e) = write_private(&path, &text) {
            return ProcessOutcome::NotStarted(format!("{}: {e}", path.display()));
        }
        let mut command = tokio::process::Command::new(self.shell.program());
        command.arg(&path).current_dir(&self.spec.builds_dir);
        let stop = self.stop(phase, stage_deadline);
        let outcome = process::run(command, &mut self.out.job, stop).await;
        let _ = std::fs::remove_file(&path);
        outcome
    }

    async fn script_stage(
        &mut self,
        stage: &str,
        description: &str,
        commands: &[String],
        phase: Phase,
        stage_deadline: Option<Instant>,
    ) -> ProcessOutcome {
        self.section_start(stage, description);
        let workdir = self.project_dir.clone();
        let outcome = self
            .run_script(stage, commands, &workdir, phase, stage_deadline)
            .await;
        self.section_end(stage);
        outcome
    }

    async fn get_sources(&mut self) -> Result<(), Outcome> {
        if let Some(outcome) = self.stop_now(Phase::Preparation) {
            return Err(outcome);
        }
        self.section_start("get_sources", "Getting source from Git repository");
        let result = self.fetch_sources().await;
        self.section_end("get_sources");
        result
    }

    async fn fetch_sources(&mut self) -> Result<(), Outcome> {
        let system = |message: String| Outcome::Failed {
            reason: FailureReason::RunnerSystemFailure,
            exit_code: None,
            message,
        };
        let job = &self.payload.job;
        let variables = self.variables.clone();
        let plan = sources::plan(
            &job.git_info,
            job.token.expose(),
            job.allow_git_fetch,
            |k| variables.get(k).map(str::to_owned),
            self.spec.clone_url.as_deref(),
        )
        .map_err(|e| Outcome::Failed {
            reason: FailureReason::RunnerConfigurationError,
            exit_code: None,
            message: e.to_string(),
        })?;
        let mut pre: Vec<String> = self.spec.pre_get_sources_script.iter().cloned().collect();
        let mut post: Vec<String> = self.spec.post_get_sources_script.iter().cloned().collect();
        for hook in &job.hooks {
            match hook.name.as_str() {
                "pre_get_sources_script" => pre.extend(hook.script.iter().cloned()),
                "post_get_sources_script" => post.extend(hook.script.iter().cloned()),
                _ => {}
            }
        }
        let builds_dir = self.spec.builds_dir.clone();
        if !pre.is_empty() {
            self.hook("pre_get_sources_script", &pre, &builds_dir)
                .await?;
        }
        match plan.strategy {
            Strategy::None => {
                std::fs::create_dir_all(&self.project_dir).map_err(|e| {
                    system(format!("cannot create {}: {e}", self.project_dir.display()))
                })?;
                self.out.line("Skipping Git repository setup");
            }
            Strategy::Empty => {
                let _ = std::fs::remove_dir_all(&self.project_dir);
                std::fs::create_dir_all(&self.project_dir).map_err(|e| {
                    system(format!("cannot create {}: {e}", self.project_dir.display()))
                })?;
                self.out
                    .line("Skipping Git repository setup and creating an empty build directory");
            }
            Strategy::Clone | Strategy::Fetch if which("git").is_none() => {
                if plan.strategy == Strategy::Clone {
                    let _ = std::fs::remove_dir_all(&self.project_dir);
                }
                self.builtin_fetch(plan).await?;
            }
            Strategy::Clone | Strategy::Fetch => {
                if plan.strategy == Strategy::Clone {
                    let _ = std::fs::remove_dir_all(&self.project_dir);
                }
                std::fs::create_dir_all(&self.project_dir).map_err(|e| {
                    system(format!("cannot create {}: {e}", self.project_dir.display()))
                })?;
                self.out.line(&if plan.depth > 0 {
                    format!("Fetching changes with git depth set to {}...", plan.depth)
                } else {
                    "Fetching changes...".to_owned()
                });
                let env = sources::git_environment(&plan, true);
                for (message, args) in sources::commands(&plan, &self.project_dir) {
                    if let Some(message) = message {
                        self.out.line(&message);
                    }
                    if args.is_empty() {
                        continue;
                    }
                    let mut command = tokio::process::Command::new("git");
                    command
                        .args(&args)
                        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .current_dir(&builds_dir);
                    let stop = self.stop(Phase::Preparation, None);
                    match process::run(command, &mut self.out.job, stop).await {
                        ProcessOutcome::Exited(0) => {}
                        ProcessOutcome::Exited(code) => {
                            return Err(Outcome::Failed {
                                reason: FailureReason::ScriptFailure,
                                exit_code: None,
                                message: format!(
                                    "git {} exited with code {code}",
                                    args.iter()
                                        .find(|a| !a.starts_with('-') && !a.contains('/'))
                                        .cloned()
                                        .unwrap_or_default()
                                ),
                            });
                        }
                        ProcessOutcome::Stopped(reason) => return Err(self.stopped(reason)),
                        ProcessOutcome::NotStarted(e) => {
                            return Err(system(format!("cannot run git: {e}")));
                        }
                    }
                }
            }
        }
        if !post.is_empty() {
            let project_dir = self.project_dir.clone();
            self.hook("post_get_sources_script", &post, &project_dir)
                .await?;
        }
        Ok(())
    }

    /// Sources with the git built into podrunner, for images without git.
    async fn builtin_fetch(&mut self, plan: sources::SourcesPlan) -> Result<(), Outcome> {
        if plan.submodules != "none" {
            return Err(Outcome::Failed {
                reason: FailureReason::RunnerConfigurationError,
                exit_code: None,
                message: format!(
                    "GIT_SUBMODULE_STRATEGY={} needs the git CLI, which this image does not have: install git in the image or set GIT_SUBMODULE_STRATEGY=none",
                    plan.submodules
                ),
            });
        }
        self.out.line(&if plan.depth > 0 {
            format!(
                "Fetching changes with git depth set to {} (built-in git)...",
                plan.depth
            )
        } else {
            "Fetching changes (built-in git)...".to_owned()
        });
        let project_dir = self.project_dir.clone();
        let tls = podrunner_gitlab::client::tls_config(&ClientOptions {
            url: self.spec.gitlab.url.clone(),
            tls_ca_file: self.spec.gitlab.tls_ca_file.clone(),
            tls_cert_file: self.spec.gitlab.tls_cert_file.clone(),
            tls_key_file: self.spec.gitlab.tls_key_file.clone(),
            podrunner_version: String::new(),
        })
        .map_err(|e| Outcome::Failed {
            reason: FailureReason::RunnerConfigurationError,
            exit_code: None,
            message: e.to_string(),
        })?;
        let work = tokio::task::spawn_blocking(move || {
            let mut lines: Vec<String> = Vec::new();
            let result = crate::builtin_git::fetch_and_checkout(
                &plan,
                &project_dir,
                tls,
                &mut |line: &str| lines.push(line.to_owned()),
            );
            (lines, result)
        });
        let stop = self.stop(Phase::Preparation, None);
        let (lines, result) = tokio::select! {
            done = work => done.unwrap_or_else(|e| (Vec::new(), Err(format!("the built-in git stopped: {e}")))),
            reason = stop => return Err(self.stopped(reason)),
        };
        for line in lines {
            self.out.line(&line);
        }
        result.map_err(|message| {
            self.out.raw(&log::error_line(&message));
            Outcome::Failed {
                reason: FailureReason::ScriptFailure,
                exit_code: None,
                message,
            }
        })
    }

    async fn hook(
        &mut self,
        stage: &str,
        commands: &[String],
        workdir: &Path,
    ) -> Result<(), Outcome> {
        match self
            .run_script(stage, commands, workdir, Phase::Preparation, None)
            .await
        {
            ProcessOutcome::Exited(0) => Ok(()),
            ProcessOutcome::Exited(code) => Err(Outcome::Failed {
                reason: FailureReason::ScriptFailure,
                exit_code: Some(code),
                message: format!("{stage} exited with code {code}"),
            }),
            ProcessOutcome::Stopped(reason) => Err(self.stopped(reason)),
            ProcessOutcome::NotStarted(e) => Err(Outcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                exit_code: None,
                message: format!("cannot run {stage}: {e}"),
            }),
        }
    }

    async fn after_script(&mut self, outcome: &Outcome) {
        let Some(step) = self
            .payload
            .job
            .steps
            .iter()
            .find(|s| s.name == "after_script")
            .cloned()
        else {
            return;
        };
        if step.script.iter().all(|l| l.trim().is_empty()) {
            return;
        }
        let status = match outcome {
            Outcome::Success => "success",
            Outcome::Failed {
                reason: FailureReason::JobCanceled,
                ..
            } => "canceled",
            _ => "failed",
        };
        self.variables.set("CI_JOB_STATUS", status);
        let timeout = self
            .variables
            .get("RUNNER_AFTER_SCRIPT_TIMEOUT")
            .and_then(go_duration)
            .unwrap_or(DEFAULT_AFTER_SCRIPT_TIMEOUT);
        self.section_start("after_script", "Running after_script");
        self.out.line("Running after script...");
        let workdir = self.project_dir.clone();
        let result = self
            .run_script(
                "after_script",
                &step.script,
                &workdir,
                Phase::AfterScript,
                Some(deadline_after(timeout)),
            )
            .await;
        match result {
            ProcessOutcome::Exited(0) => {}
            ProcessOutcome::Exited(code) => self.out.raw(&log::warning_line(&format!("after_script failed, but job will continue unaffected: exit code {code}"))),
            ProcessOutcome::Stopped(StopReason::StageTimeout) => self.out.raw(&log::warning_line("after_script failed, but job will continue unaffected: the after_script timeout was exceeded")),
            ProcessOutcome::Stopped(_) => self.out.raw(&log::warning_line("after_script was stopped")),
            ProcessOutcome::NotStarted(e) => self.out.raw(&log::warning_line(&format!("after_script could not start: {e}"))),
        }
        self.section_end("after_script");
    }

    async fn finish(&mut self, outcome: Outcome) -> Outcome {
        self.section_start(
            "cleanup_file_variables",
            "Cleaning up project directory and file based variables",
        );
        let _ = std::fs::remove_dir_all(&self.temp_dir);
        self.section_end("cleanup_file_variables");
        if let Some(fargate) = &self.fargate {
            let seconds = self.started.elapsed().as_secs_f64().ceil();
            self.out.line(&format!(
                "Fargate: {} at ${:.6}/h, {seconds} s since the job started: about ${:.6} (billed per second, at least one minute, until the pod is gone)",
                fargate.capacity,
                fargate.usd_per_hour,
                podrunner_config::fargate::billed_cost(fargate.usd_per_hour, seconds)
            ));
        }
        match &outcome {
            Outcome::Success => {
                self.out
                    .raw(&format!("{}Job succeeded{}\n", log::BOLD_GREEN, log::RESET))
            }
            Outcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                message,
                ..
            } => self.out.raw(&log::error_line(&format!(
                "Job failed (system failure): {message}"
            ))),
            Outcome::Failed { message, .. } => self
                .out
                .raw(&log::error_line(&format!("Job failed: {message}"))),
            Outcome::Aborted => self.out.raw(&log::error_line("Job failed: canceled")),
        }
        outcome
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())
}
