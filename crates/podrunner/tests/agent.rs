//! `podrunner agent --spec FILE` against the testkit GitLab, without the manager.

use std::time::Duration;

use podrunner_gitlab::api::{JobState, UpdateJobRequest};
use podrunner_gitlab::{
    ClientOptions, GitlabClient, JobRequestOutcome, RunnerInfo, Secret, UpdateOutcome,
};
use podrunner_testkit::{GitlabStandIn, JobSpec, JobView};

#[path = "support/hostile_zips.rs"]
mod hostile_zips;

const TOKEN: &str = "glrt-agent-test";

/// A spec file: the defaults of a spec built in code, with `fields` over them (a spec file
/// has no defaults of its own: every required field must be there).
fn spec_file(fields: serde_json::Value) -> String {
    let mut spec = serde_json::to_value(podrunner_agent::AgentSpec::default()).unwrap();
    for (key, value) in fields.as_object().unwrap() {
        spec[key] = value.clone();
    }
    spec.to_string()
}

async fn take(gitlab: &GitlabStandIn) -> serde_json::Value {
    let client = GitlabClient::new(&ClientOptions {
        url: gitlab.url().to_owned(),
        ..Default::default()
    })
    .unwrap();
    let info = RunnerInfo::new(
        "18.9.0",
        "shell",
        // What the manager announces: the network side's features and the agent's.
        podrunner_agent::agent_features(),
    );
    let job = match client
        .request_job(&Secret::new(TOKEN), "s_0123456789ab", &info, None)
        .await
        .outcome
    {
        JobRequestOutcome::Job(job) => job,
        other => panic!("{other:?}"),
    };
    // The manager's acknowledgement (`two_phase_job_commit`): the job runs from then on.
    let ack = UpdateJobRequest {
        info: info.clone(),
        token: job.job.token.clone(),
        state: JobState::Running,
        failure_reason: None,
        checksum: None,
        output: None,
        exit_code: None,
    };
    assert_eq!(
        client.update_job(job.job.id, &ack).await.0,
        UpdateOutcome::Succeeded
    );
    serde_json::from_str(job.raw.get()).unwrap()
}

async fn run_agent(
    gitlab: &GitlabStandIn,
    spec: JobSpec,
) -> (JobView, serde_json::Value, std::process::ExitStatus) {
    let dir = tempfile::tempdir().unwrap();
    run_agent_in(gitlab, spec, dir.path()).await
}

/// Runs the agent with `dir/builds` as the builds directory and `dir/cache` as the cache.
async fn run_agent_in(
    gitlab: &GitlabStandIn,
    spec: JobSpec,
    dir: &std::path::Path,
) -> (JobView, serde_json::Value, std::process::ExitStatus) {
    run_agent_with_env(gitlab, spec, dir, &[]).await
}

/// [`run_agent_in`] with `env` set for the agent (what a job pod hands it).
async fn run_agent_with_env(
    gitlab: &GitlabStandIn,
    spec: JobSpec,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (JobView, serde_json::Value, std::process::ExitStatus) {
    let id = gitlab.enqueue(spec);
    let job = take(gitlab).await;
    let spec = serde_json::json!({
        "gitlab": {"url": gitlab.url()},
        "job": job,
        "builds_dir": dir.join("builds"),
        "cache_dir": dir.join("cache"),
        "runner_name": "test-runner",
        "runner_short_token": "agenttes",
        "system_id": "s_0123456789ab",
        "termination_report": dir.join("report.json"),
    });
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec_file(spec)).unwrap();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["agent", "--spec", spec_path.to_str().unwrap()])
        .envs(env.iter().copied())
        .status()
        .await
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let view = gitlab
        .wait_for_job(id, Duration::from_secs(5), |j| {
            j.status == "success" || j.status == "failed"
        })
        .await;
    (view, report, status)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_runs_a_job_from_its_spec() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let sha = gitlab
        .create_repository("group/project", &[("hello.txt", "hello from git\n")])
        .unwrap();
    let spec = JobSpec::new(
        "build",
        &[
            "cat hello.txt",
            "echo \"secret is $SECRET\"",
            "echo \"id $CI_JOB_ID in $CI_PROJECT_DIR\"",
        ],
    )
    .variable("SECRET", "hunter2-very-secret", true)
    .git("group/project", &sha);
    let (view, report, status) = run_agent(&gitlab, spec).await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert_eq!(view.status, "success", "{trace}");
    assert!(status.success());
    assert_eq!(report["final_update_delivered"], true);
    assert!(trace.contains("hello from git"), "{trace}");
    assert!(
        trace.contains("secret is [MASKED]") && !trace.contains("hunter2-very-secret"),
        "{trace}"
    );
    assert!(trace.contains("$ cat hello.txt"), "{trace}");
    assert!(
        trace.contains("section_start:") && trace.contains(":step_script\r\x1b[0K"),
        "{trace}"
    );
    assert!(trace.contains("Job succeeded"), "{trace}");
}

