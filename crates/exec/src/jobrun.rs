//! One job through the agent: its own tree, the payload GitLab would send (with the
//! job-level predefined variables and the dotenv variables of the jobs it takes artifacts
//! from), the cache plan the manager would resolve, and the agent process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use podrunner_gitlab::payload::{Cache, JobVariable};
use serde_json::{Value, json};

use crate::coordinator::Coordinator;
use crate::model::{self, Pipeline};
use crate::scheduler::{JobInput, Ran, RunFuture, Runner};
use crate::{dotenv, slug, state, worktree};

/// Runs jobs with `podrunner agent`.
pub(crate) struct AgentRunner {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) coordinator: Arc<Coordinator>,
    pub(crate) url: String,
    pub(crate) source: worktree::Source,
    pub(crate) scratch: PathBuf,
    pub(crate) artifacts_dir: PathBuf,
    pub(crate) cache_dir: PathBuf,
    pub(crate) extra: Vec<(String, String)>,
    pub(crate) agent_program: PathBuf,
    pub(crate) project_name: String,
    pub(crate) next_id: AtomicI64,
}

fn variable(key: &str, value: &str) -> JobVariable {
    JobVariable {
        key: key.to_owned(),
        value: value.to_owned(),
        public: true,
        file: false,
        masked: false,
        raw: true,
    }
}

impl Runner for AgentRunner {
    fn run(self: Arc<Self>, index: usize, input: JobInput) -> RunFuture {
        Box::pin(async move { self.run_job(index, input).await })
    }

    fn say(&self, text: &str) {
        self.coordinator.output.message(text);
    }
}

