//! What one running job is (its spec, payload, variables, directories, log writers and
//! clocks), and how its log opens: the context every stage of [`super`] takes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION;
use podrunner_gitlab::log::{self, LogSettings, SystemClock, TraceWriter};
use podrunner_gitlab::{GitlabClient, JobPayload, RemoteControl};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::script::ShellKind;
use crate::spec::{AgentSpec, FargateBilling, FargateCost};
use crate::variables::{Variable, Variables};

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
        match note.text() {
            (warning, true) => write_raw(out, &log::warning_line(&warning)),
            (line, false) => write_line(out, &line),
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

/// The runner's own lines, and the job's output (stdout and stderr as one stream, see
/// [`crate::process`]).
pub(super) struct Writers {
    pub(super) runner: TraceWriter,
    pub(super) job: TraceWriter,
}

impl Writers {
    pub(super) fn line(&mut self, text: &str) {
        write_line(&mut self.runner, text);
    }

    pub(super) fn raw(&mut self, text: &str) {
        write_raw(&mut self.runner, text);
    }

    pub(super) fn flush(&mut self) {
        let _ = self.job.flush_all();
        let _ = self.runner.flush_all();
    }
}

pub(super) struct Job {
    pub(super) client: GitlabClient,
    pub(super) spec: AgentSpec,
    pub(super) variables: Variables,
    pub(super) project_dir: PathBuf,
    pub(super) temp_dir: PathBuf,
    pub(super) shell: ShellKind,
    pub(super) sections: bool,
    pub(super) debug_trace: bool,
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
    pub(super) control: watch::Receiver<RemoteControl>,
    pub(super) interrupt: CancellationToken,
    pub(super) out: Writers,
    /// The manager already wrote the header and opened "Preparing environment".
    pub(super) opened: bool,
    /// The pod's Fargate size and price (or why the hand-over of it is not valid), for the
    /// cost line at the end.
    pub(super) fargate: Option<Result<FargateBilling, String>>,
    /// That cost, once the log says it (for the termination report).
    pub(super) fargate_cost: Option<FargateCost>,
    /// When the agent started.
    pub(super) started: Instant,
}

pub(super) fn default_flag(name: &str) -> bool {
    matches!(
        name,
        "FF_TIMESTAMPS" | "FF_MASK_ALL_DEFAULT_TOKENS" | "FF_USE_POD_ACTIVE_DEADLINE_SECONDS"
    )
}

/// `<builds_dir>/<project full path>`, or the spec's choice, or a valid `GIT_CLONE_PATH`.
pub(super) fn project_dir(spec: &AgentSpec, payload: &JobPayload) -> PathBuf {
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

pub(super) fn choose_shell(configured: Option<ShellKind>) -> ShellKind {
    configured.unwrap_or_else(|| {
        let has_bash = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join("bash").is_file())
        });
        if has_bash {
            ShellKind::Bash
        } else {
            ShellKind::Sh
        }
    })
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
    if spec.executor == podrunner_config::Executor::Shell {
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
pub(super) fn go_duration(text: &str) -> Option<Duration> {
    text.trim()
        .parse::<podrunner_config::GoDuration>()
        .ok()
        .map(|d| d.get())
}

/// Thirty years: the deadline of a timeout too large to add to the clock (as tokio's own
/// far future).
pub(super) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `timeout` from now; a timeout past what the clock can hold saturates to
/// [`FAR_FUTURE`] instead of overflowing.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout.min(FAR_FUTURE)).unwrap_or(now)
}

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Job {
    pub(super) fn section_start(&mut self, name: &str, description: &str) {
        if self.sections {
            self.out.raw(&log::section_start(name, now_unix()));
        }
        self.out.raw(&log::section_header(description));
    }

    pub(super) fn section_end(&mut self, name: &str) {
        self.out.flush();
        if self.sections {
            self.out.raw(&log::section_end(name, now_unix()));
        }
    }

    pub(super) fn exports(&self) -> Vec<(String, String)> {
        self.variables
            .effective()
            .into_iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect()
    }
}