/// Runs the agent as PID 1 of a new PID namespace; `init` false skips the PID 1 duties.
async fn run_as_pid1(gitlab: &GitlabStandIn, spec: JobSpec, init: bool) -> JobView {
    let id = gitlab.enqueue(spec);
    let job = take(gitlab).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({"gitlab": {"url": gitlab.url()}, "job": job, "builds_dir": dir.path().join("builds")});
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec_file(spec)).unwrap();
    let mut command = tokio::process::Command::new("unshare");
    command.args([
        "--pid",
        "--fork",
        "--mount-proc",
        env!("CARGO_BIN_EXE_podrunner"),
        "agent",
        "--spec",
        spec_path.to_str().unwrap(),
    ]);
    if !init {
        command.env("PODRUNNER_AGENT_UNDER_INIT", "1");
    }
    let status = command.status().await.unwrap();
    assert!(
        status.success(),
        "unshare (needs root) or the agent failed: {status}"
    );
    gitlab
        .wait_for_job(id, Duration::from_secs(5), |j| {
            j.status == "success" || j.status == "failed"
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn as_pid_1_the_agent_reaps_orphans() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let script = [
        "echo \"pid1=$(cat /proc/1/comm)\"",
        "sh -c 'sleep 0.2 & exit 0'",
        "sleep 1",
        "echo \"zombies=$(cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == \"Z\"' | wc -l)\"",
    ];
    let spec = || JobSpec::new("orphans", &script).variable("GIT_STRATEGY", "none", false);
    let view = run_as_pid1(&gitlab, spec(), true).await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert_eq!(view.status, "success", "{trace}");
    assert!(
        trace.contains("pid1=podrunner") && trace.contains("zombies=0"),
        "{trace}"
    );
    // The same job without the init duties leaves the orphan a zombie: the check can fail.
    let view = run_as_pid1(&gitlab, spec(), false).await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert!(trace.contains("zombies=1"), "{trace}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_git_cli_the_built_in_git_fetches_sources() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab
        .create_repository("group/nogit", &[("app.txt", "v1\n")])
        .unwrap();
    gitlab
        .add_commit("group/nogit", &[("app.txt", "v2\n")])
        .unwrap();
    let head = gitlab
        .add_commit(
            "group/nogit",
            &[("app.txt", "v3\n"), ("lib/util.sh", "echo util\n")],
        )
        .unwrap();
    // A PATH with a shell and a few tools, and no git.
    let tools = tempfile::tempdir().unwrap();
    for tool in ["bash", "sh", "cat", "grep", "wc", "ls"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(found, tools.path().join(tool)).unwrap();
    }
    let id = gitlab.enqueue(
        JobSpec::new(
            "nogit",
            &[
                "cat app.txt",
                "cat lib/util.sh",
                "echo \"shallow=$(cat .git/shallow | wc -l)\"",
                "echo \"token-in-config=$(grep -c glcbt .git/config || true)\"",
            ],
        )
        .variable("GIT_DEPTH", "1", false)
        .git("group/nogit", &head),
    );
    let job = take(&gitlab).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({"gitlab": {"url": gitlab.url()}, "job": job, "builds_dir": dir.path().join("builds")});
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec_file(spec)).unwrap();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["agent", "--spec", spec_path.to_str().unwrap()])
        .env("PATH", tools.path())
        .status()
        .await
        .unwrap();
    let view = gitlab
        .wait_for_job(id, Duration::from_secs(10), |j| {
            j.status == "success" || j.status == "failed"
        })
        .await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert!(status.success() && view.status == "success", "{trace}");
    assert!(
        trace.contains("(built-in git)") && trace.contains(&format!("Checking out {}", &head[..8])),
        "{trace}"
    );
    assert!(
        trace.contains("v3") && trace.contains("echo util"),
        "{trace}"
    );
    assert!(
        trace.contains("shallow=1"),
        "GIT_DEPTH=1 gives a shallow clone: {trace}"
    );
    assert!(
        trace.contains("token-in-config=0"),
        "the token is not written to .git/config: {trace}"
    );

    // Fetch into the same directory, full depth: the repository is reused and unshallowed.
    let id = gitlab.enqueue(
        JobSpec::new(
            "nogit-fetch",
            &[
                "cat app.txt",
                "test -e .git/shallow && echo still-shallow || echo unshallowed",
            ],
        )
        .variable("GIT_STRATEGY", "fetch", false)
        .variable("GIT_DEPTH", "0", false)
        .git("group/nogit", &head),
    );
    let job = take(&gitlab).await;
    let spec = serde_json::json!({"gitlab": {"url": gitlab.url()}, "job": job, "builds_dir": dir.path().join("builds")});
    std::fs::write(&spec_path, spec_file(spec)).unwrap();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["agent", "--spec", spec_path.to_str().unwrap()])
        .env("PATH", tools.path())
        .status()
        .await
        .unwrap();
    let view = gitlab
        .wait_for_job(id, Duration::from_secs(10), |j| {
            j.status == "success" || j.status == "failed"
        })
        .await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert!(status.success() && view.status == "success", "{trace}");
    assert!(
        trace.contains("Reinitialized existing Git repository.")
            && trace.contains("v3")
            && trace.contains("unshallowed"),
        "{trace}"
    );
}

