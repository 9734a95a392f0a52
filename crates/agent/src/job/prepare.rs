//! "Preparing environment": the directories and the file variables.

use std::path::Path;

use podrunner_gitlab::api::FailureReason;
use podrunner_gitlab::log;

use crate::variables::Variable;

use super::context::Job;
use super::outcome::Outcome;
use super::stop::Phase;

impl Job {
    pub(super) async fn prepare(&mut self) -> Result<(), Outcome> {
        if let Some(outcome) = self.stop_now(Phase::Preparation) {
            return Err(outcome);
        }
        // "Preparing environment" was opened with the header (write_opening).
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        self.out.line(&format!("Running on {host}..."));
        let created = std::fs::create_dir_all(&self.spec.builds_dir)
            .and_then(|_| create_private_dir(&self.temp_dir));
        self.section_end("prepare_script");
        created.map_err(|e| Outcome::Failed {
            reason: FailureReason::RunnerSystemFailure,
            exit_code: None,
            message: format!("cannot prepare {}: {e}", self.temp_dir.display()),
        })?;
        self.write_file_variables()
    }

    /// File variables become files in the temp dir named by their key, and the variable
    /// their path. gitlab-runner joins the key into the path unchecked and then fails the
    /// script at `export` (`Variable` in `shells/bash.go`); a key that is not a shell name is
    /// refused here before it touches the filesystem.
    pub(super) fn write_file_variables(&mut self) -> Result<(), Outcome> {
        use std::os::unix::fs::OpenOptionsExt;
        let files: Vec<(String, String)> = self
            .variables
            .effective()
            .into_iter()
            .filter(|v| v.file)
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        for (key, value) in files {
            if !crate::script::is_shell_name(&key) {
                let message = format!(
                    "the file variable {key:?} cannot be exported or written: a variable name is letters, digits and `_`, not starting with a digit; rename the variable"
                );
                self.out.raw(&log::error_line(&message));
                return Err(Outcome::Failed {
                    reason: FailureReason::ScriptFailure,
                    exit_code: None,
                    message,
                });
            }
            let path = self.temp_dir.join(&key);
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, value.as_bytes()));
            if let Err(e) = written {
                return Err(Outcome::Failed {
                    reason: FailureReason::RunnerSystemFailure,
                    exit_code: None,
                    message: format!("cannot write file variables: {}: {e}", path.display()),
                });
            }
            self.variables.push(Variable {
                file: false,
                ..Variable::runner(&key, path.display().to_string())
            });
        }
        Ok(())
    }
}

pub(super) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
