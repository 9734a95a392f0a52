//! `podrunner exec` end to end on pipelines built here (the resolved model, not YAML): the
//! real agent in each job's own tree, the coordinator, the rendered output.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use podrunner_exec::model::{AllowFailure, Environment, Job, Need, Pipeline, When};
use podrunner_exec::{ExecOptions, JobStatus, Outcome, Selection};
use podrunner_gitlab::payload::{Artifact, Cache};

fn job(name: &str, stage: &str, script: &[&str]) -> Job {
    Job {
        name: name.to_owned(),
        base_name: name.to_owned(),
        stage: stage.to_owned(),
        image: None,
        services: Vec::new(),
        variables: Vec::new(),
        before_script: Vec::new(),
        script: script.iter().map(|s| (*s).to_owned()).collect(),
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

fn need(job: &str, artifacts: bool) -> Need {
    Need {
        job: job.to_owned(),
        artifacts,
        optional: false,
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

async fn run(
    pipeline: Pipeline,
    project: &Path,
    artifacts: &Path,
    concurrency: usize,
    working_tree: bool,
) -> (Outcome, String) {
    let options = ExecOptions {
        file: project.join(".gitlab-ci.yml"),
        selection: Selection::default(),
        variables: vec![("FROM_CLI".to_owned(), "cli".to_owned())],
        working_tree,
        concurrency: Some(concurrency),
        artifacts_dir: Some(artifacts.to_owned()),
        agent_program: env!("CARGO_BIN_EXE_podrunner").into(),
        color: false,
    };
    let out = Captured::default();
    let outcome = podrunner_exec::run_pipeline(pipeline, project, &options, Box::new(out.clone()))
        .await
        .unwrap();
    (outcome, out.text())
}

fn pipeline(stages: &[&str], jobs: Vec<Job>) -> Pipeline {
    Pipeline {
        stages: stages.iter().map(|s| (*s).to_owned()).collect(),
        jobs,
        ..Pipeline::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_gets_a_fresh_tree_of_the_commit_and_only_the_artifacts_it_should() {
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("project");
    std::fs::create_dir(&project).unwrap();
    git(&project, &["init", "--quiet"]);
    std::fs::write(project.join("committed.txt"), "committed").unwrap();
    git(&project, &["add", "."]);
    git(&project, &["commit", "--quiet", "-m", "one"]);
    std::fs::write(project.join("uncommitted.txt"), "dirty").unwrap();

    let mut build = job(
        "build",
        "build",
        &[
            "test -f committed.txt && test ! -e uncommitted.txt",
            "echo leak > leak.txt",
            "mkdir out && echo keep > out/keep.txt && echo skip > out/skip.log",
            "echo 'BUILD_VERSION=1.2.3' > build.env",
        ],
    );
    build.artifacts = vec![
        Artifact {
            paths: vec!["$CI_PROJECT_DIR/out/".to_owned()],
            exclude: vec!["out/*.log".to_owned()],
            artifact_type: "archive".to_owned(),
            artifact_format: "zip".to_owned(),
            when: "on_success".to_owned(),
            ..Artifact::default()
        },
        Artifact {
            paths: vec!["build.env".to_owned()],
            artifact_type: "dotenv".to_owned(),
            artifact_format: "gzip".to_owned(),
            when: "on_success".to_owned(),
            ..Artifact::default()
        },
    ];
    let mut test = job(
        "test",
        "test",
        &[
            "test ! -e leak.txt",
            "test -f out/keep.txt && test ! -e out/skip.log",
            "echo \"test sees version=$BUILD_VERSION\"",
        ],
    );
    test.needs = Some(vec![need("build", true)]);
    let mut blind = job(
        "blind",
        "test",
        &[
            "test ! -e out/keep.txt",
            "echo \"blind sees version=[$BUILD_VERSION]\"",
        ],
    );
    blind.needs = Some(vec![need("build", false)]);
    let mut stage_based = job(
        "stage-based",
        "deploy",
        &["echo \"stage-based sees version=$BUILD_VERSION, out/keep.txt: $(cat out/keep.txt)\""],
    );
    stage_based.dependencies = Some(vec!["build".to_owned()]);
    let p = pipeline(
        &["build", "test", "deploy"],
        vec![build, test, blind, stage_based],
    );
    let artifacts = root.path().join("artifacts");
    let (outcome, out) = run(p.clone(), &project, &artifacts, 2, false).await;
    assert!(outcome.passed, "{out}");
    assert!(out.contains("test sees version=1.2.3"), "{out}");
    assert!(out.contains("blind sees version=[]"), "{out}");
    assert!(
        out.contains("stage-based sees version=1.2.3, out/keep.txt: keep"),
        "{out}"
    );
    assert!(
        !project.join("leak.txt").exists(),
        "jobs never write the working tree"
    );

    // With --working-tree the uncommitted file is there, so build's first line fails.
    let (outcome, out) = run(p, &project, &artifacts, 2, true).await;
    assert!(!outcome.passed, "{out}");
    assert_eq!(outcome.jobs[0].status, JobStatus::Failed { allowed: false });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_see_gitlabs_job_variables_and_share_the_default_cache() {
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let mut deploy = job(
        "deploy: [eu, 2]",
        "deploy",
        &[
            "echo \"name=$CI_JOB_NAME slug=$CI_JOB_NAME_SLUG stage=$CI_JOB_STAGE status=$CI_JOB_STATUS\"",
            "echo \"node=$CI_NODE_INDEX/$CI_NODE_TOTAL cli=$FROM_CLI\"",
            "echo \"env=$CI_ENVIRONMENT_NAME slug=$CI_ENVIRONMENT_SLUG url=$CI_ENVIRONMENT_URL action=$CI_ENVIRONMENT_ACTION tier=$CI_ENVIRONMENT_TIER\"",
            "mkdir -p deps && echo cached > deps/x",
        ],
    );
    deploy.after_script = vec!["echo \"after sees status=$CI_JOB_STATUS\"".to_owned()];
    deploy.parallel = Some((2, 3));
    deploy.environment = Some(Environment {
        name: "production".to_owned(),
        url: Some("https://example.com".to_owned()),
        action: None,
        tier: "production".to_owned(),
    });
    let cache = Cache {
        paths: vec!["deps".to_owned()],
        ..Cache::default()
    };
    deploy.cache = vec![cache.clone()];
    let mut later = job("later", "post", &["echo \"later reads $(cat deps/x)\""]);
    later.cache = vec![cache];
    let p = pipeline(&["deploy", "post"], vec![deploy, later]);
    let artifacts = root.path().join("artifacts");
    let (outcome, out) = run(p, &project, &artifacts, 1, false).await;
    assert!(outcome.passed, "{out}");
    assert!(
        out.contains("name=deploy: [eu, 2] slug=deploy---eu--2 stage=deploy status=running"),
        "{out}"
    );
    assert!(out.contains("node=2/3 cli=cli"), "{out}");
    assert!(
        out.contains(
            "env=production slug=production url=https://example.com action=start tier=production"
        ),
        "{out}"
    );
    assert!(out.contains("after sees status=success"), "{out}");
    assert!(out.contains("later reads cached"), "{out}");
    assert!(
        artifacts
            .join(".cache/local/project/default/cache.zip")
            .is_file(),
        "one cache under the key `default`"
    );
}

/// Item 7 of issue 15: the script writes stdout and stderr one byte at a time, alternately,
/// while a second job does the same, pausing past the trace interval so the line reaches the
/// coordinator in several patches; every line reaches the output whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_interleave_byte_by_byte_without_splicing() {
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let script = |out: char, err: char| {
        vec![format!(
            "for i in $(seq 1 400); do printf {out}; printf {err} >&2; if [ $((i % 150)) = 0 ]; then sleep 1.2; fi; done; echo; echo done-{out}"
        )]
    };
    let mut one = job("one", "test", &[]);
    one.script = script('o', 'e');
    let mut two = job("two", "test", &[]);
    two.script = script('O', 'E');
    let (outcome, out) = run(
        pipeline(&["test"], vec![one, two]),
        &project,
        &root.path().join("artifacts"),
        2,
        false,
    )
    .await;
    assert!(outcome.passed, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let whole = |prefix: &str, pair: &str| {
        let expected = format!("{prefix}{}", pair.repeat(400));
        assert!(
            lines.contains(&expected.as_str()),
            "no whole line {prefix}{pair}...: {out}"
        );
    };
    whole("[one] ", "oe");
    whole("[two] ", "OE");
    for (name, out_char) in [("one", 'o'), ("two", 'O')] {
        let command = format!("[{name}] $ for i in $(seq 1 400); do printf {out_char}; printf");
        assert!(
            lines.iter().any(|l| l.starts_with(&command)),
            "the echoed command line is whole: {out}"
        );
        assert!(
            lines.contains(&format!("[{name}] done-{out_char}").as_str()),
            "{out}"
        );
    }
    assert!(out.contains("  one "), "the summary names the jobs: {out}");
}

fn exec(args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .arg("exec")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn the_command_line_runs_what_named_jobs_need_stages_and_limits_concurrency() {
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join(".gitlab-ci.yml"),
        "stages: [build, test, deploy]\nbuild:\n  stage: build\n  script: echo built > out.txt\n  artifacts:\n    paths: [out.txt]\nlint:\n  stage: test\n  needs: []\n  script: echo linted\ntest:\n  stage: test\n  needs: [build]\n  script: cat out.txt\ndeploy:\n  stage: deploy\n  script: echo deployed\n",
    )
    .unwrap();
    let artifacts = root.path().join("artifacts");
    let artifacts = artifacts.to_str().unwrap();
    let (code, out) = exec(&["test", "--needs", "--artifacts-dir", artifacts], &project);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Running job build") && out.contains("built"),
        "{out}"
    );
    assert!(
        !out.contains("Running job lint") && !out.contains("deployed"),
        "{out}"
    );
    assert!(
        out.contains("  build ") && out.contains("Pipeline passed"),
        "the summary table: {out}"
    );
    let (code, out) = exec(&["--stage", "test", "--artifacts-dir", artifacts], &project);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("linted") && out.contains("built"), "{out}");
    assert!(!out.contains("Running job build"), "{out}");
    let (code, out) = exec(
        &["--concurrency", "1", "--artifacts-dir", artifacts],
        &project,
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        !out.contains("[build] "),
        "one job at a time: no prefixes: {out}"
    );
    let (code, out) = exec(&["--concurrency", "0"], &project);
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = exec(&["--stage", "nope"], &project);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--stage \"nope\": no job"), "{out}");
}

/// Artifact paths under `$CI_PROJECT_DIR` name the job's own tree (the agent's variable, not
/// the user's checkout), and a dotenv report of several files is one gzip member per file.
#[test]
fn project_dir_artifact_paths_and_dotenv_reports_of_several_files() {
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join(".gitlab-ci.yml"),
        "produce:\n  stage: build\n  script:\n    - mkdir -p path\n    - touch path/file1\n    - echo ONE=1 > a.env\n    - echo TWO=2 > b.env\n  artifacts:\n    paths: [$CI_PROJECT_DIR/path/]\n    reports:\n      dotenv: [a.env, b.env]\n\
         consume:\n  stage: test\n  script:\n    - test -f path/file1\n    - echo \"got $ONE and $TWO\"\n",
    )
    .unwrap();
    let artifacts = root.path().join("artifacts");
    let (code, out) = exec(&["--artifacts-dir", artifacts.to_str().unwrap()], &project);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("got 1 and 2"), "{out}");
}
