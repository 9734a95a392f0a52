//! The scheduler on pipelines built here, with a stand-in runner: which jobs run, in what
//! order, how many at once, and whether the pipeline passes, as GitLab decides.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podrunner_exec::model::{AllowFailure, Job, Need, Pipeline, When};
use podrunner_exec::scheduler::{self, JobInput, Ran, RunFuture, Runner, Selection};
use podrunner_exec::status::JobStatus;

fn job(name: &str, stage: &str) -> Job {
    Job {
        name: name.to_owned(),
        base_name: name.to_owned(),
        stage: stage.to_owned(),
        image: None,
        services: Vec::new(),
        variables: Vec::new(),
        before_script: Vec::new(),
        script: vec!["true".to_owned()],
        after_script: Vec::new(),
        artifacts: Vec::new(),
        cache: Vec::new(),
        needs: None,
        dependencies: None,
        when: When::OnSuccess,
        allow_failure: AllowFailure::No,
        environment: None,
        parallel: None,
        timeout: None,
        retry: 0,
    }
}

fn needs(names: &[&str]) -> Option<Vec<Need>> {
    Some(
        names
            .iter()
            .map(|n| Need {
                job: (*n).to_owned(),
                artifacts: true,
                optional: false,
            })
            .collect(),
    )
}

fn pipeline(stages: &[&str], jobs: Vec<Job>) -> Pipeline {
    Pipeline {
        stages: stages.iter().map(|s| (*s).to_owned()).collect(),
        jobs,
        ..Pipeline::default()
    }
}

/// Runs jobs by name: an exit code per job (default 0) and a duration (default 5 ms).
#[derive(Default)]
struct Fake {
    names: Vec<String>,
    exit: HashMap<String, Vec<i32>>,
    sleep: HashMap<String, u64>,
    events: Mutex<Vec<String>>,
    inputs: Mutex<HashMap<String, JobInput>>,
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Fake {
    fn new(p: &Pipeline) -> Self {
        Fake {
            names: p.jobs.iter().map(|j| j.name.clone()).collect(),
            ..Fake::default()
        }
    }
    fn exit(mut self, name: &str, codes: &[i32]) -> Self {
        self.exit.insert(name.to_owned(), codes.to_vec());
        self
    }
    fn sleep(mut self, name: &str, ms: u64) -> Self {
        self.sleep.insert(name.to_owned(), ms);
        self
    }
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
    fn said(&self) -> String {
        self.events()
            .into_iter()
            .filter(|e| e.starts_with("say "))
            .collect()
    }
    /// Index of `event` in the events.
    fn at(&self, event: &str) -> usize {
        self.events()
            .iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no {event:?} in {:?}", self.events()))
    }
}

impl Runner for Fake {
    fn run(self: Arc<Self>, index: usize, input: JobInput) -> RunFuture {
        Box::pin(async move {
            let name = self.names[index].clone();
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.events.lock().unwrap().push(format!("start {name}"));
            let attempt = input.attempt as usize;
            self.inputs.lock().unwrap().insert(name.clone(), input);
            let ms = self.sleep.get(&name).copied().unwrap_or(5);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let code = self
                .exit
                .get(&name)
                .and_then(|c| c.get(attempt - 1).or(c.last()))
                .copied()
                .unwrap_or(0);
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.events.lock().unwrap().push(format!("end {name}"));
            Ran {
                success: code == 0,
                exit_code: Some(code),
                failure_reason: (code != 0).then(|| "script_failure".to_owned()),
            }
        })
    }

