//! The manager: asks GitLab for jobs (`concurrent`, `limit`, `request_concurrency`, long
//! polling, unhealthy back-off), acknowledges each job, hands it to an executor, and shuts
//! down gracefully (SIGQUIT) or forcefully (SIGTERM/SIGINT) so that every job's final state
//! reaches GitLab.

mod agent_spec;
mod contact;
mod events;
mod fail;
mod log;
pub mod metrics;
mod shell;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use podrunner_config::{Config, RunnerConfig};
use podrunner_gitlab::api::{FailureReason, JobState, UpdateJobRequest};
use podrunner_gitlab::{
    ClientOptions, GitlabClient, JobPayload, JobRequestOutcome, RunnerInfo, Secret, UpdateOutcome,
};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use agent_spec::agent_spec;
pub use contact::JobContact;
pub use events::Event;
pub use fail::{fail_job, fail_job_as, job_client};
pub use log::init as init_logging;
pub use metrics::{bind_address, metrics, serve as serve_metrics};
pub use shell::ShellExecutor;

/// A job GitLab gave this manager and that it acknowledged.
#[derive(Debug, Clone)]
pub struct AcceptedJob {
    /// The runner entry it came through.
    pub runner: Arc<RunnerConfig>,
    /// The payload.
    pub payload: JobPayload,
    /// The manager's system ID.
    pub system_id: String,
    /// A slot number among this runner's running jobs (`CI_CONCURRENT_ID`).
    pub concurrent_id: u32,
}

/// Where a job's run on this manager ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalState {
    /// The job ended in this state (as this manager told, or tried to tell, GitLab).
    Ended(JobState),
    /// Another manager took the job's pod over; its end is that manager's to report.
    HandedOver,
}

impl FinalState {
    /// The name in logs: GitLab's state, or `handed_over`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinalState::Ended(state) => state.as_str(),
            FinalState::HandedOver => "handed_over",
        }
    }
}

/// How a job ended, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    /// GitLab has the final state.
    pub final_update_delivered: bool,
    /// The final state.
    pub state: FinalState,
    /// Why it failed, when it did, as the runner knows it.
    pub failure_reason: Option<FailureReason>,
}

impl JobEnd {
    /// A job that failed for `reason`.
    pub fn failed(reason: FailureReason, final_update_delivered: bool) -> Self {
        JobEnd {
            final_update_delivered,
            state: FinalState::Ended(JobState::Failed),
            failure_reason: Some(reason),
        }
    }

    /// A job whose pod another manager took over: nothing of it is this manager's to report.
    pub fn handed_over() -> Self {
        JobEnd {
            final_update_delivered: false,
            state: FinalState::HandedOver,
            failure_reason: None,
        }
    }

    /// How the agent's termination report says the job ended.
    pub fn from_report(report: &podrunner_agent::TerminationReport) -> Self {
        JobEnd {
            final_update_delivered: report.final_update_delivered,
            state: FinalState::Ended(report.state),
            failure_reason: report.failure_reason,
        }
    }
}

/// Runs accepted jobs.
pub trait Executor: Send + Sync {
    /// The executor's name (`shell`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Runs a job to its end. `abort` fires on a forceful shutdown: the job must stop, report
    /// `runner_interrupted`, and return.
    fn run<'a>(
        &'a self,
        job: AcceptedJob,
        abort: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = JobEnd> + Send + 'a>>;

    /// The jobs of `runner` an earlier run of this manager left running (their pods survived
    /// its restart), for [`Executor::resume`]. The manager counts them toward `concurrent` and
    /// `limit` like new jobs. None by default.
    fn leftovers(
        self: Arc<Self>,
        runner: Arc<RunnerConfig>,
    ) -> Pin<Box<dyn Future<Output = Vec<AcceptedJob>> + Send>> {
        let _ = runner;
        Box::pin(async { Vec::new() })
    }

    /// Jobs of `runner` this executor takes over while the manager runs (another manager
    /// stopped renewing its Lease), for [`Executor::resume`]; the manager counts them toward
    /// `concurrent` and `limit` like [`Executor::leftovers`]. `stop` fires when the manager
    /// drains: the executor takes over nothing more and closes the channel. None by default.
    fn takeovers(
        self: Arc<Self>,
        runner: Arc<RunnerConfig>,
        stop: CancellationToken,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<AcceptedJob>> {
        let _ = (runner, stop);
        None
    }

    /// Called once every job ended, before the manager exits: gives up what the executor
    /// holds for its jobs (its Leases). Nothing by default.
    fn release(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async {})
    }

    /// Follows a job of [`Executor::leftovers`] to its end, like [`Executor::run`].
    fn resume<'a>(
        &'a self,
        job: AcceptedJob,
        abort: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = JobEnd> + Send + 'a>> {
        self.run(job, abort)
    }
}

