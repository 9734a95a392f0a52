//! "Getting source from Git repository": the git CLI or the built-in git.

use std::path::PathBuf;

use podrunner_gitlab::ClientOptions;
use podrunner_gitlab::api::FailureReason;
use podrunner_gitlab::log;

use crate::process::{self, ProcessOutcome};
use crate::sources::{self, Strategy};

use super::context::Job;
use super::outcome::Outcome;
use super::stop::Phase;

impl Job {
    pub(super) async fn get_sources(&mut self) -> Result<(), Outcome> {
        if let Some(outcome) = self.stop_now(Phase::Preparation) {
            return Err(outcome);
        }
        self.section_start("get_sources", "Getting source from Git repository");
        let result = self.fetch_sources().await;
        self.section_end("get_sources");
        result
    }

    pub(super) async fn fetch_sources(&mut self) -> Result<(), Outcome> {
        let system = |message: String| Outcome::Failed {
            reason: FailureReason::RunnerSystemFailure,
            exit_code: None,
            message,
        };
        let job = &self.spec.job.job;
        let variables = self.variables.clone();
        let plan = sources::plan(
            &job.git_info,
            job.token.expose(),
            job.allow_git_fetch,
            |k| variables.get(k).map(str::to_owned),
            self.spec.clone_url.as_deref(),
        )
        .map_err(|e| Outcome::Failed {
            reason: FailureReason::RunnerConfigurationError,
            exit_code: None,
            message: e.to_string(),
        })?;
        let mut pre: Vec<String> = self.spec.pre_get_sources_script.iter().cloned().collect();
        let mut post: Vec<String> = self.spec.post_get_sources_script.iter().cloned().collect();
        for hook in &job.hooks {
            match hook.name.as_str() {
                "pre_get_sources_script" => pre.extend(hook.script.iter().cloned()),
                "post_get_sources_script" => post.extend(hook.script.iter().cloned()),
                _ => {}
            }
        }
        let builds_dir = self.spec.builds_dir.clone();
        if !pre.is_empty() {
            self.hook("pre_get_sources_script", &pre, &builds_dir)
                .await?;
        }
        match plan.strategy {
            Strategy::None => {
                std::fs::create_dir_all(&self.project_dir).map_err(|e| {
                    system(format!("cannot create {}: {e}", self.project_dir.display()))
                })?;
                self.out.line("Skipping Git repository setup");
            }
            Strategy::Empty => {
                let _ = std::fs::remove_dir_all(&self.project_dir);
                std::fs::create_dir_all(&self.project_dir).map_err(|e| {
                    system(format!("cannot create {}: {e}", self.project_dir.display()))
                })?;
                self.out
                    .line("Skipping Git repository setup and creating an empty build directory");
            }
            Strategy::Clone | Strategy::Fetch if which("git").is_none() => {
                if plan.strategy == Strategy::Clone {
                    let _ = std::fs::remove_dir_all(&self.project_dir);
                }
                self.builtin_fetch(plan).await?;
            }
            Strategy::Clone | Strategy::Fetch => {
                if plan.strategy == Strategy::Clone {
                    let _ = std::fs::remove_dir_all(&self.project_dir);
                }
                std::fs::create_dir_all(&self.project_dir).map_err(|e| {
                    system(format!("cannot create {}: {e}", self.project_dir.display()))
                })?;
                self.out.line(&if plan.depth > 0 {
                    format!("Fetching changes with git depth set to {}...", plan.depth)
                } else {
                    "Fetching changes...".to_owned()
                });
                let env = sources::git_environment(&plan, true);
                for (message, args) in sources::commands(&plan, &self.project_dir) {
                    if let Some(message) = message {
                        self.out.line(&message);
                    }
                    if args.is_empty() {
                        continue;
                    }
                    let mut command = tokio::process::Command::new("git");
                    command
                        .args(&args)
                        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .current_dir(&builds_dir);
                    let stop = self.stop(Phase::Preparation, None);
                    match process::run(command, &mut self.out.job, stop).await {
                        ProcessOutcome::Exited(0) => {}
                        ProcessOutcome::Exited(code) => {
                            return Err(Outcome::Failed {
                                reason: FailureReason::ScriptFailure,
                                exit_code: None,
                                message: format!(
                                    "git {} exited with code {code}",
                                    args.iter()
                                        .find(|a| !a.starts_with('-') && !a.contains('/'))
                                        .cloned()
                                        .unwrap_or_default()
                                ),
                            });
                        }
                        ProcessOutcome::Stopped(reason) => return Err(self.stopped(reason)),
                        ProcessOutcome::NotStarted(e) => {
                            return Err(system(format!("cannot run git: {e}")));
                        }
                    }
                }
            }
        }
        if !post.is_empty() {
            let project_dir = self.project_dir.clone();
            self.hook("post_get_sources_script", &post, &project_dir)
                .await?;
        }
        Ok(())
    }

    /// Sources with the git built into podrunner, for images without git.
    pub(super) async fn builtin_fetch(
        &mut self,
        plan: sources::SourcesPlan,
    ) -> Result<(), Outcome> {
        if plan.submodules != "none" {
            return Err(Outcome::Failed {
                reason: FailureReason::RunnerConfigurationError,
                exit_code: None,
                message: format!(
                    "GIT_SUBMODULE_STRATEGY={} needs the git CLI, which this image does not have: install git in the image or set GIT_SUBMODULE_STRATEGY=none",
                    plan.submodules
                ),
            });
        }
        self.out.line(&if plan.depth > 0 {
            format!(
                "Fetching changes with git depth set to {} (built-in git)...",
                plan.depth
            )
        } else {
            "Fetching changes (built-in git)...".to_owned()
        });
        let project_dir = self.project_dir.clone();
        let tls = podrunner_gitlab::client::tls_config(&ClientOptions {
            url: self.spec.gitlab.url.clone(),
            tls_ca_file: self.spec.gitlab.tls_ca_file.clone(),
            tls_cert_file: self.spec.gitlab.tls_cert_file.clone(),
            tls_key_file: self.spec.gitlab.tls_key_file.clone(),
            podrunner_version: String::new(),
        })
        .map_err(|e| Outcome::Failed {
            reason: FailureReason::RunnerConfigurationError,
            exit_code: None,
            message: e.to_string(),
        })?;
        let work = tokio::task::spawn_blocking(move || {
            let mut lines: Vec<String> = Vec::new();
            let result = crate::builtin_git::fetch_and_checkout(
                &plan,
                &project_dir,
                tls,
                &mut |line: &str| lines.push(line.to_owned()),
            );
            (lines, result)
        });
        let stop = self.stop(Phase::Preparation, None);
        let (lines, result) = tokio::select! {
            done = work => done.unwrap_or_else(|e| (Vec::new(), Err(format!("the built-in git stopped: {e}")))),
            reason = stop => return Err(self.stopped(reason)),
        };
        for line in lines {
            self.out.line(&line);
        }
        result.map_err(|message| {
            self.out.raw(&log::error_line(&message));
            Outcome::Failed {
                reason: FailureReason::ScriptFailure,
                exit_code: None,
                message,
            }
        })
    }
}

pub(super) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}