    fn say(&self, text: &str) {
        self.events.lock().unwrap().push(format!("say {text}"));
    }
}

async fn run(
    p: Pipeline,
    fake: Fake,
    selection: Selection,
    concurrency: usize,
) -> (scheduler::Outcome, Arc<Fake>) {
    let (in_run, played) = scheduler::select(&p, &selection).unwrap();
    let fake = Arc::new(fake);
    let outcome = scheduler::run(
        Arc::new(p),
        in_run,
        played,
        &selection,
        concurrency,
        fake.clone(),
    )
    .await;
    (outcome, fake)
}

fn status(outcome: &scheduler::Outcome, name: &str) -> JobStatus {
    outcome
        .jobs
        .iter()
        .find(|j| j.name == name)
        .map(|j| j.status)
        .unwrap_or_else(|| panic!("{name} is not in the run"))
}

#[tokio::test]
async fn a_failure_lets_its_stage_finish_and_only_on_failure_and_always_jobs_run_after_it() {
    let mut on_failure = job("report", "c");
    on_failure.when = When::OnFailure;
    let mut always = job("cleanup", "c");
    always.when = When::Always;
    let mut never = job("notify", "c");
    never.when = When::OnFailure;
    let p = pipeline(
        &["a", "b", "c"],
        vec![
            job("broken", "a"),
            job("sibling", "a"),
            job("later", "b"),
            on_failure,
            always,
        ],
    );
    let fake = Fake::new(&p).exit("broken", &[1]).sleep("sibling", 30);
    let (outcome, fake) = run(p, fake, Selection::default(), 1).await;
    assert!(!outcome.passed);
    assert_eq!(
        status(&outcome, "broken"),
        JobStatus::Failed { allowed: false }
    );
    assert_eq!(
        status(&outcome, "sibling"),
        JobStatus::Success,
        "its own stage runs"
    );
    assert_eq!(status(&outcome, "later"), JobStatus::Skipped);
    // `later` was skipped, so stage c sees failed + skipped: on_failure and always run.
    assert_eq!(status(&outcome, "report"), JobStatus::Success);
    assert_eq!(status(&outcome, "cleanup"), JobStatus::Success);
    assert!(
        fake.said()
            .contains("Skipping later: a job of an earlier stage failed")
    );

    // Without a failure the on_failure job is skipped and the pipeline passes.
    let p = pipeline(&["a", "c"], vec![job("ok", "a"), never]);
    let (outcome, _) = run(p.clone(), Fake::new(&p), Selection::default(), 1).await;
    assert!(outcome.passed);
    assert_eq!(status(&outcome, "notify"), JobStatus::Skipped);
}

#[tokio::test]
async fn allowed_failures_and_their_exit_codes_keep_the_pipeline_green() {
    let mut allowed = job("lint", "a");
    allowed.allow_failure = AllowFailure::ExitCodes(vec![3]);
    let p = pipeline(&["a", "b"], vec![allowed, job("after", "b")]);
    let (outcome, _) = run(
        p.clone(),
        Fake::new(&p).exit("lint", &[3]),
        Selection::default(),
        1,
    )
    .await;
    assert_eq!(
        status(&outcome, "lint"),
        JobStatus::Failed { allowed: true }
    );
    assert_eq!(status(&outcome, "after"), JobStatus::Success);
    assert!(outcome.passed);
    let (outcome, _) = run(
        p.clone(),
        Fake::new(&p).exit("lint", &[4]),
        Selection::default(),
        1,
    )
    .await;
    assert_eq!(
        status(&outcome, "lint"),
        JobStatus::Failed { allowed: false }
    );
    assert_eq!(status(&outcome, "after"), JobStatus::Skipped);
    assert!(!outcome.passed);
}

#[tokio::test]
async fn needs_order_jobs_within_a_stage_and_let_them_start_before_earlier_stages_end() {
    let mut second = job("second", "build");
    second.needs = needs(&["first"]);
    let mut fast = job("fast-test", "test");
    fast.needs = needs(&["first"]);
    let p = pipeline(
        &["build", "test"],
        // `second` comes first in the file: only its need orders it.
        vec![second, job("first", "build"), job("slow", "build"), fast],
    );
    let fake = Fake::new(&p).sleep("slow", 200);
    let (outcome, fake) = run(p, fake, Selection::default(), 4).await;
    assert!(outcome.passed);
    assert!(fake.at("end first") < fake.at("start second"));
    assert!(
        fake.at("start fast-test") < fake.at("end slow"),
        "a DAG job does not wait for the rest of the earlier stage: {:?}",
        fake.events()
    );
}

#[tokio::test]
async fn a_dag_job_is_skipped_when_what_it_needs_did_not_run() {
    let mut build = job("build", "a");
    build.when = When::OnFailure;
    let mut test = job("test", "b");
    test.needs = needs(&["build"]);
    let mut always = job("always", "b");
    always.needs = needs(&["build"]);
    always.when = When::Always;
    let mut stage_based = job("stage-based", "b");
    stage_based.needs = None;
    let p = pipeline(&["a", "b"], vec![build, test, always, stage_based]);
    let (outcome, fake) = run(p.clone(), Fake::new(&p), Selection::default(), 1).await;
    assert_eq!(status(&outcome, "build"), JobStatus::Skipped);
    assert_eq!(status(&outcome, "test"), JobStatus::Skipped);
    assert_eq!(status(&outcome, "always"), JobStatus::Success);
    assert_eq!(
        status(&outcome, "stage-based"),
        JobStatus::Success,
        "a stage-based job runs after a skipped stage"
    );
    assert!(
        fake.said()
            .contains("Skipping test: a job it needs did not run")
    );
}

#[tokio::test]
async fn manual_jobs_run_only_when_played_and_a_blocking_one_holds_later_jobs() {
    let mut deploy = job("deploy", "a");
    deploy.when = When::Manual;
    deploy.allow_failure = AllowFailure::Yes;
    let p = pipeline(&["a", "b"], vec![deploy, job("after", "b")]);
    let (outcome, fake) = run(p.clone(), Fake::new(&p), Selection::default(), 1).await;
    assert_eq!(
        status(&outcome, "deploy"),
        JobStatus::Manual { allowed: true }
    );
    assert_eq!(status(&outcome, "after"), JobStatus::Success);
    assert!(outcome.passed);
    assert!(!fake.events().contains(&"start deploy".to_owned()));

    let played = Selection {
        manual: Some(Vec::new()),
        ..Selection::default()
    };
    let (outcome, fake) = run(p.clone(), Fake::new(&p), played, 1).await;
    assert_eq!(status(&outcome, "deploy"), JobStatus::Success);
    assert!(fake.inputs.lock().unwrap()["deploy"].manual);
    let named = Selection {
        jobs: vec!["deploy".to_owned()],
        ..Selection::default()
    };
    let (outcome, _) = run(p.clone(), Fake::new(&p), named, 1).await;
    assert_eq!(outcome.jobs.len(), 1);
    assert_eq!(status(&outcome, "deploy"), JobStatus::Success);

    let mut p = p;
    p.jobs[0].allow_failure = AllowFailure::No;
    let (outcome, fake) = run(p.clone(), Fake::new(&p), Selection::default(), 1).await;
    assert_eq!(
        status(&outcome, "deploy"),
        JobStatus::Manual { allowed: false }
    );
    assert_eq!(status(&outcome, "after"), JobStatus::Created, "blocked");
    assert!(!fake.events().contains(&"start after".to_owned()));
    assert!(!outcome.passed, "a blocked pipeline has not passed");
}

#[tokio::test]
async fn ready_jobs_run_in_parallel_up_to_the_concurrency() {
    let jobs: Vec<Job> = (0..6).map(|i| job(&format!("j{i}"), "a")).collect();
    let p = pipeline(&["a"], jobs);
    let mut fake = Fake::new(&p);
    for i in 0..6 {
        fake = fake.sleep(&format!("j{i}"), 40);
    }
    let (_, fake) = run(p.clone(), fake, Selection::default(), 3).await;
    assert_eq!(fake.most.load(Ordering::SeqCst), 3);
    let (_, fake) = run(p, Fake::new_sleeping(6), Selection::default(), 1).await;
    assert_eq!(fake.most.load(Ordering::SeqCst), 1);
}

impl Fake {
    fn new_sleeping(n: usize) -> Self {
        let mut fake = Fake {
            names: (0..n).map(|i| format!("j{i}")).collect(),
            ..Fake::default()
        };
        for i in 0..n {
            fake = fake.sleep(&format!("j{i}"), 20);
        }
        fake
    }
}

#[tokio::test]
async fn the_command_line_selects_jobs_what_they_need_and_stages() {
    let mut test = job("test", "test");
    test.needs = needs(&["build"]);
    let p = pipeline(
        &["prep", "build", "test", "deploy"],
        vec![
            job("prep", "prep"),
            job("build", "build"),
            job("other", "build"),
            test,
            job("deploy", "deploy"),
        ],
    );
    let select = |jobs: &[&str], needs: bool, stage: Option<&str>| {
        let selection = Selection {
            jobs: jobs.iter().map(|j| (*j).to_owned()).collect(),
            needs,
            stage: stage.map(str::to_owned),
            ..Selection::default()
        };
        scheduler::select(&p, &selection).map(|(in_run, _)| {
            p.jobs
                .iter()
                .zip(in_run)
                .filter(|(_, r)| *r)
                .map(|(j, _)| j.name.clone())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(select(&["test"], false, None).unwrap(), ["test"]);
    // `test` needs `build`, which (without needs) waits for every job of earlier stages.
    assert_eq!(
        select(&["test"], true, None).unwrap(),
        ["prep", "build", "test"]
    );
    assert_eq!(
        select(&[], false, Some("build")).unwrap(),
        ["build", "other"]
    );
    assert!(
        select(&["nope"], false, None)
            .unwrap_err()
            .to_string()
            .contains("\"nope\" is not a job of the pipeline")
    );
    assert!(
        select(&[], false, Some("x"))
            .unwrap_err()
            .to_string()
            .contains("--stage \"x\"")
    );
}

#[tokio::test]
async fn jobs_with_services_need_a_container_runtime_unless_asked_to_run_without() {
    let mut db = job("db-test", "a");
    db.services = vec!["postgres:16".to_owned()];
    let p = pipeline(&["a"], vec![db]);
    let (outcome, fake) = run(p.clone(), Fake::new(&p), Selection::default(), 1).await;
    assert_eq!(
        status(&outcome, "db-test"),
        JobStatus::Failed { allowed: false }
    );
    assert!(
        fake.said()
            .contains("services (postgres:16), which need a container runtime")
    );
    assert!(fake.said().contains("--without-services"));
    assert!(!fake.events().contains(&"start db-test".to_owned()));
    let without = Selection {
        without_services: true,
        ..Selection::default()
    };
    let (outcome, _) = run(p.clone(), Fake::new(&p), without, 1).await;
    assert_eq!(status(&outcome, "db-test"), JobStatus::Success);
}

#[tokio::test]
async fn failed_jobs_are_retried_up_to_retry_and_delayed_jobs_start_at_once() {
    let mut flaky = job("flaky", "a");
    flaky.retry = 2;
    let mut later = job("later", "b");
    later.when = When::Delayed {
        start_in: "30 minutes".to_owned(),
    };
    let p = pipeline(&["a", "b"], vec![flaky, later]);
    let (outcome, fake) = run(
        p.clone(),
        Fake::new(&p).exit("flaky", &[1, 1, 0]),
        Selection::default(),
        1,
    )
    .await;
    assert_eq!(status(&outcome, "flaky"), JobStatus::Success);
    assert_eq!(fake.inputs.lock().unwrap()["flaky"].attempt, 3);
    assert!(fake.said().contains("Retrying flaky (attempt 2 of 3)"));
    assert_eq!(status(&outcome, "later"), JobStatus::Success);
    assert!(
        fake.said()
            .contains("later is delayed (start_in: 30 minutes): exec starts it without waiting")
    );
    let (outcome, _) = run(
        p.clone(),
        Fake::new(&p).exit("flaky", &[1, 1, 1, 0]),
        Selection::default(),
        1,
    )
    .await;
    assert_eq!(
        status(&outcome, "flaky"),
        JobStatus::Failed { allowed: false }
    );
}

#[test]
fn artifacts_come_from_needs_with_artifacts_narrowed_by_dependencies() {
    let mut test = job("test", "test");
    test.needs = Some(vec![
        Need {
            job: "build".into(),
            artifacts: true,
            optional: false,
        },
        Need {
            job: "lint".into(),
            artifacts: false,
            optional: false,
        },
    ]);
    let mut deploy = job("deploy", "deploy");
    deploy.dependencies = Some(vec!["build".into()]);
    let mut none = job("none", "deploy");
    none.dependencies = Some(Vec::new());
    let p = pipeline(
        &["build", "test", "deploy"],
        vec![
            job("build", "build"),
            job("lint", "build"),
            test,
            deploy,
            none,
            job("all", "deploy"),
        ],
    );
    assert_eq!(scheduler::artifact_sources(&p, 2), ["build"]);
    assert_eq!(scheduler::artifact_sources(&p, 3), ["build"]);
    assert!(scheduler::artifact_sources(&p, 4).is_empty());
    assert_eq!(
        scheduler::artifact_sources(&p, 5),
        ["build", "lint", "test"]
    );
}