impl AgentRunner {
    fn id(&self) -> (i64, String) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (id, format!("glcbt-local-{id}-{:08x}", std::process::id()))
    }

    fn project_full_path(&self) -> String {
        format!("local/{}", self.project_name)
    }

    async fn run_job(&self, index: usize, input: JobInput) -> Ran {
        let job = &self.pipeline.jobs[index];
        let failed = |why: String| {
            self.say(&format!("ERROR: {why}\n"));
            Ran {
                success: false,
                exit_code: None,
                failure_reason: Some(why),
            }
        };
        let (id, token) = self.id();
        self.say(&format!(
            "\nRunning job {} (stage {})\n",
            job.name, job.stage
        ));
        let job_dir = self.scratch.join(format!("job-{id}"));
        let builds_dir = job_dir.join("builds");
        let tree = builds_dir.join(self.project_full_path());
        let source = self.source.clone();
        let made = tokio::task::spawn_blocking(move || source.materialize(&tree)).await;
        let project_dir = match made {
            Ok(Ok(dir)) => dir,
            Ok(Err(e)) => return failed(format!("cannot make the tree of {}: {e}", job.name)),
            Err(e) => return failed(format!("cannot make the tree of {}: {e}", job.name)),
        };
        let mut dependencies = Vec::new();
        let mut dependency_ids = Vec::new();
        let mut dotenv_variables = Vec::new();
        for name in &input.artifacts_from {
            let dir = self.artifacts_dir.join(state::component(name));
            if let Ok(metadata) = std::fs::metadata(dir.join("artifacts.zip")) {
                let (dependency_id, dependency_token) = self.id();
                self.coordinator
                    .register(dependency_id, name, &dependency_token);
                dependency_ids.push(dependency_id);
                dependencies.push(
                    json!({"id": dependency_id, "token": dependency_token, "name": name,
                    "artifacts_file": {"filename": "artifacts.zip", "size": metadata.len()}}),
                );
            }
            for (key, value) in dotenv::read(&dir.join(dotenv::FILE)).unwrap_or_default() {
                dotenv_variables.push(JobVariable {
                    raw: false,
                    ..variable(&key, &value)
                });
            }
        }
        self.coordinator.register(id, &job.name, &token);
        let variables = self.variables(job, id, &input, dotenv_variables);
        let cache = caches(&job.cache);
        let payload = self.payload(job, id, &token, variables, &cache, dependencies);
        let payload = match podrunner_gitlab::JobPayload::from_value(payload) {
            Ok(payload) => payload,
            Err(e) => return failed(format!("the payload of {} is not valid: {e}", job.name)),
        };
        let spec = podrunner_agent::AgentSpec {
            gitlab: podrunner_agent::GitlabConnection {
                url: self.url.clone(),
                ..Default::default()
            },
            job: payload,
            builds_dir,
            project_dir: Some(project_dir),
            temp_dir: Some(job_dir.join("tmp")),
            cache_dir: self.cache_dir.clone(),
            feature_flags: [("FF_TIMESTAMPS".to_owned(), false)].into(),
            runner_name: "podrunner exec".to_owned(),
            runner_short_token: "local".to_owned(),
            system_id: "r_localexec000".to_owned(),
            termination_report: Some(job_dir.join("report.json")),
            ..Default::default()
        };
        let spec_path = job_dir.join("spec.json");
        let written = serde_json::to_vec(&spec)
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_private(&spec_path, &bytes));
        if let Err(e) = written {
            return failed(format!("cannot write {}: {e}", spec_path.display()));
        }
        let status = tokio::process::Command::new(&self.agent_program)
            .arg("agent")
            .arg("--spec")
            .arg(&spec_path)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await;
        for dependency_id in dependency_ids {
            self.coordinator.forget(dependency_id);
        }
        let reported = self.coordinator.finish(id);
        match (reported.state.as_deref(), status) {
            (Some("success"), _) => Ran {
                success: true,
                exit_code: reported.exit_code,
                failure_reason: None,
            },
            (Some(_), _) => Ran {
                success: false,
                exit_code: reported.exit_code,
                failure_reason: reported.failure_reason,
            },
            (None, Ok(status)) => {
                failed(format!("the agent ended ({status}) without a final state"))
            }
            (None, Err(e)) => failed(format!(
                "cannot start the agent {}: {e}",
                self.agent_program.display()
            )),
        }
    }

    /// The payload's variables, lowest precedence first (the agent takes the last of a
    /// name): predefined (push, then job), the job's, dotenv of its dependencies, `--var`.
    fn variables(
        &self,
        job: &model::Job,
        id: i64,
        input: &JobInput,
        dotenv: Vec<JobVariable>,
    ) -> Vec<JobVariable> {
        let mut out = vec![
            variable("CI", "true"),
            variable("GITLAB_CI", "true"),
            variable("CI_PIPELINE_ID", "1"),
            variable("CI_PIPELINE_IID", "1"),
            variable("CI_PROJECT_NAME", &self.project_name),
            variable("CI_PROJECT_PATH", &self.project_full_path()),
        ];
        // The project directory is the job's own tree, which the agent sets; the pipeline's
        // is the user's checkout.
        out.extend(
            self.pipeline
                .predefined
                .iter()
                .filter(|v| v.key != "CI_PROJECT_DIR")
                .cloned(),
        );
        out.extend([
            variable("CI_JOB_ID", &id.to_string()),
            variable("CI_JOB_NAME", &job.name),
            variable("CI_JOB_NAME_SLUG", &slug::job_name(&job.name)),
            variable("CI_JOB_STAGE", &job.stage),
            // gitlab-runner sets it to `running` for the script; the agent sets the final
            // status for after_script.
            variable("CI_JOB_STATUS", "running"),
            variable("GIT_STRATEGY", "none"),
        ]);
        if input.manual {
            out.push(variable("CI_JOB_MANUAL", "true"));
        }
        if let Some((index, total)) = job.parallel {
            out.push(variable("CI_NODE_INDEX", &index.to_string()));
            out.push(variable("CI_NODE_TOTAL", &total.to_string()));
        } else {
            out.push(variable("CI_NODE_TOTAL", "1"));
        }
        if let Some(environment) = &job.environment {
            out.push(variable("CI_ENVIRONMENT_NAME", &environment.name));
            out.push(variable(
                "CI_ENVIRONMENT_SLUG",
                &slug::environment(&environment.name),
            ));
            if let Some(url) = &environment.url {
                out.push(variable("CI_ENVIRONMENT_URL", url));
            }
            out.push(variable(
                "CI_ENVIRONMENT_ACTION",
                environment.action.as_deref().unwrap_or("start"),
            ));
            out.push(variable("CI_ENVIRONMENT_TIER", &environment.tier));
        }
        out.extend(job.variables.iter().cloned());
        out.extend(dotenv);
        for (key, value) in &self.extra {
            out.push(JobVariable {
                raw: false,
                ..variable(key, value)
            });
        }
        out
    }

    fn payload(
        &self,
        job: &model::Job,
        id: i64,
        token: &str,
        variables: Vec<JobVariable>,
        cache: &[Cache],
        dependencies: Vec<Value>,
    ) -> Value {
        let sha = self
            .pipeline
            .predefined
            .iter()
            .rev()
            .find(|v| v.key == "CI_COMMIT_SHA")
            .map(|v| v.value.clone())
            .unwrap_or_else(|| "0".repeat(40));
        let git_ref = self
            .pipeline
            .predefined
            .iter()
            .rev()
            .find(|v| v.key == "CI_COMMIT_REF_NAME")
            .map(|v| v.value.clone())
            .unwrap_or_else(|| "local".to_owned());
        let timeout = job.timeout.unwrap_or(3600);
        let allow_failure = job.allow_failure != model::AllowFailure::No;
        let mut steps = vec![json!({"name": "script",
            "script": job.before_script.iter().chain(&job.script).collect::<Vec<_>>(),
            "when": "on_success", "timeout": timeout, "allow_failure": allow_failure})];
        if !job.after_script.is_empty() {
            steps.push(json!({"name": "after_script", "script": job.after_script,
                "when": "always", "timeout": timeout, "allow_failure": true}));
        }
        json!({
            "id": id,
            "token": token,
            "allow_git_fetch": false,
            "job_info": {"name": job.name, "stage": job.stage, "project_id": 0,
                "project_name": self.project_name, "project_full_path": self.project_full_path(),
                "pipeline_id": 1},
            "git_info": {"repo_url": "", "ref": git_ref, "sha": sha, "ref_type": "branch",
                "refspecs": [], "depth": 0},
            "runner_info": {"timeout": timeout},
            "variables": variables,
            "steps": steps,
            "image": {"name": job.image.clone().unwrap_or_default()},
            "artifacts": job.artifacts,
            "cache": cache,
            "dependencies": dependencies,
            "features": {"trace_sections": true, "failure_reasons": ["script_failure",
                "runner_system_failure", "job_execution_timeout", "unknown_failure"]}
        })
    }
}

