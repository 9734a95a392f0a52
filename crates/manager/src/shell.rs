//! The shell executor: each job runs as `podrunner agent --spec FILE`, a child process of the
//! manager, on this machine.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use podrunner_agent::{AgentSpec, TerminationReport};
use podrunner_gitlab::RunnerInfo;
use podrunner_gitlab::api::FailureReason;
use rustix::process::{Pid, Signal, kill_process};
use tokio_util::sync::CancellationToken;

use crate::events::Event;
use crate::{AcceptedJob, Executor, JobEnd, agent_spec, fail_job, short_token};

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
            podrunner_config::Executor::Shell,
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
            .env_remove(podrunner_agent::TRACE_PRELUDE_FILE_ENV)
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
            Some(report) if report.final_update_delivered || report.aborted => {
                JobEnd::from_report(&report)
            }
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
            &job.contact(),
            &self.info,
            &self.podrunner_version,
            reason,
            trace_offset,
        )
        .await;
        JobEnd::failed(FailureReason::RunnerSystemFailure, delivered)
    }
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
