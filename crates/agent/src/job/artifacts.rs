//! Downloading the artifacts of dependencies and uploading the job's own.

use std::path::PathBuf;

use podrunner_gitlab::api::FailureReason;
use podrunner_gitlab::log;

use super::context::Job;
use super::outcome::Outcome;
use super::stop::Phase;

impl Job {
    pub(super) async fn download_artifacts(&mut self) -> Result<(), Outcome> {
        let dependencies: Vec<_> = self
            .spec
            .job
            .job
            .dependencies
            .iter()
            .filter(|d| {
                d.artifacts_file
                    .as_ref()
                    .is_some_and(|f| !f.filename.is_empty())
            })
            .cloned()
            .collect();
        if dependencies.is_empty() {
            return Ok(());
        }
        if let Some(outcome) = self.stop_now(Phase::Preparation) {
            return Err(outcome);
        }
        self.section_start("download_artifacts", "Downloading artifacts");
        let direct = self
            .variables
            .flag("FF_USE_DIRECT_DOWNLOAD")
            .or_else(|| {
                self.spec
                    .feature_flags
                    .get("FF_USE_DIRECT_DOWNLOAD")
                    .copied()
            })
            .unwrap_or(true);
        let mut result = Ok(());
        for dependency in dependencies {
            self.out.line(&format!(
                "Downloading artifacts for {} ({})...",
                dependency.name, dependency.id
            ));
            let archive = self
                .temp_dir
                .join(format!("artifacts-{}.zip", dependency.id));
            let outcome = self
                .client
                .download_artifact(dependency.id, &dependency.token, direct, &archive)
                .await;
            let failure = match outcome {
                podrunner_gitlab::client::DownloadOutcome::Downloaded { .. } => {
                    match crate::files::extract_zip(&archive, &self.project_dir) {
                        Ok(_) => {
                            self.out
                                .line("Downloading artifacts from coordinator... ok");
                            None
                        }
                        Err(e) => Some(format!(
                            "cannot extract the artifacts of {}: {e}",
                            dependency.name
                        )),
                    }
                }
                podrunner_gitlab::client::DownloadOutcome::Forbidden => {
                    Some("Downloading artifacts from coordinator... forbidden".to_owned())
                }
                podrunner_gitlab::client::DownloadOutcome::NotFound => {
                    Some("Downloading artifacts from coordinator... not found".to_owned())
                }
                podrunner_gitlab::client::DownloadOutcome::Failed(e) => Some(format!(
                    "Downloading artifacts from coordinator... error: {e}"
                )),
            };
            let _ = std::fs::remove_file(&archive);
            if let Some(message) = failure {
                self.out.raw(&log::error_line(&message));
                result = Err(Outcome::Failed {
                    reason: FailureReason::ScriptFailure,
                    exit_code: None,
                    message,
                });
                break;
            }
        }
        self.section_end("download_artifacts");
        result
    }

