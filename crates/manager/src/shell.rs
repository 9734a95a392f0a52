//! The shell executor: each job runs as `podrunner agent --spec FILE`, a child process of the
//! manager, on this machine.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use podrunner_agent::{AgentSpec, GitlabConnection, TerminationReport};
use podrunner_gitlab::api::{FailureReason, JobState, UpdateJobRequest};
use podrunner_gitlab::client::PatchOutcome;
use podrunner_gitlab::{ClientOptions, GitlabClient, RunnerInfo, UpdateOutcome};
use rustix::process::{Pid, Signal, kill_process};
use tokio_util::sync::CancellationToken;

use crate::events::Event;
use crate::{AcceptedJob, Executor, JobEnd, short_token};

/// After asking an agent to stop, how long it gets to report before it is killed.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(25);

/// Runs jobs as child processes.
pub struct ShellExecutor {
    /// The podrunner binary to start as the agent.
    pub agent_program: PathBuf,
    /// Where specs and reports are kept while jobs run (private to the manager).
    pub work_dir: PathBuf,
    /// podrunner's version.
    pub podrunner_version: String,
    /// What the agent reports to GitLab.
    pub info: RunnerInfo,
}

impl ShellExecutor {
    async fn spec(&self, job: &AcceptedJob, report: PathBuf) -> AgentSpec {
        let runner = &job.runner;
        let builds_dir = std::path::absolute(runner.builds_dir())
            .unwrap_or_else(|_| PathBuf::from(runner.builds_dir()));
        let cache_dir = std::path::absolute(runner.cache_dir())
            .unwrap_or_else(|_| PathBuf::from(runner.cache_dir()));
        let short = short_token(runner.token.as_deref().unwrap_or(""));
        // gitlab-runner's shell layout: <builds_dir>/<short token>/<concurrent id>/<project path>.
        let project = job
            .payload
            .job
            .job_info
            .project_full_path
            .trim_matches('/')
            .to_owned();
        let project = if project.is_empty() {
            format!("project-{}", job.payload.job.job_info.project_id)
        } else {
            project
        };
        let project_dir = builds_dir
            .join(&short)
            .join(job.concurrent_id.to_string())
            .join(project);
        agent_spec(
            job,
            "shell",
            builds_dir,
            cache_dir,
            Some(project_dir),
            report,
        )
        .await
    }

    async fn run_job(&self, job: AcceptedJob, abort: CancellationToken) -> JobEnd {
        let job_id = job.payload.job.id;
        let dir = match tempfile::Builder::new()
            .prefix(&format!("job-{job_id}-"))
            .tempdir_in(&self.work_dir)
        {
            Ok(dir) => dir,
            Err(e) => {
                return self
                    .fail(
                        &job,
                        &format!(
                            "cannot create a work directory in {}: {e}",
                            self.work_dir.display()
                        ),
                        Some(0),
                    )
                    .await;
            }
        };
        let report_path = dir.path().join("report.json");
        let spec_path = dir.path().join("spec.json");
        let spec = self.spec(&job, report_path.clone()).await;
        if let Err(e) = write_private(&spec_path, &serde_json::to_vec(&spec).unwrap_or_default()) {
            return self
                .fail(&job, &format!("cannot write the job spec: {e}"), Some(0))
                .await;
        }
        let mut child = match tokio::process::Command::new(&self.agent_program)
            .arg("agent")
            .arg("--spec")
            .arg(&spec_path)
            // What job pods hand their agent does not apply here.
            .env_remove(podrunner_agent::TRACE_PRELUDE_ENV)
            .env_remove(podrunner_agent::FARGATE_CAPACITY_ENV)
            .env_remove(podrunner_agent::FARGATE_PRICE_ENV)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                return self
                    .fail(
                        &job,
                        &format!(
                            "cannot start the agent {}: {e}",
                            self.agent_program.display()
                        ),
                        Some(0),
                    )
                    .await;
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            _ = abort.cancelled() => {
                if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
                    let _ = kill_process(pid, Signal::TERM);
                }
                match tokio::time::timeout(AGENT_STOP_GRACE, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                }
            }
        };
        let report: Option<TerminationReport> = std::fs::read_to_string(&report_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        match report {
            Some(report) if report.final_update_delivered || report.aborted => JobEnd {
                final_update_delivered: report.final_update_delivered,
                state: report.state,
                failure_reason: report.failure_reason,
            },
            other => {
                let why = match &status {
                    Ok(status) => format!(
                        "the agent ended ({status}) without reporting the job's final state"
                    ),
                    Err(e) => format!("the agent could not be waited for: {e}"),
                };
                self.fail(&job, &why, other.map(|r| r.trace_bytes_sent))
                    .await
            }
        }
    }

    /// Sends the final state for a job whose agent could not: appends the reason to the trace
    /// and reports `runner_system_failure`.
    async fn fail(&self, job: &AcceptedJob, reason: &str, trace_offset: Option<u64>) -> JobEnd {
        Event::JobFailedByManager {
            job_id: job.payload.job.id,
            reason: reason.to_owned(),
        }
        .emit();
        let delivered = fail_job(
            job,
            &self.info,
            &self.podrunner_version,
            reason,
            trace_offset,
        )
        .await;
        JobEnd {
            final_update_delivered: delivered,
            state: "failed".to_owned(),
            failure_reason: Some("runner_system_failure".to_owned()),
        }
    }
}

