//! Sends a job's trace to GitLab while the job runs, notices cancellation, and delivers the
//! final state (gitlab-runner's `network/trace.go` and `finishWithFinalUpdate`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{
    FailureReason, JobState, RemoteJobStatus, RunnerInfo, TraceOutput, UpdateJobRequest,
};
use crate::client::{GitlabClient, JobSignals, PatchOutcome, UpdateOutcome};
use crate::log::Trace;
use crate::secret::Secret;

/// Largest trace PATCH.
pub const PATCH_LIMIT: usize = 1024 * 1024;

/// What GitLab wants done with the running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteControl {
    /// Carry on.
    Running,
    /// Graceful cancel: stop the script, run after_script, upload "on failure", report.
    Canceling,
    /// Stop everything now (canceled, failed, 403, 404).
    Abort,
}

/// The uploader's clocks; gitlab-runner's values by default.
#[derive(Debug, Clone, Copy)]
pub struct UploaderTimings {
    /// Between trace patches (GitLab may change it).
    pub update_interval: Duration,
    /// A heartbeat after this long without accepted bytes.
    pub force_send_interval: Duration,
    /// First back-off of the final update.
    pub final_backoff_min: Duration,
    /// Longest back-off of the final update.
    pub final_backoff_max: Duration,
}

impl Default for UploaderTimings {
    fn default() -> Self {
        UploaderTimings {
            update_interval: Duration::from_secs(3),
            force_send_interval: Duration::from_secs(30),
            final_backoff_min: Duration::from_secs(1),
            final_backoff_max: Duration::from_secs(60 * 60),
        }
    }
}

/// The job a trace belongs to.
#[derive(Debug, Clone)]
pub struct TraceTarget {
    /// Job ID.
    pub job_id: i64,
    /// Job token.
    pub token: Secret,
    /// `CI_DEBUG_TRACE` in effect.
    pub debug_trace: bool,
    /// Sent with every PUT.
    pub info: RunnerInfo,
    /// Trace bytes GitLab already has (the agent continues after the manager's prepare output).
    pub start_offset: u64,
    /// `job_status_final_update_retry_limit`.
    pub final_update_retry_limit: u32,
    /// `features.failure_reasons` of the payload.
    pub supported_failure_reasons: Vec<String>,
}

/// The final state to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalState {
    /// Success or failed.
    pub state: JobState,
    /// Why it failed.
    pub failure_reason: Option<FailureReason>,
    /// The script's exit code, for script failures.
    pub exit_code: Option<i32>,
}

/// How the final update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalReport {
    /// GitLab accepted the final state (`200`).
    pub delivered: bool,
    /// GitLab said to stop (`403`, `404`, canceled/failed).
    pub aborted: bool,
    /// Trace bytes GitLab has.
    pub trace_bytes_sent: u64,
    /// The last failure, when not delivered.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    sent: u64,
    interval: Duration,
    last_accepted: Instant,
    not_found: bool,
}

/// A running uploader.
#[derive(Debug)]
pub struct TraceUploader {
    client: GitlabClient,
    target: TraceTarget,
    trace: Trace,
    timings: UploaderTimings,
    shared: Arc<Mutex<Shared>>,
    control: watch::Sender<RemoteControl>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TraceUploader {
    /// Starts sending `trace` for `target`; `parent` cancels it with the rest of the process.
    pub fn start(
        client: GitlabClient,
        target: TraceTarget,
        trace: Trace,
        timings: UploaderTimings,
        parent: &CancellationToken,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            sent: target.start_offset,
            interval: timings.update_interval,
            last_accepted: Instant::now(),
            not_found: false,
        }));
        let (control, _) = watch::channel(RemoteControl::Running);
        let stop = parent.child_token();
        let mut uploader = TraceUploader {
            client,
            target,
            trace,
            timings,
            shared,
            control,
            stop,
            task: None,
        };
        uploader.task = Some(tokio::spawn(uploader.periodic()));
        uploader
    }

    /// Watches what GitLab wants done with the job.
    pub fn control(&self) -> watch::Receiver<RemoteControl> {
        self.control.subscribe()
    }

    fn periodic(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let worker = Worker {
            client: self.client.clone(),
            target: self.target.clone(),
            trace: self.trace.clone(),
            shared: self.shared.clone(),
            control: self.control.clone(),
            timings: self.timings,
        };
        let stop = self.stop.clone();
        async move {
            loop {
                let interval = worker.shared.lock().await.interval;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                // A failed patch is tried again on the next tick.
                let _ = worker.send_one_patch().await;
                let quiet_for = worker.shared.lock().await.last_accepted.elapsed();
                if quiet_for >= worker.timings.force_send_interval {
                    worker.heartbeat().await;
                }
                if *worker.control.borrow() == RemoteControl::Abort {
                    return;
                }
            }
        }
    }

    /// Stops the periodic sending, uploads the rest of the trace and delivers the final
    /// state, retrying as gitlab-runner does.
    pub async fn finish(mut self, final_state: FinalState) -> FinalReport {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let worker = Worker {
            client: self.client.clone(),
            target: self.target.clone(),
            trace: self.trace.clone(),
            shared: self.shared.clone(),
            control: self.control.clone(),
            timings: self.timings,
        };
        worker.final_update(final_state).await
    }
}

struct Worker {
    client: GitlabClient,
    target: TraceTarget,
    trace: Trace,
    shared: Arc<Mutex<Shared>>,
    control: watch::Sender<RemoteControl>,
    timings: UploaderTimings,
}

impl Worker {
    fn observe(&self, signals: &JobSignals) {
        match &signals.job_status {
            Some(RemoteJobStatus::Canceling) => {
                self.control.send_if_modified(|c| {
                    let changed = *c == RemoteControl::Running;
                    if changed {
                        *c = RemoteControl::Canceling;
                    }
                    changed
                });
            }
            Some(status) if status.is_abort() => {
                self.control.send_replace(RemoteControl::Abort);
            }
            _ => {}
        }
    }