    pub(super) async fn upload_artifacts(&mut self, success: bool) -> Result<(), Outcome> {
        let artifacts: Vec<_> = self
            .spec
            .job
            .job
            .artifacts
            .iter()
            .filter(|a| !a.paths.is_empty() || a.untracked)
            .filter(|a| match a.when.as_str() {
                "always" => true,
                "on_failure" => !success,
                _ => success,
            })
            .cloned()
            .collect();
        if artifacts.is_empty() {
            return Ok(());
        }
        let (stage, description) = if success {
            (
                "upload_artifacts_on_success",
                "Uploading artifacts for successful job",
            )
        } else {
            (
                "upload_artifacts_on_failure",
                "Uploading artifacts for failed job",
            )
        };
        self.section_start(stage, description);
        let mut result = Ok(());
        for artifact in artifacts {
            self.out.line("Uploading artifacts...");
            let untracked = if artifact.untracked {
                crate::files::untracked(&self.project_dir)
            } else {
                Vec::new()
            };
            let paths: Vec<String> = artifact
                .paths
                .iter()
                .map(|p| self.variables.expand(p))
                .collect();
            let exclude: Vec<String> = artifact
                .exclude
                .iter()
                .map(|p| self.variables.expand(p))
                .collect();
            let collected =
                match crate::files::collect(&self.project_dir, &paths, &exclude, &untracked) {
                    Ok(collected) => collected,
                    Err(e) => {
                        result = Err(Outcome::Failed {
                            reason: FailureReason::ScriptFailure,
                            exit_code: None,
                            message: e.to_string(),
                        });
                        self.out.raw(&log::error_line(&e.to_string()));
                        break;
                    }
                };
            for (pattern, count) in &collected.per_pattern {
                self.out.line(&format!(
                    "{pattern}: found {count} matching artifact files and directories"
                ));
                if *count == 0 {
                    self.out.raw(&log::warning_line(&format!("{pattern}: no matching files. Ensure that the artifact path is relative to the working directory ({})", self.project_dir.display())));
                }
            }
            let files: Vec<&PathBuf> = collected
                .entries
                .iter()
                .filter(|p| self.project_dir.join(p).is_file())
                .collect();
            if files.is_empty() {
                self.out.raw(&log::error_line("No files to upload"));
                continue;
            }
            let artifact_type = if artifact.artifact_type.is_empty() {
                "archive".to_owned()
            } else {
                artifact.artifact_type.clone()
            };
            let format = if artifact.artifact_format.is_empty() {
                "zip".to_owned()
            } else {
                artifact.artifact_format.clone()
            };
            let name = self.variables.expand(&artifact.name);
            let prepared = match format.as_str() {
                "zip" => {
                    let archive = self.temp_dir.join("artifacts.zip");
                    let level = crate::files::CompressionLevel::from_name(self.variables.get("ARTIFACT_COMPRESSION_LEVEL").unwrap_or("")).unwrap_or_else(|e| {
                        self.out.raw(&log::warning_line(&e.to_string()));
                        crate::files::CompressionLevel::Default
                    });
                    crate::files::write_zip_with(&self.project_dir, &collected.entries, &archive, &crate::files::ZipOptions { level }).map(|_| (archive, format!("{}.zip", if name.is_empty() { "artifacts" } else { &name })))
                }
                "gzip" if files.len() > 1 => {
                    let archive = self.temp_dir.join("artifacts.gz");
                    let sources: Vec<PathBuf> = files.iter().map(|f| self.project_dir.join(f)).collect();
                    let base = if name.is_empty() { "artifacts".to_owned() } else { name.clone() };
                    crate::files::write_gzip_members(&sources, &archive).map(|_| (archive, format!("{base}.gz")))
                }
                "gzip" | "raw" if files.len() == 1 => {
                    let source = self.project_dir.join(files[0]);
                    let base = files[0].file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                    if format == "gzip" {
                        let archive = self.temp_dir.join("artifacts.gz");
                        crate::files::write_gzip(&source, &archive).map(|_| (archive, format!("{base}.gz")))
                    } else {
                        Ok((source, base))
                    }
                }
                other => Err(crate::files::FilesError::Pattern { pattern: other.to_owned(), reason: "this artifact format needs files (raw: exactly one), or is not supported (zip, gzip, raw)".to_owned() }),
            };
            let (file, file_name) = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    self.out.raw(&log::error_line(&format!(
                        "cannot prepare the artifacts: {e}"
                    )));
                    result = Err(Outcome::Failed {
                        reason: FailureReason::ScriptFailure,
                        exit_code: None,
                        message: e.to_string(),
                    });
                    break;
                }
            };
            let upload = podrunner_gitlab::client::ArtifactUpload {
                format: Some(format.clone()),
                artifact_type: Some(artifact_type.clone()),
                expire_in: Some(artifact.expire_in.clone()).filter(|e| !e.is_empty()),
                file_name,
            };
            let job_id = self.spec.job.job.id;
            let token = self.spec.job.job.token.clone();
            let outcome = self
                .client
                .upload_artifact(job_id, &token, &file, &upload)
                .await;
            let message = format!("Uploading artifacts as \"{artifact_type}\" to coordinator...");
            match outcome {
                podrunner_gitlab::client::UploadOutcome::Uploaded => {
                    self.out.line(&format!("{message} 201 Created"))
                }
                other => {
                    let why = match other {
                        podrunner_gitlab::client::UploadOutcome::Forbidden => {
                            "403 Forbidden".to_owned()
                        }
                        podrunner_gitlab::client::UploadOutcome::TooLarge => {
                            "413 Request Entity Too Large".to_owned()
                        }
                        podrunner_gitlab::client::UploadOutcome::Failed(e) => e,
                        podrunner_gitlab::client::UploadOutcome::Uploaded => {
                            unreachable!("handled above")
                        }
                    };
                    self.out.raw(&log::error_line(&format!("{message} {why}")));
                    result = Err(Outcome::Failed {
                        reason: FailureReason::ScriptFailure,
                        exit_code: None,
                        message: format!("uploading artifacts failed: {why}"),
                    });
                }
            }
        }
        self.section_end(stage);
        result
    }
}