/// What the manager needs besides the configuration.
pub struct ManagerOptions {
    /// The manager's system ID.
    pub system_id: String,
    /// The executor of each runner entry, by index.
    pub executors: Vec<Arc<dyn Executor>>,
    /// podrunner's version, for the client.
    pub podrunner_version: String,
    /// Features advertised per executor name.
    pub info: Arc<dyn Fn(&str) -> RunnerInfo + Send + Sync>,
}

/// How the manager is told to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop asking for jobs; running jobs finish (SIGQUIT).
    pub graceful: CancellationToken,
    /// Stop running jobs too, within `shutdown_timeout` (SIGTERM/SIGINT).
    pub forceful: CancellationToken,
}

/// Counts of what the manager did, for tests and metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Jobs received.
    pub jobs_received: u64,
    /// Jobs whose acknowledgement GitLab refused.
    pub acks_refused: u64,
    /// Jobs running now.
    pub jobs_running: u64,
    /// Jobs finished.
    pub jobs_finished: u64,
}

/// The manager.
pub struct Manager {
    config: Config,
    options: ManagerOptions,
    counters: Arc<Mutex<Counters>>,
}

impl Manager {
    /// A manager for a validated configuration.
    pub fn new(config: Config, options: ManagerOptions) -> Self {
        Manager {
            config,
            options,
            counters: Arc::new(Mutex::new(Counters::default())),
        }
    }

    /// The counters.
    pub fn counters(&self) -> Arc<Mutex<Counters>> {
        self.counters.clone()
    }

    /// Requests and runs jobs until `shutdown`, then waits for running jobs (at most
    /// `shutdown_timeout` after a forceful stop). Returns whether every job ended in time.
    pub async fn run(self, shutdown: Shutdown) -> bool {
        let concurrent = usize::try_from(self.config.concurrent.max(1)).unwrap_or(1);
        let global = Arc::new(Semaphore::new(concurrent));
        let requests = shutdown.graceful.child_token();
        let jobs_abort = shutdown.forceful.clone();
        {
            let requests = requests.clone();
            let forceful = shutdown.forceful.clone();
            tokio::spawn(async move {
                forceful.cancelled().await;
                requests.cancel();
            });
        }
        let tracker = TaskTracker::new();
        let runner_count = self.config.runners.len().max(1) as u32;
        let check_interval = Duration::from_secs(if self.config.check_interval > 0 {
            self.config.check_interval as u64
        } else {
            3
        });
        let mut feeders = Vec::new();
        for (index, runner) in self.config.runners.iter().enumerate() {
            let Some(executor) = self.options.executors.get(index).cloned() else {
                continue;
            };
            let runner = Arc::new(runner.clone());
            let client = match GitlabClient::new(&ClientOptions {
                url: runner.url.clone().unwrap_or_default(),
                tls_ca_file: runner.tls_ca_file.clone().map(PathBuf::from),
                tls_cert_file: runner.tls_cert_file.clone().map(PathBuf::from),
                tls_key_file: runner.tls_key_file.clone().map(PathBuf::from),
                podrunner_version: self.options.podrunner_version.clone(),
            }) {
                Ok(client) => client,
                Err(error) => {
                    Event::RunnerUnusable {
                        runner: runner_label(&runner),
                        error: error.to_string(),
                    }
                    .emit();
                    continue;
                }
            };
            let limit = usize::try_from(runner.limit).ok().filter(|l| *l > 0);
            let feeder = Feeder {
                runner: runner.clone(),
                client,
                executor,
                info: (self.options.info)(executor_name(&runner)),
                system_id: self.options.system_id.clone(),
                global: global.clone(),
                limit: limit.map(|l| Arc::new(Semaphore::new(l))),
                slots: Arc::new(std::sync::Mutex::new(HashMap::new())),
                check_interval,
                start_delay: check_interval / runner_count * index as u32,
                requests: requests.clone(),
                jobs_abort: jobs_abort.clone(),
                tracker: tracker.clone(),
                counters: self.counters.clone(),
                last_update: Arc::new(Mutex::new(None)),
            };
            // Jobs an earlier run left running come first: they hold their share of
            // `concurrent` and `limit` (beyond it when there are more of them than that).
            for job in feeder.executor.clone().leftovers(runner.clone()).await {
                let global = global.clone().try_acquire_owned().ok();
                let local = feeder
                    .limit
                    .as_ref()
                    .and_then(|l| l.clone().try_acquire_owned().ok());
                feeder.launch(job, None, global, local);
            }
            // Jobs taken over from a manager that died: followed here from now on.
            if let Some(mut taken) = feeder
                .executor
                .clone()
                .takeovers(runner.clone(), requests.clone())
            {
                let feeder = feeder.clone();
                let global = global.clone();
                tracker.spawn(async move {
                    while let Some(job) = taken.recv().await {
                        let global = global.clone().try_acquire_owned().ok();
                        let local = feeder
                            .limit
                            .as_ref()
                            .and_then(|l| l.clone().try_acquire_owned().ok());
                        feeder.launch(job, None, global, local);
                    }
                });
            }
            let request_concurrency = runner.request_concurrency.clamp(1, 64) as usize;
            for _ in 0..request_concurrency {
                feeders.push(tokio::spawn(feeder.clone().run()));
            }
        }
        Event::Settings {
            concurrent: concurrent as i64,
            limits: self
                .config
                .runners
                .iter()
                .map(|r| (runner_label(r), r.limit))
                .collect(),
            system_id: self.options.system_id.clone(),
        }
        .emit();
        Event::Started {
            runners: feeders.len(),
            concurrent,
        }
        .emit();
        for feeder in feeders {
            let _ = feeder.await;
        }
        tracker.close();
        // Graceful: wait for every job. Forceful: jobs were told to stop; wait at most
        // shutdown_timeout for them to report.
        let shutdown_timeout = Duration::from_secs(if self.config.shutdown_timeout > 0 {
            self.config.shutdown_timeout as u64
        } else {
            30
        });
        tokio::select! {
            _ = tracker.wait() => {
                for executor in &self.options.executors {
                    executor.clone().release().await;
                }
                Event::Stopped { all_jobs_finished: true }.emit();
                true
            }
            _ = async { shutdown.forceful.cancelled().await; tokio::time::sleep(shutdown_timeout).await } => {
                Event::Stopped { all_jobs_finished: false }.emit();
                false
            }
        }
    }
}