/// The agent's spec for `job`: where GitLab is, the payload, the directories and the runner's
/// settings that shape a job. The executor decides the layout.
pub async fn agent_spec(
    job: &AcceptedJob,
    executor: &str,
    builds_dir: PathBuf,
    cache_dir: PathBuf,
    project_dir: Option<PathBuf>,
    termination_report: PathBuf,
) -> AgentSpec {
    let runner = &job.runner;
    let mut spec = AgentSpec {
        gitlab: GitlabConnection {
            url: runner.url.clone().unwrap_or_default(),
            tls_ca_file: runner.tls_ca_file.clone().map(PathBuf::from),
            tls_cert_file: runner.tls_cert_file.clone().map(PathBuf::from),
            tls_key_file: runner.tls_key_file.clone().map(PathBuf::from),
        },
        job: job.payload.raw.clone(),
        trace_start_offset: 0,
        project_dir,
        temp_dir: None,
        builds_dir,
        cache_dir,
        output_limit_kib: if runner.output_limit > 0 {
            runner.output_limit as u64
        } else {
            4096
        },
        feature_flags: runner.feature_flags.clone(),
        shell: runner.shell.map(|s| s.as_str().to_owned()),
        pre_get_sources_script: runner.pre_get_sources_script.clone(),
        post_get_sources_script: runner.post_get_sources_script.clone(),
        pre_build_script: runner.pre_build_script.clone(),
        post_build_script: runner.post_build_script.clone(),
        environment: runner.environment.clone(),
        clone_url: runner.clone_url.clone(),
        custom_build_dir_enabled: runner.custom_build_dir_enabled(),
        debug_trace_disabled: runner.debug_trace_disabled,
        final_update_retry_limit: runner.job_status_final_update_retry_limit.clamp(1, 100) as u32,
        executor: executor.to_owned(),
        runner_name: runner.name.clone().unwrap_or_default(),
        runner_short_token: short_token(runner.token.as_deref().unwrap_or("")),
        system_id: job.system_id.clone(),
        termination_report: Some(termination_report),
        concurrent_id: job.concurrent_id,
        notes: Vec::new(),
        caches: Vec::new(),
        cache_settings: Default::default(),
    };
    // The caches: keys resolved and, with a remote store, URLs signed (podrunner-cache).
    (spec.caches, spec.cache_settings) =
        podrunner_cache::resolve(runner, &spec, &job.payload).await;
    spec
}

impl Executor for ShellExecutor {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn run<'a>(
        &'a self,
        job: AcceptedJob,
        abort: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = JobEnd> + Send + 'a>> {
        Box::pin(self.run_job(job, abort))
    }
}

