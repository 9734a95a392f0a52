//! The pipeline as GitLab would create it for one push of the local repository: what
//! `pipeline` builds from `.gitlab-ci.yml` (after `include`, `extends`, `!reference`,
//! `default`, `inherit`, `workflow`, `rules`/`only`/`except` and `parallel`) and what the
//! scheduler runs. Nothing here is YAML any more: every choice GitLab makes when it creates
//! the pipeline has been made.
//!
//! The builder's entry point is `pipeline::build(&BuildOptions) -> Result<Pipeline,
//! PipelineError>`, with `BuildOptions { file, variables (from --var), working_tree }`.

use podrunner_gitlab::payload::{Artifact, Cache, JobVariable};

/// When a job runs relative to the jobs before it (`when:`, after `rules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// `on_success` (the default): every job it waits for succeeded or was allowed to fail.
    OnSuccess,
    /// `on_failure`: at least one job it waits for failed.
    OnFailure,
    /// `always`.
    Always,
    /// `manual`: runs only when named on the command line (or `--manual`).
    Manual,
    /// `delayed` with `start_in` as written.
    Delayed {
        /// `start_in`, e.g. `30 minutes`.
        start_in: String,
    },
}

/// `allow_failure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowFailure {
    /// A failure fails the pipeline.
    No,
    /// A failure is a warning.
    Yes,
    /// Only these exit codes are allowed (`allow_failure:exit_codes`).
    ExitCodes(Vec<i32>),
}

/// One entry of `needs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The job needed (its full name, e.g. `build 1/2` after `parallel`).
    pub job: String,
    /// `artifacts:` (default true): download its artifacts.
    pub artifacts: bool,
    /// `optional:`: no error when the job is not in the pipeline.
    pub optional: bool,
}

/// `environment`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Environment {
    /// `name`, expanded.
    pub name: String,
    /// `url`, expanded.
    pub url: Option<String>,
    /// `action` (`start`, `prepare`, `stop`, `verify`, `access`).
    pub action: Option<String>,
    /// `deployment_tier`, or the tier GitLab guesses from the name.
    pub tier: String,
}

/// One job of the pipeline, ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The name as GitLab shows it (`test 1/3`, `test: [linux, amd64]`).
    pub name: String,
    /// The name in the file before `parallel` (`CI_JOB_NAME` is `name`; this is for `--list`
    /// and for matching `needs` that name the whole parallel job).
    pub base_name: String,
    /// Stage.
    pub stage: String,
    /// `image` as written (informational: exec runs on this machine).
    pub image: Option<String>,
    /// `services` names (they need a container runtime).
    pub services: Vec<String>,
    /// The job's variables (job, then inherited global, then `parallel:matrix`), as the
    /// payload carries them; predefined `CI_*` variables are added by the runner side.
    pub variables: Vec<JobVariable>,
    /// `before_script` (after `default` and `inherit`).
    pub before_script: Vec<String>,
    /// `script`.
    pub script: Vec<String>,
    /// `after_script`.
    pub after_script: Vec<String>,
    /// Artifacts as the payload carries them (archive entry, then one entry per report).
    pub artifacts: Vec<Artifact>,
    /// Caches as the payload carries them (key already computed: `key:files`, `prefix`).
    pub cache: Vec<Cache>,
    /// `needs`; `None` means the job waits for every job of earlier stages.
    pub needs: Option<Vec<Need>>,
    /// `dependencies`; `None` means every job it waits for.
    pub dependencies: Option<Vec<String>>,
    /// `when` after `rules`.
    pub when: When,
    /// `allow_failure` after `rules`.
    pub allow_failure: AllowFailure,
    /// `environment`.
    pub environment: Option<Environment>,
    /// `(CI_NODE_INDEX, CI_NODE_TOTAL)` for `parallel`.
    pub parallel: Option<(u32, u32)>,
    /// `timeout` in seconds.
    pub timeout: Option<u64>,
    /// `retry: max` (0 to 2).
    pub retry: u32,
}

/// The pipeline.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    /// Stages in order, `.pre` first and `.post` last.
    pub stages: Vec<String>,
    /// `workflow:name`, expanded.
    pub name: Option<String>,
    /// Global variables (with `workflow:rules` variables), as the payload carries them.
    pub variables: Vec<JobVariable>,
    /// The predefined variables of a push pipeline of the local repository (`CI_COMMIT_*`,
    /// `CI_DEFAULT_BRANCH`, `CI_PIPELINE_SOURCE`, `CI_PROJECT_*`, ...). Job-level ones
    /// (`CI_JOB_NAME`, `CI_NODE_INDEX`, `CI_ENVIRONMENT_*`, `CI_JOB_STATUS`) are added per job
    /// by the scheduler.
    pub predefined: Vec<JobVariable>,
    /// The jobs GitLab would create, in stage order then file order.
    pub jobs: Vec<Job>,
    /// What the user should know: ignored keywords (each said once), duplicate keys.
    pub warnings: Vec<String>,
}