    async fn apply_interval(&self, signals: &JobSignals) {
        if let Some(interval) = signals.update_interval {
            self.shared.lock().await.interval = interval;
        }
    }

    fn output(&self) -> TraceOutput {
        let sink = self.trace.sink();
        TraceOutput {
            checksum: sink.checksum(),
            bytesize: sink.bytesize(),
        }
    }

    /// Sends one patch of unsent bytes. `Ok(true)` when everything is sent.
    async fn send_one_patch(&self) -> Result<bool, String> {
        let (offset, not_found) = {
            let shared = self.shared.lock().await;
            (shared.sent, shared.not_found)
        };
        if not_found {
            return Ok(true);
        }
        let bytes = {
            let sink = self.trace.sink();
            sink.store()
                .read(offset, PATCH_LIMIT)
                .map_err(|e| format!("cannot read the trace: {e}"))?
        };
        if bytes.is_empty() {
            return Ok(true);
        }
        let (outcome, signals) = self
            .client
            .patch_trace(
                self.target.job_id,
                &self.target.token,
                offset,
                &bytes,
                self.target.debug_trace,
            )
            .await;
        self.observe(&signals);
        self.apply_interval(&signals).await;
        let mut shared = self.shared.lock().await;
        match outcome {
            PatchOutcome::Accepted { offset } => {
                shared.sent = offset;
                shared.last_accepted = Instant::now();
                Ok(false)
            }
            PatchOutcome::RangeMismatch { offset } => {
                shared.sent = offset;
                Ok(false)
            }
            PatchOutcome::NotFound => {
                shared.not_found = true;
                Ok(true)
            }
            PatchOutcome::Abort => {
                drop(shared);
                self.control.send_replace(RemoteControl::Abort);
                Err("GitLab stopped the job".to_owned())
            }
            PatchOutcome::Failed(error) => Err(error),
        }
    }

    async fn heartbeat(&self) {
        let request = UpdateJobRequest {
            info: self.target.info.clone(),
            token: self.target.token.clone(),
            state: JobState::Running,
            failure_reason: None,
            checksum: None,
            output: Some(self.output()),
            exit_code: None,
        };
        let (outcome, signals) = self.client.update_job(self.target.job_id, &request).await;
        self.observe(&signals);
        self.apply_interval(&signals).await;
        if outcome == UpdateOutcome::Abort {
            self.control.send_replace(RemoteControl::Abort);
        }
        // A heartbeat counts as contact; the next one is due a full interval later.
        self.shared.lock().await.last_accepted = Instant::now();
    }

    /// Uploads every unsent byte. Fails on the first patch failure (after one interval).
    async fn flush_trace(&self) -> Result<(), String> {
        loop {
            match self.send_one_patch().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(error) => {
                    let interval = self.shared.lock().await.interval;
                    tokio::time::sleep(interval).await;
                    return Err(error);
                }
            }
        }
    }

    async fn final_update(&self, final_state: FinalState) -> FinalReport {
        self.shared.lock().await.interval =
            self.timings.update_interval.min(Duration::from_secs(3));
        let failure_reason = final_state.failure_reason.map(|r| {
            r.for_gitlab(&self.target.supported_failure_reasons)
                .to_owned()
        });
        let mut failures = 0u32;
        loop {
            let result: Result<(), String> = match self.flush_trace().await {
                Err(error) => Err(error),
                Ok(()) => {
                    let output = self.output();
                    let request = UpdateJobRequest {
                        info: self.target.info.clone(),
                        token: self.target.token.clone(),
                        state: final_state.state,
                        failure_reason: failure_reason.clone(),
                        checksum: Some(output.checksum.clone()),
                        output: Some(output),
                        exit_code: final_state.exit_code.filter(|c| *c != 0),
                    };
                    let (outcome, signals) =
                        self.client.update_job(self.target.job_id, &request).await;
                    self.apply_interval(&signals).await;
                    match outcome {
                        UpdateOutcome::Succeeded => return self.report(true, false, None).await,
                        // GitLab answers the final state with its Job-Status, `failed` after a
                        // failed job: a 200 is delivery all the same.
                        UpdateOutcome::Abort if signals.http_status == Some(200) => return self.report(true, false, None).await,
                        UpdateOutcome::Abort => return self.report(false, true, Some("GitLab refused the final update: the job is no longer this runner's".to_owned())).await,
                        UpdateOutcome::Accepted => {
                            let interval = self.shared.lock().await.interval;
                            tokio::time::sleep(interval).await;
                            continue;
                        }
                        UpdateOutcome::TraceValidationFailed => {
                            self.shared.lock().await.sent = 0;
                            continue;
                        }
                        UpdateOutcome::Failed(error) => Err(error),
                    }
                }
            };
            if let Err(error) = result {
                if *self.control.borrow() == RemoteControl::Abort {
                    return self.report(false, true, Some(error)).await;
                }
                failures += 1;
                if failures >= self.target.final_update_retry_limit.max(1) {
                    return self.report(false, false, Some(error)).await;
                }
                let backoff = self
                    .timings
                    .final_backoff_min
                    .saturating_mul(1u32 << (failures - 1).min(20))
                    .min(self.timings.final_backoff_max);
                tokio::time::sleep(backoff).await;
            }
        }
    }

    async fn report(
        &self,
        delivered: bool,
        aborted: bool,
        last_error: Option<String>,
    ) -> FinalReport {
        FinalReport {
            delivered,
            aborted,
            trace_bytes_sent: self.shared.lock().await.sent,
            last_error,
        }
    }
}