fn executor_name(runner: &RunnerConfig) -> &'static str {
    match runner.executor {
        Some(podrunner_config::Executor::Kubernetes) => "kubernetes",
        _ => "shell",
    }
}

/// The runner's name, or its short token: never the token itself.
pub fn runner_label(runner: &RunnerConfig) -> String {
    runner
        .name
        .clone()
        .unwrap_or_else(|| short_token(runner.token.as_deref().unwrap_or("")))
}

/// The first 8 characters of a token after its `glrt-` prefix, as logs may show them.
pub fn short_token(token: &str) -> String {
    let rest = token.strip_prefix("glrt-").unwrap_or(token);
    rest.chars().take(8).collect()
}

#[derive(Clone)]
struct Feeder {
    runner: Arc<RunnerConfig>,
    client: GitlabClient,
    executor: Arc<dyn Executor>,
    info: RunnerInfo,
    system_id: String,
    global: Arc<Semaphore>,
    limit: Option<Arc<Semaphore>>,
    slots: Arc<std::sync::Mutex<HashMap<u32, ()>>>,
    check_interval: Duration,
    start_delay: Duration,
    requests: CancellationToken,
    jobs_abort: CancellationToken,
    tracker: TaskTracker,
    counters: Arc<Mutex<Counters>>,
    last_update: Arc<Mutex<Option<String>>>,
}

