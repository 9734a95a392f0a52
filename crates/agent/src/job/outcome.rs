//! How a job ends: its outcome, the last lines of its log and the termination report.

use std::path::Path;

use podrunner_gitlab::api::FailureReason;
use podrunner_gitlab::log;

use crate::process::StopReason;
use crate::spec::TerminationReport;

use super::context::Job;

/// How the job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Success,
    Failed {
        reason: FailureReason,
        exit_code: Option<i32>,
        message: String,
    },
    Aborted,
}

impl Job {
    /// Turns a stop into the job's outcome, printing what happened.
    pub(super) fn stopped(&mut self, reason: StopReason) -> Outcome {
        match reason {
            StopReason::Canceled => {
                self.out
                    .raw(&log::warning_line("script canceled externally (UI, API)"));
                Outcome::Failed {
                    reason: FailureReason::JobCanceled,
                    exit_code: None,
                    message: "canceled".to_owned(),
                }
            }
            StopReason::Aborted => Outcome::Aborted,
            StopReason::JobTimeout => {
                self.out.raw(&log::error_line(
                    "Job's script could not run to completion because the timeout was exceeded",
                ));
                Outcome::Failed {
                    reason: FailureReason::JobExecutionTimeout,
                    exit_code: None,
                    message: format!(
                        "execution took longer than {} seconds",
                        self.timeout.as_secs()
                    ),
                }
            }
            StopReason::StageTimeout => {
                self.out.raw(&log::error_line("Job's script could not run to completion because the script timeout was exceeded"));
                Outcome::Failed {
                    reason: FailureReason::JobExecutionTimeout,
                    exit_code: None,
                    message: "script timeout exceeded".to_owned(),
                }
            }
            StopReason::Interrupted => {
                self.out
                    .raw(&log::error_line("the runner was stopped while the job ran"));
                Outcome::Failed {
                    reason: FailureReason::RunnerInterrupted,
                    exit_code: None,
                    message: "runner interrupted".to_owned(),
                }
            }
        }
    }

    pub(super) async fn finish(&mut self, outcome: Outcome) -> Outcome {
        self.section_start(
            "cleanup_file_variables",
            "Cleaning up project directory and file based variables",
        );
        let _ = std::fs::remove_dir_all(&self.temp_dir);
        self.section_end("cleanup_file_variables");
        match &self.fargate {
            Some(Ok(billing)) => {
                let cost = billing.cost(self.started.elapsed().as_secs_f64());
                self.out.line(&cost.log_line());
                self.fargate_cost = Some(cost);
            }
            Some(Err(problem)) => self.out.raw(&log::warning_line(problem)),
            None => {}
        }
        match &outcome {
            Outcome::Success => {
                self.out
                    .raw(&format!("{}Job succeeded{}\n", log::BOLD_GREEN, log::RESET))
            }
            Outcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                message,
                ..
            } => self.out.raw(&log::error_line(&format!(
                "Job failed (system failure): {message}"
            ))),
            Outcome::Failed { message, .. } => self
                .out
                .raw(&log::error_line(&format!("Job failed: {message}"))),
            Outcome::Aborted => self.out.raw(&log::error_line("Job failed: canceled")),
        }
        outcome
    }
}

pub(super) fn write_report(path: Option<&Path>, report: &TerminationReport) {
    let Ok(json) = serde_json::to_string(report) else {
        return;
    };
    if let Some(path) = path {
        let _ = std::fs::write(path, &json);
    }
    let termination_log = Path::new("/dev/termination-log");
    if termination_log.exists() {
        let _ = std::fs::write(termination_log, &json);
    }
}