/// The payload's caches: GitLab sends the key `default` when `cache:key` is not given
/// (`Gitlab::Ci::Config::Entry::Cache`), so jobs without a key share one cache.
fn caches(cache: &[Cache]) -> Vec<Cache> {
    cache
        .iter()
        .map(|c| Cache {
            key: if c.key.is_empty() {
                "default".to_owned()
            } else {
                c.key.clone()
            },
            ..c.clone()
        })
        .collect()
}

/// Writes `bytes` to a new file readable only by this user (the spec holds the job token).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use podrunner_agent::cache_plan::{CacheLocation, CacheObject};
    use podrunner_agent::variables::{Variable, Variables};

    #[test]
    fn caches_default_to_the_shared_key_and_plan_local_archives() {
        let cache = caches(&[
            Cache {
                paths: vec!["deps".into()],
                ..Cache::default()
            },
            Cache {
                key: "$CI_JOB_NAME-x".into(),
                policy: "pull".into(),
                fallback_keys: vec!["main".into()],
                paths: vec!["p".into()],
                ..Cache::default()
            },
        ]);
        assert_eq!(cache[0].key, "default");
        let vars = [
            variable("CI_JOB_NAME", "lint"),
            variable("CACHE_FALLBACK_KEY", "fb"),
        ];
        // exec leaves `AgentSpec::caches` empty: the agent plans its local caches with the
        // manager's planner, from the payload this module writes.
        let payload = podrunner_gitlab::JobPayload::from_value(json!({
            "id": 1, "token": "t",
            "job_info": {"name": "lint", "project_full_path": "local/p"},
            "git_info": {"ref": "main"},
            "cache": cache,
        }))
        .unwrap();
        let mut expander = Variables::new();
        for v in &vars {
            expander.push(Variable::from_payload(v));
        }
        let plan = podrunner_agent::cache_plan::plan(&payload, &expander);
        let path = |o: &CacheObject| match &o.location {
            CacheLocation::Local(p) => p.display().to_string(),
            CacheLocation::Remote { .. } => panic!("local only"),
        };
        assert_eq!(plan[0].key, "default");
        assert_eq!(path(&plan[0].restore[0]), "local/p/default/cache.zip");
        assert_eq!(
            plan[0].save.as_ref().map(path).as_deref(),
            Some("local/p/default/cache.zip")
        );
        assert_eq!(plan[1].key, "lint-x");
        let keys: Vec<_> = plan[1].restore.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["lint-x", "main", "fb"]);
        assert!(plan[1].save.is_none(), "policy pull does not push");
    }
}