impl Feeder {
    async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.requests.cancelled() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }

    async fn run(self) {
        let token = Secret::new(self.runner.token.clone().unwrap_or_default());
        let label = runner_label(&self.runner);
        let unhealthy_limit = if self.runner.unhealthy_requests_limit > 0 {
            self.runner.unhealthy_requests_limit as u32
        } else {
            3
        };
        let mut unhealthy = 0u32;
        if !self.sleep(self.start_delay).await {
            return;
        }
        loop {
            if self.requests.is_cancelled() {
                return;
            }
            // Capacity first: a runner at its limit does not ask for work.
            let global = tokio::select! {
                _ = self.requests.cancelled() => return,
                permit = self.global.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            };
            let local = match &self.limit {
                Some(limit) => tokio::select! {
                    _ = self.requests.cancelled() => return,
                    permit = limit.clone().acquire_owned() => match permit { Ok(p) => Some(p), Err(_) => return },
                },
                None => None,
            };
            let last_update = self.last_update.lock().await.clone();
            Event::JobRequestStarted {
                runner: label.clone(),
            }
            .emit();
            let result = tokio::select! {
                _ = self.requests.cancelled() => None,
                result = self.client.request_job(&token, &self.system_id, &self.info, last_update.as_deref()) => Some(result),
            };
            Event::JobRequestEnded {
                runner: label.clone(),
            }
            .emit();
            let Some(result) = result else { return };
            Event::ApiAnswer {
                runner: label.clone(),
                endpoint: "request_job",
                status: result
                    .status
                    .map_or_else(|| "error".to_owned(), |s| s.to_string()),
            }
            .emit();
            if let Some(update) = &result.last_update {
                *self.last_update.lock().await = Some(update.clone());
            }
            if result.healthy() {
                unhealthy = 0;
            } else {
                unhealthy += 1;
            }
            let mut again_now = false;
            match result.outcome {
                JobRequestOutcome::Job(payload) => {
                    self.counters.lock().await.jobs_received += 1;
                    if self.acknowledge(&payload).await {
                        self.start(*payload, global, local);
                        again_now = !self.runner.strict_check_interval;
                    } else {
                        self.counters.lock().await.acks_refused += 1;
                    }
                }
                // gitlab-runner reads a 409 like "no job": `RequestJob` (`network/gitlab.go`)
                // returns no job, healthy, and the runner is fed again after
                // `check_interval` (`commands/multi.go`, `feedRunners`).
                JobRequestOutcome::NoJob | JobRequestOutcome::Conflict => {}
                JobRequestOutcome::Forbidden => Event::RequestFailed {
                    runner: label.clone(),
                    error: "GitLab refused the runner token (403)".to_owned(),
                }
                .emit(),
                JobRequestOutcome::Unavailable => Event::RequestFailed {
                    runner: label.clone(),
                    error: "GitLab is unavailable (503)".to_owned(),
                }
                .emit(),
                JobRequestOutcome::Failed(error) => Event::RequestFailed {
                    runner: label.clone(),
                    error,
                }
                .emit(),
            }
            if unhealthy >= unhealthy_limit {
                Event::Unhealthy {
                    runner: label.clone(),
                    pause: self.runner.unhealthy_interval.get(),
                }
                .emit();
                if !self.sleep(self.runner.unhealthy_interval.get()).await {
                    return;
                }
                unhealthy = 0;
                continue;
            }
            if !again_now && !self.sleep(self.check_interval).await {
                return;
            }
        }
    }

    /// `PUT state=running`; a job whose acknowledgement is refused is not run.
    async fn acknowledge(&self, payload: &JobPayload) -> bool {
        let request = UpdateJobRequest {
            info: self.info.clone(),
            token: payload.job.token.clone(),
            state: JobState::Running,
            failure_reason: None,
            checksum: None,
            output: None,
            exit_code: None,
        };
        let (outcome, signals) = self.client.update_job(payload.job.id, &request).await;
        Event::ApiAnswer {
            runner: runner_label(&self.runner),
            endpoint: "update_job",
            status: signals
                .http_status
                .map_or_else(|| "error".to_owned(), |s| s.to_string()),
        }
        .emit();
        let accepted = outcome == UpdateOutcome::Succeeded
            && !signals.job_status.as_ref().is_some_and(|s| s.is_abort());
        if !accepted {
            Event::AckRefused {
                job_id: payload.job.id,
                outcome: format!("{outcome:?}"),
            }
            .emit();
        }
        accepted
    }

    fn start(
        &self,
        payload: JobPayload,
        global: tokio::sync::OwnedSemaphorePermit,
        local: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (0u32..).find(|s| !slots.contains_key(s)).unwrap_or(0);
            slots.insert(slot, ());
            slot
        };
        let job = AcceptedJob {
            runner: self.runner.clone(),
            system_id: self.system_id.clone(),
            concurrent_id: slot,
            payload,
        };
        self.launch(job, Some(slot), Some(global), local);
    }

    /// Runs `job` (a new one, in `slot`) or resumes it (an earlier run's, no slot) in the
    /// background, holding the permits until it ends.
    fn launch(
        &self,
        job: AcceptedJob,
        slot: Option<u32>,
        global: Option<tokio::sync::OwnedSemaphorePermit>,
        local: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let executor = self.executor.clone();
        let abort = self.jobs_abort.child_token();
        let counters = self.counters.clone();
        let slots = self.slots.clone();
        let job_id = job.payload.job.id;
        let queued_seconds = slot.map(|_| job.payload.job.job_info.time_in_queue_seconds);
        let runner = runner_label(&self.runner);
        // Boxed: the task keeps a pointer, not the job, for as long as the job runs.
        let job = Box::new(job);
        self.tracker.spawn(async move {
            counters.lock().await.jobs_running += 1;
            let started = tokio::time::Instant::now();
            Event::JobStarted {
                runner: runner.clone(),
                job_id,
                executor: executor.name(),
                queued_seconds,
            }
            .emit();
            // Out of its box, which goes now: the executor keeps what it needs of the job.
            let job = {
                let boxed = job;
                *boxed
            };
            let end = match slot {
                Some(_) => executor.run(job, abort).await,
                None => executor.resume(job, abort).await,
            };
            Event::JobFinished {
                runner,
                failure_reason: end.failure_reason,
                job_id,
                state: end.state,
                delivered: end.final_update_delivered,
                duration: started.elapsed(),
            }
            .emit();
            {
                let mut counters = counters.lock().await;
                counters.jobs_running -= 1;
                counters.jobs_finished += 1;
            }
            if let Some(slot) = slot {
                slots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&slot);
            }
            drop(local);
            drop(global);
        });
    }
}
