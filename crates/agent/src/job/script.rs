//! Stage scripts: writing and running them, the hooks and `after_script`.

use std::path::Path;
use std::time::Duration;

use podrunner_gitlab::api::FailureReason;
use podrunner_gitlab::log;
use tokio::time::Instant;

use crate::process::{self, ProcessOutcome, StopReason};
use crate::script::{StageScript, render};

use super::context::{Job, deadline_after, go_duration};
use super::outcome::Outcome;
use super::stop::Phase;

/// `after_script` gets this long unless `RUNNER_AFTER_SCRIPT_TIMEOUT` says otherwise.
pub(super) const DEFAULT_AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

impl Job {
    /// Runs `commands` as one script in the project directory (or `workdir`).
    pub(super) async fn run_script(
        &mut self,
        stage: &str,
        commands: &[String],
        workdir: &Path,
        phase: Phase,
        stage_deadline: Option<Instant>,
    ) -> ProcessOutcome {
        let exports = self.exports();
        let text = render(&StageScript {
            shell: self.shell,
            exports: exports
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            workdir: &workdir.display().to_string(),
            commands: commands.iter().map(String::as_str).collect(),
            debug_trace: self.debug_trace,
        });
        let path = self.temp_dir.join(format!("{stage}.sh"));
        if let Err(e) = write_private(&path, &text) {
            return ProcessOutcome::NotStarted(format!("{}: {e}", path.display()));
        }
        let mut command = tokio::process::Command::new(self.shell.program());
        command.arg(&path).current_dir(&self.spec.builds_dir);
        let stop = self.stop(phase, stage_deadline);
        let outcome = process::run(command, &mut self.out.job, stop).await;
        let _ = std::fs::remove_file(&path);
        outcome
    }

    pub(super) async fn script_stage(
        &mut self,
        stage: &str,
        description: &str,
        commands: &[String],
        phase: Phase,
        stage_deadline: Option<Instant>,
    ) -> ProcessOutcome {
        self.section_start(stage, description);
        let workdir = self.project_dir.clone();
        let outcome = self
            .run_script(stage, commands, &workdir, phase, stage_deadline)
            .await;
        self.section_end(stage);
        outcome
    }

    pub(super) async fn hook(
        &mut self,
        stage: &str,
        commands: &[String],
        workdir: &Path,
    ) -> Result<(), Outcome> {
        match self
            .run_script(stage, commands, workdir, Phase::Preparation, None)
            .await
        {
            ProcessOutcome::Exited(0) => Ok(()),
            ProcessOutcome::Exited(code) => Err(Outcome::Failed {
                reason: FailureReason::ScriptFailure,
                exit_code: Some(code),
                message: format!("{stage} exited with code {code}"),
            }),
            ProcessOutcome::Stopped(reason) => Err(self.stopped(reason)),
            ProcessOutcome::NotStarted(e) => Err(Outcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                exit_code: None,
                message: format!("cannot run {stage}: {e}"),
            }),
        }
    }

    pub(super) async fn after_script(&mut self, outcome: &Outcome) {
        let Some(step) = self
            .spec
            .job
            .job
            .steps
            .iter()
            .find(|s| s.name == "after_script")
            .cloned()
        else {
            return;
        };
        if step.script.iter().all(|l| l.trim().is_empty()) {
            return;
        }
        let status = match outcome {
            Outcome::Success => "success",
            Outcome::Failed {
                reason: FailureReason::JobCanceled,
                ..
            } => "canceled",
            _ => "failed",
        };
        self.variables.set("CI_JOB_STATUS", status);
        let timeout = self
            .variables
            .get("RUNNER_AFTER_SCRIPT_TIMEOUT")
            .and_then(go_duration)
            .unwrap_or(DEFAULT_AFTER_SCRIPT_TIMEOUT);
        self.section_start("after_script", "Running after_script");
        self.out.line("Running after script...");
        let workdir = self.project_dir.clone();
        let result = self
            .run_script(
                "after_script",
                &step.script,
                &workdir,
                Phase::AfterScript,
                Some(deadline_after(timeout)),
            )
            .await;
        match result {
            ProcessOutcome::Exited(0) => {}
            ProcessOutcome::Exited(code) => self.out.raw(&log::warning_line(&format!("after_script failed, but job will continue unaffected: exit code {code}"))),
            ProcessOutcome::Stopped(StopReason::StageTimeout) => self.out.raw(&log::warning_line("after_script failed, but job will continue unaffected: the after_script timeout was exceeded")),
            ProcessOutcome::Stopped(_) => self.out.raw(&log::warning_line("after_script was stopped")),
            ProcessOutcome::NotStarted(e) => self.out.raw(&log::warning_line(&format!("after_script could not start: {e}"))),
        }
        self.section_end("after_script");
    }
}

pub(super) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())
}
