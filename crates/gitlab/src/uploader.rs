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
use crate::handover::{ClaimResult, Gap, Join, TraceHandover, after_claim};
use crate::log::{Stream, Trace};
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
    /// The manager wrote the start of the log and may still be writing: the agent claims the
    /// log before it sends its own bytes ([`crate::handover`]).
    pub handover: Option<TraceHandover>,
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
    join: Join,
    /// The manager's bytes GitLab has and the trace store lacks.
    gap: Gap,
}

/// What one round of sending did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Nothing left to send.
    Done,
    /// Sent something; there may be more.
    More,
    /// Waiting for the manager's late lines to show in the live prelude.
    Waiting,
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
        let (join, gap) = match &target.handover {
            Some(handover) => (
                Join::Claiming,
                Gap {
                    at: handover.prelude_len,
                    ..Gap::default()
                },
            ),
            None => (Join::Owner, Gap::default()),
        };
        let start = target.start_offset.max(gap.prelude_end());
        let shared = Arc::new(Mutex::new(Shared {
            sent: start,
            interval: timings.update_interval,
            last_accepted: Instant::now(),
            not_found: false,
            join,
            gap,
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

    /// The log's size and checksum as GitLab has it: the store plus the manager's bytes it
    /// lacks. No checksum when some of those bytes are unknown (GitLab accepts the state
    /// without one: `Ci::UpdateBuildStateService` only counts a mismatch in its metrics).
    async fn output(&self) -> (Option<String>, u64) {
        let gap = self.shared.lock().await.gap.clone();
        let sink = self.trace.sink();
        let bytesize = sink.bytesize() + gap.len();
        if gap.len() == 0 {
            return (Some(sink.checksum()), bytesize);
        }
        (gap.checksum(sink.store()).ok().flatten(), bytesize)
    }

    /// Sends one patch of unsent bytes (the claim first, while the manager may write).
    async fn send_one_patch(&self) -> Result<Sent, String> {
        loop {
            let join = self.shared.lock().await.join.clone();
            return match join {
                Join::Owner => self.send_owned().await,
                Join::Claiming => match self.claim().await? {
                    // Claimed: send the rest now.
                    None => continue,
                    Some(sent) => Ok(sent),
                },
                Join::CatchingUp { size, deadline } => {
                    if self.catch_up(size, deadline).await? {
                        continue;
                    }
                    Ok(Sent::Waiting)
                }
            };
        }
    }

    /// The claim: the prelude bytes GitLab lacks and one byte of the agent's own. `None` once
    /// the agent owns the log.
    async fn claim(&self) -> Result<Option<Sent>, String> {
        let (offset, gap) = {
            let shared = self.shared.lock().await;
            if shared.not_found {
                return Ok(Some(Sent::Done));
            }
            (shared.sent, shared.gap.clone())
        };
        let end = gap.prelude_end() + 1;
        let bytes = {
            let sink = self.trace.sink();
            gap.read(sink.store(), offset, (end - offset.min(end)) as usize)
                .map_err(|e| format!("cannot read the trace: {e}"))?
        };
        if offset + (bytes.len() as u64) < end {
            // No byte of the agent's own yet: nothing to claim with.
            return Ok(Some(Sent::Done));
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
        let result = match outcome {
            PatchOutcome::Accepted { offset } => ClaimResult::Claimed(offset),
            PatchOutcome::RangeMismatch { offset } => after_claim(gap.prelude_end(), offset),
            other => {
                drop(shared);
                return self.unsent(other).await.map(Some);
            }
        };
        match result {
            ClaimResult::Claimed(offset) => {
                shared.sent = offset;
                shared.last_accepted = Instant::now();
                shared.join = Join::Owner;
                Ok(None)
            }
            ClaimResult::Behind(size) => {
                shared.sent = size;
                Ok(Some(Sent::More))
            }
            ClaimResult::Ahead(size) => {
                let wait = self
                    .target
                    .handover
                    .as_ref()
                    .filter(|h| h.live.is_some())
                    .map_or(Duration::ZERO, |h| h.catch_up);
                shared.join = Join::CatchingUp {
                    size,
                    deadline: Instant::now() + wait,
                };
                Ok(Some(Sent::Waiting))
            }
        }
    }

    /// Looks at the live prelude for the `size` bytes GitLab has; `true` when the agent may
    /// claim again (it learned them, or stopped waiting at `deadline`).
    async fn catch_up(&self, size: u64, deadline: Instant) -> Result<bool, String> {
        let live = self
            .target
            .handover
            .as_ref()
            .and_then(|h| h.live.as_ref())
            .and_then(|read| read());
        let mut shared = self.shared.lock().await;
        let mut sink = self.trace.sink();
        if let Some(live) = live {
            let before = shared.gap.known.len() as u64;
            if shared
                .gap
                .adopt(sink.store(), &live, size)
                .map_err(|e| format!("cannot read the trace: {e}"))?
            {
                // They count for the output limit like any other bytes of the log.
                sink.count_outside(shared.gap.known.len() as u64 - before);
                shared.sent = size;
                shared.join = Join::Claiming;
                return Ok(true);
            }
        }
        if Instant::now() < deadline {
            return Ok(false);
        }
        // The manager's last lines never showed: GitLab has them, the agent cannot know
        // them. The log stays whole (they are the manager's, before the agent's); only the
        // checksum cannot be computed, so none is sent, and the log says why.
        let missing = size - shared.gap.prelude_end();
        shared.gap.unknown += missing;
        sink.count_outside(missing);
        shared.sent = size;
        shared.join = Join::Claiming;
        drop(sink);
        drop(shared);
        let mut out = self.trace.writer(Stream::RUNNER);
        let _ = out.write_bytes(
            crate::log::warning_line(&format!(
                "{missing} bytes the runner manager wrote at the start of this log did not reach the job's pod in time; the log is complete, but its checksum is not sent"
            ))
            .as_bytes(),
        );
        let _ = out.flush_all();
        Ok(true)
    }

    /// What a patch that did not move the log means.
    async fn unsent(&self, outcome: PatchOutcome) -> Result<Sent, String> {
        match outcome {
            PatchOutcome::NotFound => {
                self.shared.lock().await.not_found = true;
                Ok(Sent::Done)
            }
            PatchOutcome::Abort => {
                self.control.send_replace(RemoteControl::Abort);
                Err("GitLab stopped the job".to_owned())
            }
            PatchOutcome::Failed(error) => Err(error),
            PatchOutcome::Accepted { .. } | PatchOutcome::RangeMismatch { .. } => Ok(Sent::More),
        }
    }

    /// Sends one patch of unsent bytes once the agent owns the log.
    async fn send_owned(&self) -> Result<Sent, String> {
        let (offset, not_found, gap) = {
            let shared = self.shared.lock().await;
            (shared.sent, shared.not_found, shared.gap.clone())
        };
        if not_found {
            return Ok(Sent::Done);
        }
        let bytes = {
            let sink = self.trace.sink();
            gap.read(sink.store(), offset, PATCH_LIMIT)
                .map_err(|e| format!("cannot read the trace: {e}"))?
        };
        if bytes.is_empty() {
            return Ok(Sent::Done);
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
                Ok(Sent::More)
            }
            // Only the agent writes now: a size past this patch's start is this patch
            // (applied, its answer lost), one before it is GitLab's log losing bytes.
            PatchOutcome::RangeMismatch { offset } => {
                shared.sent = offset;
                Ok(Sent::More)
            }
            other => {
                drop(shared);
                self.unsent(other).await
            }
        }
    }

    async fn heartbeat(&self) {
        let (checksum, bytesize) = self.output().await;
        let request = UpdateJobRequest {
            info: self.target.info.clone(),
            token: self.target.token.clone(),
            state: JobState::Running,
            failure_reason: None,
            checksum: None,
            output: checksum.map(|checksum| TraceOutput { checksum, bytesize }),
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
                Ok(Sent::Done) => return Ok(()),
                Ok(Sent::More) => {}
                Ok(Sent::Waiting) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
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
        let failure_reason = final_state
            .failure_reason
            .map(|r| r.for_gitlab(&self.target.supported_failure_reasons));
        let mut failures = 0u32;
        loop {
            let result: Result<(), String> = match self.flush_trace().await {
                Err(error) => Err(error),
                Ok(()) => {
                    let (checksum, bytesize) = self.output().await;
                    let request = UpdateJobRequest {
                        info: self.target.info.clone(),
                        token: self.target.token.clone(),
                        state: final_state.state,
                        failure_reason,
                        checksum: checksum.clone(),
                        output: checksum.map(|checksum| TraceOutput { checksum, bytesize }),
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
                            // From the start again, claim included: GitLab's log is empty.
                            let mut shared = self.shared.lock().await;
                            shared.sent = 0;
                            if shared.gap.unknown > 0 {
                                drop(shared);
                                return self.report(false, false, Some("GitLab refused the log's checksum, and the manager's lines it had cannot be sent again".to_owned())).await;
                            }
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
