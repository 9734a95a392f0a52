//! Runs a resolved pipeline the way GitLab processes it (see `status`): which jobs are in
//! this run, in what order they become ready, what is skipped, and up to how many run at
//! once. Running one job is the `Runner`'s business (the agent, or a test's stand-in).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{AllowFailure, Job, Pipeline, When};
use crate::status::{Composite, JobStatus, composite, runs_after};

/// How one attempt of a job ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ran {
    /// The job passed.
    pub success: bool,
    /// The script's exit code, when it had one.
    pub exit_code: Option<i32>,
    /// GitLab's failure reason, or exec's own words.
    pub failure_reason: Option<String>,
}

/// What a job is given to run.
#[derive(Debug, Clone, Default)]
pub struct JobInput {
    /// Jobs whose artifacts (and dotenv variables) the job receives.
    pub artifacts_from: Vec<String>,
    /// The attempt, from 1 (`retry`).
    pub attempt: u32,
    /// A manual job that was played.
    pub manual: bool,
}

/// A boxed future of one attempt.
pub type RunFuture = Pin<Box<dyn Future<Output = Ran> + Send>>;

/// Runs one job and prints exec's own messages.
pub trait Runner: Send + Sync + 'static {
    /// Runs job `index` of the pipeline.
    fn run(self: Arc<Self>, index: usize, input: JobInput) -> RunFuture;
    /// Prints a message of exec (whole lines).
    fn say(&self, text: &str);
}

/// Which jobs to run and how.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Jobs named on the command line (a parallel job's base name names all its jobs).
    pub jobs: Vec<String>,
    /// `--needs`: also run what the named jobs wait for, transitively.
    pub needs: bool,
    /// `--stage`: the jobs of this stage.
    pub stage: Option<String>,
    /// `--manual`: `Some(empty)` plays every manual job, `Some(names)` those.
    pub manual: Option<Vec<String>>,
    /// Run jobs with `services` without them.
    pub without_services: bool,
}

/// How one job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    /// Job name.
    pub name: String,
    /// Stage.
    pub stage: String,
    /// Final status.
    pub status: JobStatus,
    /// Time from start to end (zero when it did not run).
    pub duration: Duration,
    /// Why it failed, was skipped or did not run.
    pub failure_reason: Option<String>,
}

/// The run's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every job of the run, in pipeline order.
    pub jobs: Vec<JobSummary>,
    /// The pipeline would pass (its composite status is `success`).
    pub passed: bool,
}

/// Why the selection names nothing runnable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// A named job is not in the pipeline.
    #[error("{0:?} is not a job of the pipeline (jobs: {1})")]
    UnknownJob(String, String),
    /// `--stage` names no stage with jobs.
    #[error("--stage {0:?}: no job of the pipeline is in that stage (stages: {1})")]
    UnknownStage(String, String),
}

fn names(job: &Job, name: &str) -> bool {
    job.name == name || job.base_name == name
}

fn stage_index(pipeline: &Pipeline, job: &Job) -> usize {
    pipeline
        .stages
        .iter()
        .position(|s| *s == job.stage)
        .unwrap_or(usize::MAX)
}

/// The jobs `index` waits for: its `needs` (those in the pipeline), else every job of the
/// earlier stages.
fn waits_for(pipeline: &Pipeline, index: usize) -> Vec<usize> {
    let job = &pipeline.jobs[index];
    match &job.needs {
        Some(needs) => pipeline
            .jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| needs.iter().any(|n| names(j, &n.job)))
            .map(|(i, _)| i)
            .collect(),
        None => {
            let stage = stage_index(pipeline, job);
            (0..pipeline.jobs.len())
                .filter(|i| stage_index(pipeline, &pipeline.jobs[*i]) < stage)
                .collect()
        }
    }
}

/// The jobs whose artifacts job `index` receives: `needs` with `artifacts: true` (else every
/// job of the earlier stages), narrowed by `dependencies` when given.
pub fn artifact_sources(pipeline: &Pipeline, index: usize) -> Vec<String> {
    let job = &pipeline.jobs[index];
    let candidates: Vec<usize> = match &job.needs {
        Some(needs) => pipeline
            .jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| needs.iter().any(|n| n.artifacts && names(j, &n.job)))
            .map(|(i, _)| i)
            .collect(),
        None => waits_for(pipeline, index),
    };
    candidates
        .into_iter()
        .filter(|i| match &job.dependencies {
            Some(dependencies) => dependencies.iter().any(|d| names(&pipeline.jobs[*i], d)),
            None => true,
        })
        .map(|i| pipeline.jobs[i].name.clone())
        .collect()
}