/// A job whose dependency's artifact archive is `archive`, run in `dir`.
async fn with_dependency_artifact(
    gitlab: &GitlabStandIn,
    archive: Vec<u8>,
    dir: &std::path::Path,
    script: &[&str],
) -> (JobView, String) {
    let producer = gitlab.enqueue(JobSpec::new("build", &["true"]));
    take(gitlab).await;
    gitlab.put_artifact(producer, archive);
    let spec = JobSpec::new("test", script)
        .variable("GIT_STRATEGY", "none", false)
        .depends_on(&[producer]);
    let (view, _, _) = run_agent_in(gitlab, spec, dir).await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    (view, trace)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_dependency_artifacts_write_nothing_outside_and_leave_nothing_behind() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let outside = tempfile::tempdir().unwrap();
    for (name, archive) in hostile_zips::all(outside.path()) {
        let dir = tempfile::tempdir().unwrap();
        let (view, trace) = with_dependency_artifact(&gitlab, archive, dir.path(), &["true"]).await;
        assert_eq!(view.status, "failed", "{name}: {trace}");
        assert!(
            trace.contains("nothing was extracted") || trace.contains("cannot be read"),
            "{name}: {trace}"
        );
        hostile_zips::assert_nothing_escaped(
            name,
            outside.path(),
            &dir.path().join("builds/group/project"),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_entries_replace_links_in_the_project_and_never_write_through_them() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "original").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("builds/group/project");
    std::fs::create_dir_all(&project).unwrap();
    std::os::unix::fs::symlink(&victim, project.join("config")).unwrap();
    // A link to a file is replaced by the entry, as gitlab-runner removes the path first.
    let archive = hostile_zips::build(&[
        hostile_zips::Entry::File("config", b"from the artifact"),
        hostile_zips::Entry::Link("lib/current", "../v1"),
        hostile_zips::Entry::File("v1/tool", b"tool"),
    ]);
    let (view, trace) = with_dependency_artifact(
        &gitlab,
        archive,
        dir.path(),
        &["cat config", "cat lib/current/tool"],
    )
    .await;
    assert_eq!(view.status, "success", "{trace}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    assert!(
        !std::fs::symlink_metadata(project.join("config"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        trace.contains("from the artifact") && trace.contains("tool"),
        "{trace}"
    );

    // A link on the way to an entry refuses the archive.
    std::os::unix::fs::symlink(outside.path(), project.join("vendor")).unwrap();
    let archive = hostile_zips::build(&[
        hostile_zips::Entry::File("first.txt", b"first"),
        hostile_zips::Entry::File("vendor/planted.txt", b"x"),
    ]);
    let (view, trace) = with_dependency_artifact(&gitlab, archive, dir.path(), &["true"]).await;
    assert_eq!(view.status, "failed", "{trace}");
    assert!(trace.contains("a symbolic link in"), "{trace}");
    assert!(!outside.path().join("planted.txt").exists());
    assert!(!project.join("first.txt").exists(), "{trace}");
}

/// A job restoring the cache `key` (with `fallback_keys`) into `dir`.
fn cache_job(script: &[&str], key: &str, fallback_keys: &[&str]) -> JobSpec {
    JobSpec::new("test", script)
        .variable("GIT_STRATEGY", "none", false)
        .payload_field(
            "cache",
            serde_json::json!([{"key": key, "fallback_keys": fallback_keys, "paths": ["vendor/"], "policy": "pull", "when": "on_success"}]),
        )
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_caches_write_nothing_outside_and_leave_nothing_behind() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let outside = tempfile::tempdir().unwrap();
    for (name, archive) in hostile_zips::all(outside.path()) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache/group/project/hostile/cache.zip");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, archive).unwrap();
        let (view, _, _) =
            run_agent_in(&gitlab, cache_job(&["true"], "hostile", &[]), dir.path()).await;
        let trace = String::from_utf8_lossy(&view.trace).into_owned();
        // A cache that cannot be extracted is a warning, as in gitlab-runner.
        assert_eq!(view.status, "success", "{name}: {trace}");
        assert!(trace.contains("Failed to extract cache"), "{name}: {trace}");
        hostile_zips::assert_nothing_escaped(
            name,
            outside.path(),
            &dir.path().join("builds/group/project"),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_and_fallback_keys_are_sanitized_as_gitlab_runner_does() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    // Where `../../../planted` would lead from the project's cache directory.
    let planted = dir.path().join("planted/cache.zip");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(
        &planted,
        hostile_zips::build(&[hostile_zips::Entry::File("vendor/marker", b"planted")]),
    )
    .unwrap();
    let spec = cache_job(
        &["test ! -e vendor/marker && echo not-restored"],
        "main",
        &["../../../planted", "%2e%2e/%2E%2E/%2e%2e%2Fplanted"],
    );
    let (view, _, _) = run_agent_in(&gitlab, spec, dir.path()).await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert_eq!(view.status, "success", "{trace}");
    assert!(
        trace.contains("\nnot-restored") || trace.contains("not-restored"),
        "{trace}"
    );
    assert!(
        trace.contains(r#"cache key "../../../planted" sanitized to "planted""#),
        "{trace}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_variable_keys_are_never_paths() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::new("test", &["true"])
        .variable("GIT_STRATEGY", "none", false)
        .file_variable("../../escaped", "planted");
    let (view, _, _) = run_agent_in(&gitlab, spec, dir.path()).await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert_eq!(view.status, "failed", "{trace}");
    assert!(trace.contains(r#""../../escaped""#), "{trace}");
    let escaped: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "escaped"))
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_near_i64_max_saturates_instead_of_panicking() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    for timeout in [i64::MAX, i64::MAX - 1, 1 << 62] {
        let spec = JobSpec::new("test", &["echo ran"])
            .variable("GIT_STRATEGY", "none", false)
            .variable("RUNNER_SCRIPT_TIMEOUT", "2562047h47m16s", false)
            .timeout(timeout);
        let (view, report, status) = run_agent(&gitlab, spec).await;
        let trace = String::from_utf8_lossy(&view.trace).into_owned();
        assert!(status.success(), "{timeout}: {status}: {trace}");
        assert_eq!(view.status, "success", "{trace}");
        assert_eq!(report["final_update_delivered"], true);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_and_stderr_reach_the_trace_in_order_through_one_masker() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let spec = JobSpec::new(
        "test",
        &[
            "for i in $(seq 1 400); do printf 'out-%03d-line\\n' $i; printf 'err-%03d-line\\n' $i >&2; done",
            "printf 'hunter2-'; printf 'very-secret\\n' >&2",
            "printf 'a'; sleep 0.1; printf 'b' >&2; sleep 0.1; printf 'c\\n'",
        ],
    )
    .variable("GIT_STRATEGY", "none", false)
    .variable("SECRET", "hunter2-very-secret", true);
    let (view, _, _) = run_agent(&gitlab, spec).await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert_eq!(view.status, "success", "{trace}");
    let bodies: Vec<&str> = trace
        .lines()
        .map(|line| line.rsplit(' ').next().unwrap_or(line))
        .collect();
    let numbered: Vec<&str> = bodies
        .iter()
        .copied()
        .filter(|b| (b.starts_with("out-") || b.starts_with("err-")) && b.ends_with("-line"))
        .collect();
    let expected: Vec<String> = (1..=400)
        .flat_map(|i| [format!("out-{i:03}-line"), format!("err-{i:03}-line")])
        .collect();
    assert_eq!(
        numbered, expected,
        "lines spliced or out of order:\n{trace}"
    );
    let garbled = bodies
        .iter()
        .filter(|b| b.contains("-line") && !numbered.contains(b) && !b.contains('\''))
        .count();
    assert_eq!(garbled, 0, "{trace}");
    assert!(!trace.contains("hunter2-very-secret"), "{trace}");
    assert!(
        bodies.contains(&"[MASKED]"),
        "the secret split across streams is masked: {trace}"
    );
    assert!(
        bodies.contains(&"abc"),
        "stdout, stderr, stdout bytes stay in order: {trace}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_entries_replace_links_in_the_project_and_never_write_through_them() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "original").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("builds/group/project");
    std::fs::create_dir_all(project.join("vendor")).unwrap();
    std::os::unix::fs::symlink(&victim, project.join("vendor/lib")).unwrap();
    let file = dir.path().join("cache/group/project/deps/cache.zip");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        hostile_zips::build(&[hostile_zips::Entry::File("vendor/lib", b"from the cache")]),
    )
    .unwrap();
    let (view, _, _) = run_agent_in(
        &gitlab,
        cache_job(&["cat vendor/lib"], "deps", &[]),
        dir.path(),
    )
    .await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert_eq!(view.status, "success", "{trace}");
    assert!(trace.contains("Successfully extracted cache"), "{trace}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    assert!(trace.contains("from the cache"), "{trace}");
}

/// The job's Fargate cost is computed once, by the agent, from the size and price the manager
/// handed it: the cost line of the log says the cost the termination report carries (which
/// the manager counts in `podrunner_fargate_cost_usd_total`), and both are
/// `FargateBilling::cost` of the handed-over price.
#[tokio::test(flavor = "multi_thread")]
async fn the_fargate_cost_line_and_the_report_say_one_cost() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let billing = podrunner_agent::FargateBilling {
        capacity: "2vCPU 9GB".to_owned(),
        // Not a round number: a price printed and parsed back would lose digits.
        usd_per_hour: 0.120_965_123_456_789,
    };
    let annotation = billing.to_annotation();
    let spec = JobSpec::new("build", &["sleep 1.2"]).variable("GIT_STRATEGY", "none", false);
    let (view, report, _) = run_agent_with_env(
        &gitlab,
        spec,
        dir.path(),
        &[(podrunner_agent::FARGATE_PRICE_ENV, &annotation)],
    )
    .await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert_eq!(view.status, "success", "{trace}");
    let cost: podrunner_agent::FargateCost =
        serde_json::from_value(report["fargate"].clone()).expect("the report has the cost");
    // serde_json reads a float back to within one ulp (no `float_roundtrip`), so the report's
    // dollars are compared to that; the price itself went through the annotation whole.
    let computed = billing.cost(cost.seconds);
    assert_eq!(
        (&cost.capacity, cost.usd_per_hour, cost.seconds),
        (&computed.capacity, computed.usd_per_hour, computed.seconds),
        "{report}"
    );
    assert!(
        (cost.usd - computed.usd).abs() <= f64::EPSILON * computed.usd,
        "{report}"
    );
    assert!(cost.seconds >= 2.0, "{cost:?}");
    assert_eq!(cost.usd_per_hour, billing.usd_per_hour);
    assert!(trace.contains(&cost.log_line()), "{trace}");
    assert!(
        trace.contains(&format!("about ${:.6}", cost.usd)),
        "{trace}"
    );

    // A price that is not one is said, not silently dropped; the report has no cost then.
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::new("build", &["true"]).variable("GIT_STRATEGY", "none", false);
    let (view, report, _) = run_agent_with_env(
        &gitlab,
        spec,
        dir.path(),
        &[(podrunner_agent::FARGATE_PRICE_ENV, "0.12")],
    )
    .await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert!(
        trace.contains("is not a Fargate size and price") && !trace.contains("about $"),
        "{trace}"
    );
    assert!(report["fargate"].is_null(), "{report}");
}

/// A spec the agent cannot use fails before it talks to GitLab, naming the spec file and why:
/// a spec of another version names both versions.
#[tokio::test(flavor = "multi_thread")]
async fn a_spec_of_another_version_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.json");
    let other = podrunner_agent::SPEC_VERSION + 1;
    std::fs::write(&spec_path, spec_file(serde_json::json!({"version": other}))).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["agent", "--spec", spec_path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(spec_path.to_str().unwrap())
            && stderr.contains(&format!("the spec is version {other}"))
            && stderr.contains(&format!(
                "this agent reads version {}",
                podrunner_agent::SPEC_VERSION
            )),
        "{stderr}"
    );
}
