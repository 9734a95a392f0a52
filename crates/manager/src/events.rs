//! Every observable event of the manager, emitted from one place so that its log record and
//! its metrics never drift apart.

use std::time::Duration;

use podrunner_gitlab::api::{FailureReason, JobState};

use tracing::Level;

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
        /// Seconds the job waited in GitLab's queue (`job_info.time_in_queue_seconds`);
        /// `None` for a job adopted from an earlier run.
        queued_seconds: Option<f64>,
    },
    /// A job ended.
    JobFinished {
        /// Runner name or short token.
        runner: String,
        /// Why it failed, when it did.
        failure_reason: Option<FailureReason>,
        /// Job ID.
        job_id: i64,
        /// Final state.
        state: crate::FinalState,
        /// GitLab has the final state.
        delivered: bool,
        /// From start (or adoption) to end.
        duration: Duration,
    },
    /// A request loop asks GitLab for a job (counted, not logged).
    JobRequestStarted {
        /// Runner name or short token.
        runner: String,
    },
    /// GitLab answered that request, or it failed (counted, not logged).
    JobRequestEnded {
        /// Runner name or short token.
        runner: String,
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
    /// A job's pod runs: its build container started.
    PodRunning {
        /// Job ID.
        job_id: i64,
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// It runs on Fargate (else on an EC2 node).
        fargate: bool,
        /// Seconds from its creation to running.
        seconds: f64,
    },
    /// What a job's Fargate pod cost: the size Fargate provisioned and the billed time, as
    /// the agent's termination report (and so the job's log) says it, or, without a report,
    /// from the pod's provisioning to now; both `podrunner_agent::FargateBilling::cost`.
    FargateCost {
        /// Job ID.
        job_id: i64,
        /// `CapacityProvisioned`, e.g. `2vCPU 9GB`.
        capacity: String,
        /// Billed seconds.
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
    /// A warning about the configuration, said once at start.
    ConfigWarning {
        /// The warning, with its location.
        warning: String,
    },
    /// GitLab could not be reached to check the runner token at start.
    TokenCheckRetry {
        /// GitLab's URL.
        url: String,
        /// Why.
        error: String,
        /// The pause before the next try.
        retry_in: Duration,
    },
    /// A pod or Secret of this manager that no job follows was deleted.
    StrayDeleted {
        /// `Pod`, `Secret` or `Namespace`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// This manager took over the Lease of another whose Lease expired, and with it that
    /// manager's job pods.
    LeaseTakenOver {
        /// The namespace of the Lease.
        namespace: String,
        /// The Lease's name.
        lease: String,
        /// The system ID of the manager that held it.
        from: String,
        /// How many job pods came with it.
        pods: usize,
    },
    /// This manager found its own Lease taken or gone at a renewal.
    LeaseLost {
        /// The namespace of the Lease.
        namespace: String,
        /// The Lease's name.
        lease: String,
        /// What happened and what this manager does about it.
        why: String,
    },
    /// This manager let go of a job whose pod another manager took over (its Lease was
    /// taken): nothing of the job is touched or reported from here.
    JobHandedOver {
        /// The job's ID.
        job_id: i64,
        /// The namespace of its pod.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
}

impl Event {
    /// Counts the event in the metrics and logs it: the one place both happen.
    pub fn emit(&self) {
        self.count();
        self.log();
    }

    /// The level the event is logged at; `None` for events that are only counted.
    pub fn level(&self) -> Option<Level> {
        Some(match self {
            Event::ApiAnswer { .. }
            | Event::Settings { .. }
            | Event::JobRequestStarted { .. }
            | Event::JobRequestEnded { .. } => return None,
            Event::RunnerUnusable { .. } | Event::SweepFailed { .. } => Level::ERROR,
            Event::RequestFailed { .. }
            | Event::Unhealthy { .. }
            | Event::AckRefused { .. }
            | Event::JobFailedByManager { .. }
            | Event::KubernetesRetry { .. }
            | Event::KubernetesProblem { .. }
            | Event::StrayDeleted { .. }
            | Event::LeaseLost { .. }
            | Event::JobHandedOver { .. }
            | Event::ConfigWarning { .. }
            | Event::TokenCheckRetry { .. } => Level::WARN,
            Event::Started { .. }
            | Event::JobStarted { .. }
            | Event::JobFinished { .. }
            | Event::PodCreated { .. }
            | Event::PodAdopted { .. }
            | Event::LeaseTakenOver { .. }
            | Event::PodRunning { .. }
            | Event::FargateCost { .. }
            | Event::ShuttingDown { .. }
            | Event::Stopped { .. } => Level::INFO,
        })
    }

    /// One structured record per event (see [`crate::log`] for the formats).
    fn log(&self) {
        macro_rules! record {
            ($($field:tt)*) => {
                match self.level() {
                    Some(Level::ERROR) => tracing::error!($($field)*),
                    Some(Level::WARN) => tracing::warn!($($field)*),
                    Some(_) => tracing::info!($($field)*),
                    None => {}
                }
            };
        }
        match self {
            Event::ApiAnswer { .. }
            | Event::Settings { .. }
            | Event::JobRequestStarted { .. }
            | Event::JobRequestEnded { .. } => {}
            Event::Started {
                runners,
                concurrent,
            } => record!(
                request_loops = *runners as u64,
                concurrent = *concurrent as u64,
                "Starting job loop"
            ),
            Event::RunnerUnusable { runner, error } => record!(
                runner = runner.as_str(),
                error = error.as_str(),
                "Runner cannot be used"
            ),
            Event::RequestFailed { runner, error } => record!(
                runner = runner.as_str(),
                error = error.as_str(),
                "Job request failed"
            ),
            Event::Unhealthy { runner, pause } => record!(
                runner = runner.as_str(),
                pause_s = pause.as_secs(),
                "Runner is unhealthy and will pause"
            ),
            Event::AckRefused { job_id, outcome } => record!(
                job = *job_id,
                outcome = outcome.as_str(),
                "GitLab refused the job acknowledgement; not running it"
            ),
            Event::JobStarted {
                runner,
                job_id,
                executor,
                ..
            } => record!(
                runner = runner.as_str(),
                job = *job_id,
                executor = *executor,
                "Job started"
            ),
            Event::JobFinished {
                runner,
                failure_reason,
                job_id,
                state,
                delivered,
                duration,
            } => record!(
                runner = runner.as_str(),
                job = *job_id,
                state = state.as_str(),
                failure_reason = failure_reason.map_or("", |r| r.as_str()),
                duration_s = duration.as_secs_f64(),
                final_update_delivered = *delivered,
                "Job finished"
            ),
            Event::PodCreated {
                job_id,
                namespace,
                pod,
            } => record!(
                job = *job_id,
                namespace = namespace.as_str(),
                pod = pod.as_str(),
                "Pod created"
            ),
            Event::PodAdopted {
                job_id,
                namespace,
                pod,
            } => record!(
                job = *job_id,
                namespace = namespace.as_str(),
                pod = pod.as_str(),
                "Pod adopted"
            ),
            Event::PodRunning {
                job_id,
                namespace,
                pod,
                fargate,
                seconds,
            } => record!(
                job = *job_id,
                namespace = namespace.as_str(),
                pod = pod.as_str(),
                compute = if *fargate { "fargate" } else { "ec2" },
                start_s = *seconds,
                "Pod running"
            ),
            Event::FargateCost {
                job_id,
                capacity,
                seconds,
                usd_per_hour,
                usd,
            } => record!(
                job = *job_id,
                capacity = capacity.as_str(),
                seconds = *seconds,
                usd_per_hour = *usd_per_hour,
                usd = *usd,
                "Fargate cost"
            ),
            Event::JobFailedByManager { job_id, reason } => record!(
                job = *job_id,
                reason = reason.as_str(),
                "Job failed by the manager"
            ),
            Event::ShuttingDown { mode } => record!(mode = *mode, "Shutting down"),
            Event::KubernetesRetry {
                call,
                attempt,
                error,
                retry_in,
            } => record!(
                call = call.as_str(),
                attempt = *attempt,
                retry_in_ms = retry_in.as_millis() as u64,
                error = error.as_str(),
                "Kubernetes API call failed; retrying"
            ),
            Event::KubernetesProblem { doing, error } => record!(
                doing = doing.as_str(),
                error = error.as_str(),
                "Kubernetes problem"
            ),
            Event::StrayDeleted {
                kind,
                namespace,
                name,
            } => record!(
                kind = *kind,
                namespace = namespace.as_str(),
                name = name.as_str(),
                "Deleted a stray object no job follows"
            ),
            Event::LeaseTakenOver {
                namespace,
                lease,
                from,
                pods,
            } => record!(
                namespace = namespace.as_str(),
                lease = lease.as_str(),
                from = from.as_str(),
                pods = *pods as u64,
                "Took over the Lease of a manager that stopped renewing it"
            ),
            Event::LeaseLost {
                namespace,
                lease,
                why,
            } => record!(
                namespace = namespace.as_str(),
                lease = lease.as_str(),
                why = why.as_str(),
                "Lost this manager's Lease"
            ),
            Event::JobHandedOver {
                job_id,
                namespace,
                pod,
            } => record!(
                job = *job_id,
                namespace = namespace.as_str(),
                pod = pod.as_str(),
                "Let go of a job another manager took over"
            ),
            Event::SweepFailed {
                namespace,
                call,
                error,
            } => record!(
                namespace = namespace.as_str(),
                call = *call,
                error = error.as_str(),
                "Sweep of stray pods and Secrets failed"
            ),
            Event::ConfigWarning { warning } => {
                record!(warning = warning.as_str(), "Configuration warning")
            }
            Event::TokenCheckRetry {
                url,
                error,
                retry_in,
            } => record!(
                url = url.as_str(),
                error = error.as_str(),
                retry_in_s = retry_in.as_secs(),
                "Cannot reach GitLab to check the runner token; trying again"
            ),
            Event::Stopped { all_jobs_finished } => {
                record!(all_jobs_finished = *all_jobs_finished, "Job loop stopped")
            }
        }
    }
}

impl Event {
    /// Updates the metrics this event moves.
    pub(crate) fn count(&self) {
        use std::sync::atomic::Ordering;
        let m = crate::metrics::metrics();
        if let Some(level) = self.level()
            && level <= Level::WARN
        {
            let name = if level == Level::ERROR {
                "error"
            } else {
                "warning"
            };
            m.errors.with_label_values(&[name]).inc();
        }
        match self {
            Event::Started { .. } => m.ready.store(true, Ordering::Relaxed),
            Event::Stopped { .. } => m.ready.store(false, Ordering::Relaxed),
            Event::Settings {
                concurrent,
                limits,
                system_id,
            } => {
                m.concurrent.set(*concurrent);
                *m.system_id.lock().unwrap_or_else(|p| p.into_inner()) = system_id.clone();
                for (runner, limit) in limits {
                    m.limit.with_label_values(&m.runner(runner)).set(*limit);
                }
            }
            Event::JobStarted {
                runner,
                queued_seconds,
                ..
            } => {
                let labels = m.runner(runner);
                m.jobs_running.with_label_values(&m.running(runner)).inc();
                m.jobs_total.with_label_values(&labels).inc();
                if let Some(queued) = queued_seconds {
                    m.queue_duration
                        .with_label_values(&labels)
                        .observe(queued.max(0.0));
                }
            }
            Event::JobFinished {
                runner,
                failure_reason,
                state,
                duration,
                ..
            } => {
                m.jobs_running.with_label_values(&m.running(runner)).dec();
                m.job_duration
                    .with_label_values(&m.runner(runner))
                    .observe(duration.as_secs_f64());
                // A handed-over job is the taker's to count.
                if *state == crate::FinalState::Ended(JobState::Failed) {
                    let [runner, system_id] = m.runner(runner);
                    let reason = failure_reason.map_or("unknown_failure", |r| r.as_str());
                    m.failed_jobs
                        .with_label_values(&[runner.as_str(), system_id.as_str(), reason])
                        .inc();
                }
            }
            Event::JobRequestStarted { runner } => {
                m.request_concurrency
                    .with_label_values(&m.runner(runner))
                    .inc();
            }
            Event::JobRequestEnded { runner } => {
                m.request_concurrency
                    .with_label_values(&m.runner(runner))
                    .dec();
            }
            Event::ApiAnswer {
                runner,
                endpoint,
                status,
            } => {
                let [runner, system_id] = m.runner(runner);
                m.api_statuses
                    .with_label_values(&[runner.as_str(), system_id.as_str(), endpoint, status])
                    .inc();
            }
            Event::PodRunning {
                fargate, seconds, ..
            } => {
                let compute = if *fargate { "fargate" } else { "ec2" };
                m.pod_start.with_label_values(&[compute]).observe(*seconds);
            }
            Event::FargateCost { seconds, usd, .. } => {
                m.fargate_jobs.inc();
                m.fargate_seconds.inc_by(seconds.max(0.0));
                m.fargate_usd.inc_by(usd.max(0.0));
            }
            Event::SweepFailed { call, .. } => {
                m.sweep_errors.with_label_values(&[*call]).inc();
            }
            Event::KubernetesRetry { call, .. } => {
                m.kubernetes_retries
                    .with_label_values(&[call.as_str()])
                    .inc();
            }
            _ => {}
        }
    }
}
