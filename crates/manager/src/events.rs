//! Every observable event of the manager, emitted from one place so that logs (and later
//! metrics) never drift apart. Lines go to standard error as `time level message key=value`.

use std::time::{Duration, SystemTime};

/// Something the manager did.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The job loop started.
    Started {
        /// Request loops started.
        runners: usize,
        /// `concurrent`.
        concurrent: usize,
    },
    /// A runner entry cannot be used (bad URL, unreadable TLS files).
    RunnerUnusable {
        /// Name or short token.
        runner: String,
        /// Why.
        error: String,
    },
    /// A job request failed.
    RequestFailed {
        /// Name or short token.
        runner: String,
        /// Why.
        error: String,
    },
    /// Too many unhealthy answers: polling pauses.
    Unhealthy {
        /// Name or short token.
        runner: String,
        /// For how long.
        pause: Duration,
    },
    /// GitLab refused the acknowledgement of a job; it is not run.
    AckRefused {
        /// Job ID.
        job_id: i64,
        /// What GitLab answered.
        outcome: String,
    },
    /// A job started.
    JobStarted {
        /// Runner name or short token.
        runner: String,
        /// Job ID.
        job_id: i64,
        /// Executor.
        executor: &'static str,
    },
    /// A job ended.
    JobFinished {
        /// Runner name or short token.
        runner: String,
        /// Why it failed, when it did.
        failure_reason: Option<String>,
        /// Job ID.
        job_id: i64,
        /// Final state.
        state: String,
        /// GitLab has the final state.
        delivered: bool,
    },
    /// The Kubernetes executor created a job's pod.
    PodCreated {
        /// Job ID.
        job_id: i64,
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
    /// The Kubernetes executor took over a job pod an earlier run of this manager created.
    PodAdopted {
        /// Job ID.
        job_id: i64,
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
    /// What a job's Fargate pod cost: the size Fargate provisioned and the billed time.
    FargateCost {
        /// Job ID.
        job_id: i64,
        /// `CapacityProvisioned`, e.g. `2vCPU 9GB`.
        capacity: String,
        /// Seconds from provisioning to the end of the job.
        seconds: f64,
        /// USD per hour of that size (configured prices).
        usd_per_hour: f64,
        /// USD for this job (per second, at least one minute).
        usd: f64,
    },
    /// The manager sent a job's final state itself because the agent could not.
    JobFailedByManager {
        /// Job ID.
        job_id: i64,
        /// Why.
        reason: String,
    },
    /// GitLab answered an API call (counted, not logged).
    ApiAnswer {
        /// Runner name or short token.
        runner: String,
        /// `request_job`, `update_job`.
        endpoint: &'static str,
        /// The HTTP status, or `error` for a transport failure.
        status: String,
    },
    /// The manager's settings, for the gauges (counted, not logged).
    Settings {
        /// `concurrent`.
        concurrent: i64,
        /// Each runner's `limit`.
        limits: Vec<(String, i64)>,
        /// The system ID.
        system_id: String,
    },
    /// Shutdown began.
    ShuttingDown {
        /// `graceful` or `forceful`.
        mode: &'static str,
    },
    /// The job loop ended.
    Stopped {
        /// Every job ended before the deadline.
        all_jobs_finished: bool,
    },
    /// A Kubernetes API call failed in a way worth another try.
    KubernetesRetry {
        /// What the call does (`create Pod`).
        call: String,
        /// The failed try, from 1.
        attempt: u32,
        /// The error, with its causes.
        error: String,
        /// The pause before the next try.
        retry_in: Duration,
    },
    /// Something went wrong on the Kubernetes side that the executor works around.
    KubernetesProblem {
        /// What the executor was doing.
        doing: String,
        /// The error.
        error: String,
    },
    /// A pod or Secret of this manager that no job follows was deleted.
    StrayDeleted {
        /// `Pod` or `Secret`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A call of the sweep of stray pods and Secrets failed: what it should have cleaned up
    /// stays until the next sweep (and keeps billing, on Fargate).
    SweepFailed {
        /// The namespace swept.
        namespace: String,
        /// The call that failed (`list Secrets`, `delete Pod`, ...).
        call: &'static str,
        /// The API's answer.
        error: String,
    },
}

impl Event {
    /// Counts the event in the metrics and logs it.
    pub fn emit(&self) {
        self.count();
        let (level, message) = match self {
            Event::ApiAnswer { .. } | Event::Settings { .. } => return,
            Event::Started {
                runners,
                concurrent,
            } => (
                "info",
                format!("Starting job loop request_loops={runners} concurrent={concurrent}"),
            ),
            Event::RunnerUnusable { runner, error } => (
                "error",
                format!("Runner cannot be used runner={runner} error={error:?}"),
            ),
            Event::RequestFailed { runner, error } => (
                "warning",
                format!("Job request failed runner={runner} error={error:?}"),
            ),
            Event::Unhealthy { runner, pause } => (
                "warning",
                format!(
                    "Runner is unhealthy and will pause runner={runner} pause={}s",
                    pause.as_secs()
                ),
            ),
            Event::AckRefused { job_id, outcome } => (
                "warning",
                format!(
                    "GitLab refused the job acknowledgement; not running it job={job_id} outcome={outcome}"
                ),
            ),
            Event::JobStarted {
                job_id, executor, ..
            } => (
                "info",
                format!("Job started job={job_id} executor={executor}"),
            ),
            Event::JobFinished {
                job_id,
                state,
                delivered,
                ..
            } => (
                "info",
                format!(
                    "Job finished job={job_id} state={state} final_update_delivered={delivered}"
                ),
            ),
            Event::PodCreated {
                job_id,
                namespace,
                pod,
            } => (
                "info",
                format!("Pod created job={job_id} pod={namespace}/{pod}"),
            ),
            Event::PodAdopted {
                job_id,
                namespace,
                pod,
            } => (
                "info",
                format!("Pod adopted job={job_id} pod={namespace}/{pod}"),
            ),
            Event::FargateCost {
                job_id,
                capacity,
                seconds,
                usd_per_hour,
                usd,
            } => (
                "info",
                format!(
                    "Fargate cost job={job_id} capacity={capacity:?} seconds={seconds:.1} usd_per_hour={usd_per_hour:.6} usd={usd:.6}"
                ),
            ),
            Event::JobFailedByManager { job_id, reason } => (
                "warning",
                format!("Job failed by the manager job={job_id} reason={reason:?}"),
            ),
            Event::ShuttingDown { mode } => ("info", format!("Shutting down mode={mode}")),
            Event::KubernetesRetry {
                call,
                attempt,
                error,
                retry_in,
            } => (
                "warning",
                format!(
                    "Kubernetes API call failed; retrying call={call:?} attempt={attempt} retry_in={}ms error={error:?}",
                    retry_in.as_millis()
                ),
            ),
            Event::KubernetesProblem { doing, error } => (
                "warning",
                format!("Kubernetes problem doing={doing:?} error={error:?}"),
            ),
            Event::StrayDeleted {
                kind,
                namespace,
                name,
            } => (
                "warning",
                format!("Deleted a stray {kind} no job follows name={namespace}/{name}"),
            ),
            Event::SweepFailed {
                namespace,
                call,
                error,
            } => (
                "error",
                format!(
                    "Sweep of stray pods and Secrets failed namespace={namespace} call={call:?} error={error:?}"
                ),
            ),
            Event::Stopped { all_jobs_finished } => (
                "info",
                format!("Job loop stopped all_jobs_finished={all_jobs_finished}"),
            ),
        };
        let mut time = Vec::new();
        podrunner_gitlab::log::format_rfc3339_micros(SystemTime::now(), &mut time);
        eprintln!("{} {level} {message}", String::from_utf8_lossy(&time));
    }
}

impl Event {
    pub(crate) fn count(&self) {
        use std::sync::atomic::Ordering;
        let m = crate::metrics::metrics();
        match self {
            Event::Started { .. } => m.ready.store(true, Ordering::Relaxed),
            Event::Settings {
                concurrent,
                limits,
                system_id,
            } => {
                m.concurrent.store(*concurrent, Ordering::Relaxed);
                *m.system_id.lock().unwrap_or_else(|p| p.into_inner()) = system_id.clone();
                let mut map = m.limits.lock().unwrap_or_else(|p| p.into_inner());
                for (runner, limit) in limits {
                    map.insert(runner.clone(), *limit);
                }
            }
            Event::JobStarted { runner, .. } => {
                *m.jobs_running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(runner.clone())
                    .or_default() += 1;
                *m.jobs_total
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(runner.clone())
                    .or_default() += 1;
            }
            Event::JobFinished {
                runner,
                failure_reason,
                state,
                ..
            } => {
                *m.jobs_running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(runner.clone())
                    .or_default() -= 1;
                if state != "success" {
                    let reason = failure_reason
                        .clone()
                        .unwrap_or_else(|| "unknown_failure".to_owned());
                    *m.failed_total
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry((runner.clone(), reason))
                        .or_default() += 1;
                }
            }
            Event::ApiAnswer {
                runner,
                endpoint,
                status,
            } => {
                *m.api_statuses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((runner.clone(), (*endpoint).to_owned(), status.clone()))
                    .or_default() += 1;
            }
            Event::Stopped { .. } => m.ready.store(false, Ordering::Relaxed),
            Event::FargateCost { seconds, usd, .. } => {
                let mut fargate = m.fargate.lock().unwrap_or_else(|p| p.into_inner());
                fargate.jobs += 1;
                fargate.seconds += seconds;
                fargate.usd += usd;
            }
            Event::KubernetesRetry { call, .. } => {
                *m.kubernetes_retries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(call.clone())
                    .or_default() += 1;
            }
            Event::SweepFailed { call, .. } => {
                *m.sweep_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((*call).to_owned())
                    .or_default() += 1;
            }
            _ => {}
        }
    }
}
