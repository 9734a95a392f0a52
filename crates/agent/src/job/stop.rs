//! When a stage must stop: cancel, abort, timeouts and the runner's interrupt.

use podrunner_gitlab::RemoteControl;
use tokio::time::Instant;

use crate::process::StopReason;

use super::context::Job;
use super::outcome::Outcome;

/// When a stage is stopped by a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Before the user script: a graceful cancel stops everything.
    Preparation,
    /// The user script: a graceful cancel stops only the script.
    UserScript,
    /// after_script: already past any cancel.
    AfterScript,
}

impl Job {
    /// A future that resolves when the current stage must stop.
    pub(super) fn stop(
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
    pub(super) fn stop_now(&mut self, phase: Phase) -> Option<Outcome> {
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
}
