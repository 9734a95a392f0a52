//! `podrunner exec`: runs a local `.gitlab-ci.yml` without GitLab, through the same agent
//! that runs jobs for GitLab, the way GitLab would run the pipeline of a push: every job in
//! its own fresh tree, artifacts and dotenv variables passed as `needs`/`dependencies` say, a
//! cache shared by key, jobs processed as GitLab processes them, up to `--concurrency` at once.
//! A small coordinator on the loopback interface speaks the runner API to the agents.

pub mod context;
mod coordinator;
mod dotenv;
mod jobrun;
pub mod model;
pub mod pipeline;
mod render;
pub mod scheduler;
mod slug;
mod state;
pub mod status;
pub mod summary;
mod worktree;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

pub use pipeline::PipelineError;
pub use scheduler::{JobSummary, Outcome, Selection, SelectionError};
pub use status::JobStatus;

/// Why a local pipeline could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The pipeline file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The pipeline is not valid.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The command line names jobs or stages the pipeline does not have.
    #[error(transparent)]
    Selection(#[from] SelectionError),
    /// The jobs' trees cannot be made.
    #[error("{0}")]
    Tree(String),
    /// Something local failed.
    #[error("{0}")]
    Io(String),
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The pipeline file; its directory is the project.
    pub file: PathBuf,
    /// Which jobs (`jobs`, `--needs`, `--stage`, `--manual`, `--without-services`).
    pub selection: Selection,
    /// `--var KEY=VALUE`: pipeline variables, above every other.
    pub variables: Vec<(String, String)>,
    /// `--working-tree`: jobs get the uncommitted changes too, not only HEAD.
    pub working_tree: bool,
    /// `--concurrency`; `None` is the number of cores.
    pub concurrency: Option<usize>,
    /// Where artifacts are kept between jobs and runs.
    pub artifacts_dir: Option<PathBuf>,
    /// The podrunner binary, started as the agent.
    pub agent_program: PathBuf,
    /// Keep colours (a terminal).
    pub color: bool,
}

/// Reads the pipeline file and runs it, writing the traces and the summary to `out`.
pub async fn run(options: &ExecOptions, out: Box<dyn Write + Send>) -> Result<Outcome, ExecError> {
    let file = std::path::absolute(&options.file).map_err(|e| ExecError::Io(e.to_string()))?;
    let project = file
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let pipeline = pipeline::build(&pipeline::BuildOptions {
        file,
        variables: options.variables.clone(),
        working_tree: options.working_tree,
    })?;
    run_pipeline(pipeline, &project, options, out).await
}

/// Runs a resolved pipeline of the project at `project` (`options.file` is not read).
pub async fn run_pipeline(
    pipeline: model::Pipeline,
    project: &Path,
    options: &ExecOptions,
    out: Box<dyn Write + Send>,
) -> Result<Outcome, ExecError> {
    let (in_run, played) = scheduler::select(&pipeline, &options.selection)?;
    let source = worktree::Source::of(project, options.working_tree).map_err(ExecError::Tree)?;
    let artifacts_dir = options
        .artifacts_dir
        .clone()
        .map(Ok)
        .unwrap_or_else(|| state::default_artifacts_dir(project))
        .map_err(ExecError::Io)?;
    std::fs::create_dir_all(&artifacts_dir)
        .map_err(|e| ExecError::Io(format!("{}: {e}", artifacts_dir.display())))?;
    // A pipeline's jobs start without artifacts of their own: what an earlier run of the
    // same job left must not reach the jobs after it. Jobs outside the run keep theirs.
    for (job, _) in pipeline.jobs.iter().zip(&in_run).filter(|(_, r)| **r) {
        let dir = artifacts_dir.join(state::component(&job.name));
        for file in ["artifacts.zip", dotenv::FILE] {
            let _ = std::fs::remove_file(dir.join(file));
        }
    }
    let concurrency = options.concurrency.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let running = in_run.iter().filter(|r| **r).count();
    let output = Arc::new(render::Output::new(
        out,
        options.color,
        concurrency.min(running) > 1,
    ));
    for warning in &pipeline.warnings {
        output.message(&format!("WARNING: {warning}\n"));
    }
    let mut images: Vec<&str> = Vec::new();
    for (job, _) in pipeline.jobs.iter().zip(&in_run).filter(|(_, r)| **r) {
        if let Some(image) = job.image.as_deref().filter(|i| !images.contains(i)) {
            images.push(image);
        }
    }
    if !images.is_empty() {
        output.message(&format!(
            "NOTE: image ({}) is ignored: podrunner exec runs the jobs in this machine's shell\n",
            images.join(", ")
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("podrunner-exec-")
        .tempdir()
        .map_err(|e| ExecError::Io(e.to_string()))?;
    let coordinator = Arc::new(coordinator::Coordinator::new(
        output.clone(),
        artifacts_dir.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| ExecError::Io(format!("cannot listen on loopback: {e}")))?;
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| ExecError::Io(e.to_string()))?
    );
    let server =
        tokio::spawn(axum::serve(listener, coordinator::router(coordinator.clone())).into_future());
    let project_name = project
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".to_owned());
    let pipeline = Arc::new(pipeline);
    let runner = Arc::new(jobrun::AgentRunner {
        pipeline: pipeline.clone(),
        coordinator,
        url,
        source,
        scratch: scratch.path().to_owned(),
        cache_dir: artifacts_dir.join(".cache"),
        artifacts_dir,
        extra: options.variables.clone(),
        agent_program: options.agent_program.clone(),
        project_name,
        next_id: AtomicI64::new(1),
    });
    let outcome = scheduler::run(
        pipeline,
        in_run,
        played,
        &options.selection,
        concurrency,
        runner,
    )
    .await;
    output.message(&summary::table(&outcome));
    server.abort();
    Ok(outcome)
}