/// Which jobs are in the run, and which manual jobs of it are played.
pub fn select(
    pipeline: &Pipeline,
    selection: &Selection,
) -> Result<(Vec<bool>, Vec<bool>), SelectionError> {
    let count = pipeline.jobs.len();
    let all_names = || {
        pipeline
            .jobs
            .iter()
            .map(|j| j.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut named = vec![false; count];
    for wanted in &selection.jobs {
        let mut found = false;
        for (i, job) in pipeline.jobs.iter().enumerate() {
            if names(job, wanted) {
                named[i] = true;
                found = true;
            }
        }
        if !found {
            return Err(SelectionError::UnknownJob(wanted.clone(), all_names()));
        }
    }
    let mut in_run = named.clone();
    if let Some(stage) = &selection.stage {
        let mut found = false;
        for (i, job) in pipeline.jobs.iter().enumerate() {
            if job.stage == *stage {
                in_run[i] = true;
                found = true;
            }
        }
        if !found {
            return Err(SelectionError::UnknownStage(
                stage.clone(),
                pipeline.stages.join(", "),
            ));
        }
    }
    if selection.jobs.is_empty() && selection.stage.is_none() {
        in_run = vec![true; count];
    } else if selection.needs {
        let mut stack: Vec<usize> = (0..count).filter(|i| in_run[*i]).collect();
        while let Some(i) = stack.pop() {
            for dependency in waits_for(pipeline, i) {
                if !in_run[dependency] {
                    in_run[dependency] = true;
                    stack.push(dependency);
                }
            }
        }
    }
    let played = (0..count)
        .map(|i| {
            in_run[i]
                && pipeline.jobs[i].when == When::Manual
                && (named[i]
                    || selection.manual.as_ref().is_some_and(|m| {
                        m.is_empty() || m.iter().any(|n| names(&pipeline.jobs[i], n))
                    }))
        })
        .collect();
    Ok((in_run, played))
}

/// Whether a failure with `exit_code` is allowed.
fn allowed(allow: &AllowFailure, exit_code: Option<i32>) -> bool {
    match allow {
        AllowFailure::No => false,
        AllowFailure::Yes => true,
        AllowFailure::ExitCodes(codes) => exit_code.is_some_and(|c| codes.contains(&c)),
    }
}

struct State {
    status: Vec<JobStatus>,
    started: Vec<Option<Instant>>,
    duration: Vec<Duration>,
    reason: Vec<Option<String>>,
    attempts: Vec<u32>,
}

/// Runs the selected jobs of `pipeline`, at most `concurrency` at once.
pub async fn run(
    pipeline: Arc<Pipeline>,
    in_run: Vec<bool>,
    played: Vec<bool>,
    selection: &Selection,
    concurrency: usize,
    runner: Arc<dyn Runner>,
) -> Outcome {
    let count = pipeline.jobs.len();
    let mut state = State {
        status: vec![JobStatus::Created; count],
        started: vec![None; count],
        duration: vec![Duration::ZERO; count],
        reason: vec![None; count],
        attempts: vec![0; count],
    };
    let mut queue: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut running = tokio::task::JoinSet::new();
    loop {
        process(
            &pipeline, &in_run, &played, &mut state, &mut queue, &*runner,
        );
        while running.len() < concurrency.max(1) {
            let Some(index) = queue.pop_front() else {
                break;
            };
            let job = &pipeline.jobs[index];
            if !job.services.is_empty() && !selection.without_services {
                let why = format!(
                    "{} uses services ({}), which need a container runtime: podrunner exec runs \
                     jobs on this machine. Start them yourself and pass --without-services to \
                     run the job without them",
                    job.name,
                    job.services.join(", ")
                );
                runner.say(&format!("ERROR: {why}\n"));
                finish(
                    &pipeline,
                    &mut state,
                    index,
                    Ran {
                        success: false,
                        exit_code: None,
                        failure_reason: Some(why),
                    },
                    &*runner,
                );
                continue;
            }
            state.status[index] = JobStatus::Running;
            state.attempts[index] += 1;
            if state.started[index].is_none() {
                state.started[index] = Some(Instant::now());
            }
            let input = JobInput {
                artifacts_from: artifact_sources(&pipeline, index),
                attempt: state.attempts[index],
                manual: played[index],
            };
            let future = runner.clone().run(index, input);
            running.spawn(async move { (index, future.await) });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (index, ran) = match done {
            Ok(done) => done,
            Err(e) => {
                runner.say(&format!("ERROR: a job's task ended: {e}\n"));
                continue;
            }
        };
        let job = &pipeline.jobs[index];
        if !ran.success
            && !allowed(&job.allow_failure, ran.exit_code)
            && state.attempts[index] <= job.retry
        {
            runner.say(&format!(
                "Retrying {} (attempt {} of {}): retry: {}\n",
                job.name,
                state.attempts[index] + 1,
                job.retry + 1,
                job.retry
            ));
            state.status[index] = JobStatus::Pending;
            queue.push_front(index);
            continue;
        }
        finish(&pipeline, &mut state, index, ran, &*runner);
    }
    let mut jobs = Vec::new();
    for index in (0..count).filter(|i| in_run[*i]) {
        if state.status[index] == JobStatus::Created {
            state.reason[index] = Some(
                "not run: it waits for a manual job that was not played (name it, or pass --manual)"
                    .to_owned(),
            );
        }
        jobs.push(JobSummary {
            name: pipeline.jobs[index].name.clone(),
            stage: pipeline.jobs[index].stage.clone(),
            status: state.status[index],
            duration: state.duration[index],
            failure_reason: state.reason[index].clone(),
        });
    }
    let passed = composite(jobs.iter().map(|j| j.status), false) == Composite::Success;
    Outcome { jobs, passed }
}

fn finish(pipeline: &Pipeline, state: &mut State, index: usize, ran: Ran, runner: &dyn Runner) {
    let job = &pipeline.jobs[index];
    state.duration[index] = state.started[index]
        .map(|s| s.elapsed())
        .unwrap_or_default();
    state.status[index] = if ran.success {
        JobStatus::Success
    } else {
        JobStatus::Failed {
            allowed: allowed(&job.allow_failure, ran.exit_code),
        }
    };
    let mark = match state.status[index] {
        JobStatus::Success => "passed",
        JobStatus::Failed { allowed: true } => "failed (allowed to fail)",
        _ => "failed",
    };
    runner.say(&format!(
        "Job {} {mark} in {:.1}s\n",
        job.name,
        state.duration[index].as_secs_f64()
    ));
    state.reason[index] = match (ran.success, ran.exit_code) {
        (false, Some(code)) => Some(format!("exit code {code}")),
        _ => ran.failure_reason,
    };
}

/// Decides every created job whose predecessors are complete, until nothing changes: skipped,
/// manual, or queued to run.
fn process(
    pipeline: &Pipeline,
    in_run: &[bool],
    played: &[bool],
    state: &mut State,
    queue: &mut std::collections::VecDeque<usize>,
    runner: &dyn Runner,
) {
    let mut changed = true;
    while changed {
        changed = false;
        for index in 0..pipeline.jobs.len() {
            if !in_run[index] || state.status[index] != JobStatus::Created {
                continue;
            }
            let job = &pipeline.jobs[index];
            let dag = job.needs.is_some();
            let previous = composite(
                waits_for(pipeline, index)
                    .into_iter()
                    .filter(|i| in_run[*i])
                    .map(|i| state.status[i]),
                dag,
            );
            if !previous.completed() {
                continue;
            }
            changed = true;
            if !runs_after(&job.when, dag, previous) {
                let why = match (&job.when, previous) {
                    (When::OnFailure, _) => "it runs on failure, and nothing it waits for failed",
                    (_, Composite::Skipped) => "a job it needs did not run",
                    _ if dag => "a job it needs failed",
                    _ => "a job of an earlier stage failed",
                };
                runner.say(&format!("Skipping {}: {why}\n", job.name));
                state.status[index] = JobStatus::Skipped;
                state.reason[index] = Some(why.to_owned());
                continue;
            }
            if job.when == When::Manual && !played[index] {
                let allowed = job.allow_failure == AllowFailure::Yes;
                runner.say(&format!(
                    "{} is manual: not run (name it, or pass --manual, to run it)\n",
                    job.name
                ));
                state.status[index] = JobStatus::Manual { allowed };
                state.reason[index] = Some("manual job, not played".to_owned());
                continue;
            }
            if let When::Delayed { start_in } = &job.when {
                runner.say(&format!(
                    "{} is delayed (start_in: {start_in}): exec starts it without waiting\n",
                    job.name
                ));
            }
            state.status[index] = JobStatus::Pending;
            queue.push_back(index);
        }
    }
}
