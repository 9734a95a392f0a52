//! One job from its spec to its final state, in gitlab-runner's stage order.

use std::path::Path;
use std::time::Duration;

use podrunner_gitlab::api::{FailureReason, JobState};
use podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION;
use podrunner_gitlab::log::{Stream, Trace};
use podrunner_gitlab::{
    ClientOptions, FinalState, GitlabClient, RunnerInfo, TraceTarget, TraceUploader,
    UploaderTimings,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handover::Handover;
use crate::process::ProcessOutcome;
use crate::spec::{AgentSpec, TerminationReport};

mod artifacts;
mod cache;
pub(crate) mod context;
mod get_sources;
mod outcome;
mod prepare;
mod script;
mod stop;

pub use crate::error::AgentError;
use context::{
    Job, Writers, build_variables, choose_shell, deadline_after, go_duration, job_dirs,
    log_settings, write_opening,
};
use outcome::{Outcome, write_report};
use stop::Phase;

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
    let bytes = std::fs::read(path).map_err(|source| AgentError::ReadSpec {
        path: path.to_owned(),
        source,
    })?;
    let spec = AgentSpec::from_json(&bytes).map_err(|source| AgentError::BadSpec {
        path: path.to_owned(),
        source,
    })?;
    run(spec, Handover::from_env()?, interrupt).await
}

/// Runs a job to its final state and reports how it went.
pub async fn run(
    spec: AgentSpec,
    handover: Handover,
    interrupt: CancellationToken,
) -> Result<TerminationReport, AgentError> {
    let started = Instant::now();
    let prelude = handover.trace_prelude.clone();
    let client = GitlabClient::new(&ClientOptions {
        url: spec.gitlab.url.clone(),
        tls_ca_file: spec.gitlab.tls_ca_file.clone(),
        tls_cert_file: spec.gitlab.tls_cert_file.clone(),
        tls_key_file: spec.gitlab.tls_key_file.clone(),
        podrunner_version: env!("CARGO_PKG_VERSION").to_owned(),
    })?;
    let job = &spec.job.job;
    let (project_dir, temp_dir) = job_dirs(&spec, &spec.job);
    let variables = build_variables(&spec, &spec.job, &project_dir, &temp_dir);
    let trace = Trace::new(&log_settings(&spec, &spec.job, &variables));
    if !prelude.is_empty() {
        // The manager's bytes are already masked and stamped; they count like any others.
        let _ = trace.sink().write(&prelude);
    }
    let info = RunnerInfo::new(
        COMPATIBLE_RUNNER_VERSION,
        spec.executor.as_str(),
        agent_features(),
    );
    let debug_trace =
        variables.flag("CI_DEBUG_TRACE").unwrap_or(false) && !spec.debug_trace_disabled;
    let target = TraceTarget {
        job_id: job.id,
        token: job.token.clone(),
        debug_trace,
        info,
        // Where the agent starts is the prelude's end (the hand-over decides it, see
        // `podrunner_gitlab::handover`); without a prelude, the log is the agent's alone.
        start_offset: 0,
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
    let timeout = Duration::from_secs(spec.job.timeout_secs());
    let mut run = Job {
        client,
        shell: choose_shell(spec.shell),
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
        spec,
        opened: !prelude.is_empty(),
        fargate: handover.fargate,
        fargate_cost: None,
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
        state: final_state.state,
        failure_reason: final_state.failure_reason,
        exit_code: final_state.exit_code,
        trace_bytes_sent: delivered.trace_bytes_sent,
        aborted: delivered.aborted || outcome == Outcome::Aborted,
        fargate: run.fargate_cost.take(),
    };
    write_report(run.spec.termination_report.as_deref(), &report);
    Ok(report)
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
            .spec
            .job
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
}