/// A GitLab client for one job's requests, with the runner's TLS settings.
pub fn job_client(job: &AcceptedJob, version: &str) -> Option<GitlabClient> {
    GitlabClient::new(&ClientOptions {
        url: job.runner.url.clone().unwrap_or_default(),
        tls_ca_file: job.runner.tls_ca_file.clone().map(PathBuf::from),
        tls_cert_file: job.runner.tls_cert_file.clone().map(PathBuf::from),
        tls_key_file: job.runner.tls_key_file.clone().map(PathBuf::from),
        podrunner_version: version.to_owned(),
    })
    .ok()
}

/// Fails a job whose agent could not report: appends the reason to the trace and sends
/// `runner_system_failure`. `trace_end`: how many trace bytes GitLab has, when known. When it
/// is not (the agent died without a report), the first patch starts past any log the job
/// could have written (its output limit plus room for the limit message and the manager's
/// prelude) and GitLab's 416 tells where the log ends (GitLab appends only at the exact end).
/// A 200 to the final update is delivery, whatever its `Job-Status`.
pub async fn fail_job(
    job: &AcceptedJob,
    info: &RunnerInfo,
    version: &str,
    reason: &str,
    trace_end: Option<u64>,
) -> bool {
    fail_job_as(
        job,
        info,
        version,
        reason,
        trace_end,
        FailureReason::RunnerSystemFailure,
    )
    .await
}

/// [`fail_job`] with `failure` as the failure reason (as GitLab supports it).
pub async fn fail_job_as(
    job: &AcceptedJob,
    info: &RunnerInfo,
    version: &str,
    reason: &str,
    trace_end: Option<u64>,
    failure: FailureReason,
) -> bool {
    let Some(client) = job_client(job, version) else {
        return false;
    };
    let limit_kib = if job.runner.output_limit > 0 {
        job.runner.output_limit as u64
    } else {
        podrunner_config::DEFAULT_OUTPUT_LIMIT_KIB as u64
    };
    let mut offset = trace_end.unwrap_or(limit_kib * 1024 + 128 * 1024);
    let payload = &job.payload.job;
    let message = format!(
        "\n{}",
        podrunner_gitlab::log::error_line(&format!("Job failed (system failure): {reason}"))
    );
    for _ in 0..4 {
        match client
            .patch_trace(
                payload.id,
                &payload.token,
                offset,
                message.as_bytes(),
                false,
            )
            .await
            .0
        {
            // The line itself, its answer lost (the job's writer is gone: only this one is left).
            PatchOutcome::RangeMismatch { offset: have }
                if have == offset + message.len() as u64 =>
            {
                break;
            }
            PatchOutcome::RangeMismatch { offset: have } => offset = have,
            _ => break,
        }
    }
    let request = UpdateJobRequest {
        info: info.clone(),
        token: payload.token.clone(),
        state: JobState::Failed,
        failure_reason: Some(
            failure
                .for_gitlab(&payload.features.failure_reasons)
                .to_owned(),
        ),
        checksum: None,
        output: None,
        exit_code: None,
    };
    for attempt in 0..5u32 {
        let (outcome, signals) = client.update_job(payload.id, &request).await;
        if final_update_delivered(&outcome, signals.http_status) {
            return true;
        }
        match outcome {
            UpdateOutcome::Abort => return false,
            _ => tokio::time::sleep(Duration::from_secs(1 << attempt)).await,
        }
    }
    false
}

/// Whether GitLab applied a final update: a 200, even when its `Job-Status` is the `failed`
/// the update itself just set (`lib/api/ci/runner.rb` puts the job's new status on the
/// answer; gitlab-runner reads that as "abort", which for a final update means done).
fn final_update_delivered(outcome: &UpdateOutcome, http_status: Option<u16>) -> bool {
    match outcome {
        UpdateOutcome::Succeeded => true,
        UpdateOutcome::Abort => http_status == Some(200),
        _ => false,
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_200_is_delivery_even_with_job_status_failed() {
        assert!(final_update_delivered(&UpdateOutcome::Succeeded, Some(200)));
        assert!(final_update_delivered(&UpdateOutcome::Abort, Some(200)));
        assert!(!final_update_delivered(&UpdateOutcome::Abort, Some(403)));
        assert!(!final_update_delivered(&UpdateOutcome::Accepted, Some(202)));
    }
}
