//! `podrunner run` with the shell executor against the testkit GitLab: real bash, real git
//! over HTTP, real signals.

use std::path::PathBuf;
use std::time::Duration;

use podrunner_testkit::{GitlabStandIn, JobSpec, JobView};
use rustix::process::{Pid, Signal, kill_process};

const TOKEN: &str = "glrt-e2e-runner-token";

struct Harness {
    gitlab: GitlabStandIn,
    dir: tempfile::TempDir,
    child: tokio::process::Child,
}

impl Harness {
    async fn start(concurrent: u32, runner_extra: &str) -> Harness {
        let gitlab = GitlabStandIn::start().await;
        gitlab.add_runner_token(TOKEN);
        gitlab.set_long_poll(Duration::from_secs(5));
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let builds = dir.path().join("builds");
        std::fs::write(
            &config,
            format!(
                "concurrent = {concurrent}\ncheck_interval = 1\nshutdown_timeout = 15\n[[runners]]\n  name = \"e2e\"\n  url = \"{}\"\n  token = \"{TOKEN}\"\n  executor = \"shell\"\n  builds_dir = \"{}\"\n{runner_extra}\n",
                gitlab.url(),
                builds.display()
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
            .args(["run", "-c", config.to_str().unwrap()])
            .env_remove("CONFIG_FILE")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Harness { gitlab, dir, child }
    }

    async fn finished(&self, id: i64) -> JobView {
        self.gitlab
            .wait_for_job(id, Duration::from_secs(60), |j| {
                matches!(j.status.as_str(), "success" | "failed")
            })
            .await
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        kill_process(pid, signal).unwrap();
    }

    async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("podrunner run exits")
            .unwrap()
            .code()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn trace(view: &JobView) -> String {
    String::from_utf8_lossy(&view.trace).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn success_variables_masking_and_file_variables() {
    let mut h = Harness::start(2, "").await;
    let id = h.gitlab.enqueue(
        JobSpec::new(
            "vars",
            &[
                "echo \"masked: $PASSWORD\"",
                "echo \"file holds: $(cat \"$CONFIG_FILE_VAR\")\"",
                "echo \"path is a file: $CONFIG_FILE_VAR\"",
                "echo \"status=$CI_JOB_STATUS server=$CI_SERVER\"",
            ],
        )
        .variable("PASSWORD", "correct-horse-battery", true)
        .variable("GIT_STRATEGY", "none", false)
        .file_variable("CONFIG_FILE_VAR", "from a file variable"),
    );
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(
        text.contains("masked: [MASKED]") && !text.contains("correct-horse-battery"),
        "{text}"
    );
    assert!(text.contains("file holds: from a file variable"), "{text}");
    assert!(
        text.contains("path is a file: /") && text.contains(".tmp/CONFIG_FILE_VAR"),
        "{text}"
    );
    assert!(text.contains("server=yes"), "{text}");
    assert_eq!(
        view.updates.first().unwrap()["state"],
        "running",
        "the job was acknowledged first"
    );
    h.signal(Signal::QUIT);
    assert_eq!(h.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn script_failure_exit_code_and_after_script() {
    let mut h = Harness::start(2, "").await;
    let id = h.gitlab.enqueue(
        JobSpec::new("fails", &["echo before", "exit 3", "echo never"])
            .variable("GIT_STRATEGY", "none", false)
            .after_script(&["echo \"after_script sees $CI_JOB_STATUS\""]),
    );
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(
        (
            view.status.as_str(),
            view.failure_reason.as_deref(),
            view.exit_code
        ),
        ("failed", Some("script_failure"), Some(3)),
        "{text}"
    );
    assert!(
        text.contains("before") && !text.contains("\nnever") && !text.contains(" never\n"),
        "{text}"
    );
    assert!(text.contains("after_script sees failed"), "{text}");
    assert!(text.contains("ERROR: Job failed: exit code 3"), "{text}");
    h.signal(Signal::QUIT);
    assert_eq!(h.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn output_limit() {
    let mut h = Harness::start(2, "  output_limit = 1\n").await;
    let big = h.gitlab.enqueue(
        JobSpec::new(
            "big",
            &["for i in $(seq 1 500); do echo \"line $i of output\"; done"],
        )
        .variable("GIT_STRATEGY", "none", false),
    );
    let view = h.finished(big).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "the job goes on past the limit");
    assert!(
        text.contains("Job's log exceeded limit of 1024 bytes."),
        "{text}"
    );
    assert!(!text.contains("line 500 of output"));
    assert!(view.trace.len() < 1024 + 200);
    h.signal(Signal::QUIT);
    assert_eq!(h.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn job_timeout() {
    let mut h = Harness::start(2, "").await;
    let slow = h.gitlab.enqueue(
        JobSpec::new("slow", &["sleep 60"])
            .variable("GIT_STRATEGY", "none", false)
            .after_script(&["echo after"])
            .timeout(3),
    );
    let started = std::time::Instant::now();
    let view = h.finished(slow).await;
    let text = trace(&view);
    assert_eq!(
        (view.status.as_str(), view.failure_reason.as_deref()),
        ("failed", Some("job_execution_timeout")),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped at the timeout, not after the sleep"
    );
    assert!(
        text.contains("execution took longer than 3 seconds"),
        "{text}"
    );
    assert!(
        !text.contains("Running after script"),
        "no after_script after the job timeout: {text}"
    );
    h.signal(Signal::QUIT);
    assert_eq!(h.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_cancel_runs_after_script_and_abort_stops_at_once() {
    let mut h = Harness::start(2, "").await;
    let marker = h.path("started");
    let canceled = h.gitlab.enqueue(
        JobSpec::new(
            "cancel-me",
            &[&format!("touch {}", marker.display()), "sleep 60"],
        )
        .variable("GIT_STRATEGY", "none", false)
        .after_script(&["echo \"after_script: $CI_JOB_STATUS\""]),
    );
    for _ in 0..200 {
        if marker.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.gitlab.set_status(canceled, "canceling");
    let view = h
        .gitlab
        .wait_for_job(canceled, Duration::from_secs(60), |j| {
            j.updates.iter().any(|u| u["state"] == "failed")
        })
        .await;
    let text = trace(&view);
    assert!(
        text.contains("WARNING: script canceled externally (UI, API)"),
        "{text}"
    );
    assert!(text.contains("after_script: canceled"), "{text}");

    // Canceled (not canceling): the script stops at once and nothing else of the job runs.
    let marker = h.path("started-2");
    let never = h.path("never");
    let after = h.path("after");
    let aborted = h.gitlab.enqueue(
        JobSpec::new(
            "abort-me",
            &[
                &format!("touch {}", marker.display()),
                "sleep 60",
                &format!("touch {}", never.display()),
            ],
        )
        .variable("GIT_STRATEGY", "none", false)
        .after_script(&[&format!("touch {}", after.display())]),
    );
    while !marker.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_at = std::time::Instant::now();
    h.gitlab.set_status(aborted, "canceled");
    h.signal(Signal::QUIT);
    assert_eq!(
        h.exit_code().await,
        Some(0),
        "the graceful stop waits for the aborted job, which ends promptly"
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(20),
        "took {:?}",
        stopped_at.elapsed()
    );
    assert!(
        !never.exists() && !after.exists(),
        "neither the rest of the script nor after_script ran"
    );
    assert_eq!(h.gitlab.job(aborted).unwrap().status, "canceled");
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_fetch_and_shallow_depth_from_the_git_server() {
    let mut h = Harness::start(1, "").await;
    h.gitlab
        .create_repository("group/app", &[("app.txt", "v1\n")])
        .unwrap();
    h.gitlab
        .add_commit("group/app", &[("app.txt", "v2\n")])
        .unwrap();
    let head = h
        .gitlab
        .add_commit("group/app", &[("app.txt", "v3\n")])
        .unwrap();
    let clone = h.gitlab.enqueue(
        JobSpec::new(
            "clone",
            &[
                "cat app.txt",
                "echo commits=$(git rev-list --count HEAD)",
                "git config --get remote.origin.url",
                "grep -c gitlab-ci-token .git/config || true",
            ],
        )
        .variable("GIT_DEPTH", "1", false)
        .git("group/app", &head),
    );
    let view = h.finished(clone).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(
        text.contains("Created fresh repository.")
            && text.contains(&format!("Checking out {} as detached HEAD", &head[..8])),
        "{text}"
    );
    assert!(
        text.contains("v3") && text.contains("commits=1"),
        "shallow: {text}"
    );
    assert!(
        text.contains("/group/app.git") && !text.contains("glcbt-"),
        "no token in the remote URL: {text}"
    );
    assert!(
        text.contains("\n0\n") || text.contains(" 0\n"),
        "the token is not in .git/config: {text}"
    );

    let fetch = h.gitlab.enqueue(
        JobSpec::new(
            "fetch",
            &["echo commits=$(git rev-list --count HEAD)", "cat app.txt"],
        )
        .variable("GIT_STRATEGY", "fetch", false)
        .variable("GIT_DEPTH", "0", false)
        .git("group/app", &head),
    );
    let view = h.finished(fetch).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(
        text.contains("Reinitialized existing Git repository.") && text.contains("commits=3"),
        "fetch reuses and unshallows: {text}"
    );
    h.signal(Signal::QUIT);
    assert_eq!(h.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_jobs_through_concurrent_four() {
    let mut h = Harness::start(4, "").await;
    let log = h.path("overlap.log");
    let script = format!(
        "echo \"start $(date +%s.%N)\" >> {0}; sleep 0.4; echo \"end $(date +%s.%N)\" >> {0}",
        log.display()
    );
    let ids: Vec<i64> = (0..20)
        .map(|i| {
            h.gitlab
                .enqueue(JobSpec::new(&format!("job-{i}"), &[&script]).variable(
                    "GIT_STRATEGY",
                    "none",
                    false,
                ))
        })
        .collect();
    for id in &ids {
        let view = h.finished(*id).await;
        assert_eq!(view.status, "success", "{}", trace(&view));
    }
    let mut events: Vec<(f64, i32)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let (kind, time) = l.split_once(' ').unwrap();
            (
                time.parse::<f64>().unwrap(),
                if kind == "start" { 1 } else { -1 },
            )
        })
        .collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut running, mut most) = (0, 0);
    for (_, delta) in events {
        running += delta;
        most = most.max(running);
    }
    assert!(most <= 4, "at most 4 jobs at once, saw {most}");
    assert!(most >= 2, "jobs ran in parallel, saw {most}");
    h.signal(Signal::QUIT);
    assert_eq!(h.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigquit_finishes_running_jobs_and_takes_no_more() {
    let mut h = Harness::start(2, "").await;
    let marker = h.path("running");
    let id = h.gitlab.enqueue(
        JobSpec::new(
            "long",
            &[
                &format!("touch {}", marker.display()),
                "sleep 2",
                "echo finished",
            ],
        )
        .variable("GIT_STRATEGY", "none", false),
    );
    while !marker.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.signal(Signal::QUIT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = h.gitlab.enqueue(JobSpec::new("late", &["true"]));
    assert_eq!(h.exit_code().await, Some(0));
    let view = h.gitlab.job(id).unwrap();
    assert_eq!(view.status, "success", "{}", trace(&view));
    assert!(trace(&view).contains("finished"));
    assert_eq!(
        h.gitlab.job(late).unwrap().status,
        "pending",
        "no job is taken after SIGQUIT"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_interrupts_running_jobs_and_reports_them() {
    let mut h = Harness::start(2, "").await;
    let marker = h.path("running");
    let id = h.gitlab.enqueue(
        JobSpec::new(
            "long",
            &[&format!("touch {}", marker.display()), "sleep 60"],
        )
        .variable("GIT_STRATEGY", "none", false),
    );
    while !marker.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = std::time::Instant::now();
    h.signal(Signal::TERM);
    assert_eq!(h.exit_code().await, Some(0), "the job reported in time");
    assert!(started.elapsed() < Duration::from_secs(20));
    let view = h.gitlab.job(id).unwrap();
    assert_eq!(
        (view.status.as_str(), view.failure_reason.as_deref()),
        ("failed", Some("unknown_failure")),
        "runner_interrupted, mapped: {}",
        trace(&view)
    );
    assert!(
        trace(&view).contains("the runner was stopped while the job ran"),
        "{}",
        trace(&view)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_from_gitlab_runner_mock_succeeds() {
    use gitlab_runner_mock::{GitlabRunnerMock, MockJobState, MockJobStepName, MockJobStepWhen};
    let mock = GitlabRunnerMock::start().await;
    let mut builder = mock.job_builder("mock-job".to_owned());
    builder.add_variable("GIT_STRATEGY".to_owned(), "none".to_owned(), true, false);
    builder.add_variable(
        "GREETING".to_owned(),
        "hello from the mock".to_owned(),
        true,
        false,
    );
    builder.add_step(
        MockJobStepName::Script,
        vec!["echo \"$GREETING\"".to_owned()],
        3600,
        MockJobStepWhen::OnSuccess,
        false,
    );
    let job = builder.build();
    mock.enqueue_job(job.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "concurrent = 1\ncheck_interval = 1\n[[runners]]\n  url = \"{}\"\n  token = \"{}\"\n  executor = \"shell\"\n  builds_dir = \"{}\"\n",
            mock.uri(),
            mock.runner_token(),
            dir.path().join("builds").display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["run", "-c", config.to_str().unwrap()])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !job.finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        job.state(),
        MockJobState::Success,
        "{}",
        String::from_utf8_lossy(&job.log())
    );
    assert!(String::from_utf8_lossy(&job.log()).contains("hello from the mock"));
    kill_process(
        Pid::from_raw(child.id().unwrap() as i32).unwrap(),
        Signal::QUIT,
    )
    .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap()
            .unwrap()
            .code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_pass_from_a_job_to_its_dependant() {
    let mut h = Harness::start(1, "").await;
    let producer = h.gitlab.enqueue(
        JobSpec::new("build", &["mkdir -p out/nested", "echo binary > out/app", "echo log > out/nested/build.log", "echo report > junit.xml"])
            .variable("GIT_STRATEGY", "none", false)
            .payload_field(
                "artifacts",
                serde_json::json!([
                    {"name": "bundle", "paths": ["out/"], "exclude": ["out/**/*.log"], "when": "on_success", "artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 week"},
                    {"paths": ["junit.xml"], "when": "always", "artifact_type": "junit", "artifact_format": "gzip"}
                ]),
            ),
    );
    let view = h.finished(producer).await;
    assert_eq!(view.status, "success", "{}", trace(&view));
    assert_eq!(view.artifacts.len(), 2, "{}", trace(&view));
    let (query, name, _) = &view.artifacts[0];
    assert_eq!(name, "bundle.zip");
    assert_eq!(query.get("expire_in").map(String::as_str), Some("1 week"));
    let (query, name, bytes) = &view.artifacts[1];
    assert_eq!(
        (
            name.as_str(),
            query.get("artifact_type").map(String::as_str)
        ),
        ("junit.xml.gz", Some("junit"))
    );
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");

    let consumer = h.gitlab.enqueue(
        JobSpec::new(
            "test",
            &[
                "cat out/app",
                "test ! -e out/nested/build.log && echo excluded",
            ],
        )
        .variable("GIT_STRATEGY", "none", false)
        .depends_on(&[producer]),
    );
    let view = h.finished(consumer).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(
        text.contains(&format!("Downloading artifacts for build ({producer})..."))
            && text.contains("binary")
            && text.contains("excluded"),
        "{text}"
    );
    h.signal(Signal::QUIT);
    assert_eq!(h.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_is_saved_and_restored() {
    let cache_dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(
        1,
        &format!("  cache_dir = \"{}\"\n", cache_dir.path().display()),
    )
    .await;
    let cache = serde_json::json!([{"key": "deps-$CI_JOB_NAME_SUFFIX", "paths": ["vendor/"], "policy": "pull-push", "when": "on_success"}]);
    let first = h.gitlab.enqueue(
        JobSpec::new(
            "first",
            &[
                "test -e vendor/lib && echo restored || echo cold",
                "mkdir -p vendor && echo cached-lib > vendor/lib",
            ],
        )
        .variable("GIT_STRATEGY", "none", false)
        .variable("CI_JOB_NAME_SUFFIX", "v1", false)
        .payload_field("cache", cache.clone()),
    );
    let view = h.finished(first).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(
        text.contains("cold")
            && text.contains("Creating cache deps-v1...")
            && text.contains("Created cache"),
        "{text}"
    );
    // A clean checkout (GIT_STRATEGY=empty) gets vendor/ back from the cache only.
    let second = h.gitlab.enqueue(
        JobSpec::new("second", &["cat vendor/lib"])
            .variable("GIT_STRATEGY", "empty", false)
            .variable("CI_JOB_NAME_SUFFIX", "v1", false)
            .payload_field("cache", cache),
    );
    let view = h.finished(second).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(
        text.contains("Checking cache for deps-v1...")
            && text.contains("Successfully extracted cache")
            && text.contains("cached-lib"),
        "{text}"
    );
    let fallback = h.gitlab.enqueue(
        JobSpec::new("third", &["cat vendor/lib"])
            .variable("GIT_STRATEGY", "empty", false)
            .payload_field("cache", serde_json::json!([{"key": "deps-v2", "fallback_keys": ["deps-v1"], "paths": ["vendor/"], "policy": "pull"}])),
    );
    let view = h.finished(fallback).await;
    assert!(
        trace(&view).contains("Checking cache for deps-v1...")
            && trace(&view).contains("cached-lib"),
        "{}",
        trace(&view)
    );
    h.signal(Signal::QUIT);
    assert_eq!(h.exit_code().await, Some(0));
}

/// A plain HTTP GET on loopback, returning status and body.
async fn http_get(address: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..100 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(address).await {
            stream
                .write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            let status = response
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {address}");
}

fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_follow_the_jobs() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab.set_long_poll(Duration::from_secs(5));
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "concurrent = 3\ncheck_interval = 1\nlisten_address = \"{address}\"\n[[runners]]\n  name = \"metrics\"\n  url = \"{}\"\n  token = \"{TOKEN}\"\n  executor = \"shell\"\n  limit = 2\n  builds_dir = \"{}\"\n",
            gitlab.url(),
            dir.path().join("builds").display()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args([
            "run",
            "-c",
            config.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert_eq!(http_get(&address, "/healthz").await.0, 200);
    let mut ready = 0;
    for _ in 0..100 {
        ready = http_get(&address, "/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200);
    let (_, body) = http_get(&address, "/metrics").await;
    assert_eq!(
        metric(&body, "gitlab_runner_concurrent "),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "gitlab_runner_limit{runner=\"metrics\""),
        Some(2.0),
        "{body}"
    );
    assert!(body.contains("gitlab_runner_version_info{"), "{body}");

    let marker = dir.path().join("running");
    let running = gitlab.enqueue(
        JobSpec::new("slow", &[&format!("touch {}", marker.display()), "sleep 2"]).variable(
            "GIT_STRATEGY",
            "none",
            false,
        ),
    );
    while !marker.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = http_get(&address, "/metrics").await;
    assert_eq!(
        metric(&body, "gitlab_runner_jobs{runner=\"metrics\""),
        Some(1.0),
        "the gauge counts the running job: {body}"
    );
    let view = gitlab
        .wait_for_job(running, Duration::from_secs(30), |j| j.status == "success")
        .await;
    assert_eq!(view.status, "success");
    let failing =
        gitlab.enqueue(JobSpec::new("fails", &["exit 1"]).variable("GIT_STRATEGY", "none", false));
    gitlab
        .wait_for_job(failing, Duration::from_secs(30), |j| j.status == "failed")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = http_get(&address, "/metrics").await;
    assert_eq!(
        metric(&body, "gitlab_runner_jobs{runner=\"metrics\""),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "gitlab_runner_jobs_total{runner=\"metrics\""),
        Some(2.0),
        "{body}"
    );
    // Parsed by the Prometheus project's own Python parser: the exposition is well formed,
    // with gitlab-runner's families and the job histograms filled by the two jobs.
    let exposition = parse_exposition(&body);
    let sample = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        exposition["samples"]
            .as_array()?
            .iter()
            .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v)))
            .and_then(|s| s[2].as_f64())
    };
    assert_eq!(
        sample(
            "gitlab_runner_failed_jobs_total",
            &[("runner", "metrics"), ("failure_reason", "script_failure")]
        ),
        Some(1.0),
        "{body}"
    );
    for (endpoint, status) in [("request_job", "201"), ("update_job", "200")] {
        assert!(
            sample(
                "gitlab_runner_api_request_statuses_total",
                &[
                    ("runner", "metrics"),
                    ("endpoint", endpoint),
                    ("status", status)
                ]
            )
            .is_some_and(|n| n >= 1.0),
            "{body}"
        );
    }
    for histogram in [
        "gitlab_runner_job_duration_seconds",
        "gitlab_runner_job_queue_duration_seconds",
    ] {
        assert_eq!(
            exposition["types"][histogram],
            serde_json::json!(["histogram"]),
            "{body}"
        );
        assert_eq!(
            sample(&format!("{histogram}_count"), &[("runner", "metrics")]),
            Some(2.0),
            "{histogram}: {body}"
        );
    }
    assert_eq!(
        sample(
            "gitlab_runner_request_concurrency",
            &[("runner", "metrics")]
        )
        .map(|n| n <= 1.0),
        Some(true),
        "{body}"
    );
    kill_process(
        Pid::from_raw(child.id().unwrap() as i32).unwrap(),
        Signal::QUIT,
    )
    .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));

    // --log-format json: every line one JSON object with logrus' keys and the job's fields,
    // and no token anywhere.
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    let finished = records
        .iter()
        .find(|r| r["msg"] == "Job finished" && r["job"] == failing)
        .unwrap_or_else(|| panic!("no Job finished record for {failing}:\n{log}"));
    assert_eq!(finished["level"], "info");
    assert_eq!(finished["runner"], "metrics");
    assert_eq!(finished["state"], "failed");
    assert_eq!(finished["failure_reason"], "script_failure");
    assert!(finished["time"].is_string() && finished["duration_s"].is_number());
    for secret in [
        TOKEN.to_owned(),
        gitlab.job_token(running).unwrap(),
        gitlab.job_token(failing).unwrap(),
    ] {
        assert!(!log.contains(&secret), "a token reached the log:\n{log}");
    }
}

/// Families of a Prometheus text exposition, parsed by `prometheus_client.parser`.
fn parse_exposition(body: &str) -> serde_json::Value {
    use std::io::Write;
    let python = std::env::var("PODRUNNER_CHART_PYTHON").expect(
        "PODRUNNER_CHART_PYTHON is not set: scripts/test installs prometheus-client and sets it",
    );
    let mut child = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/prometheus_text.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the exposition does not parse: {}\n{body}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_the_environment_is_verified_with_retries_before_jobs_run() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token("glrt-from-a-secret");
    gitlab.set_long_poll(Duration::from_secs(5));
    // GitLab answers 503 for a while: the retry layer's five attempts, then podrunner's own.
    for _ in 0..6 {
        gitlab.fault(
            podrunner_testkit::Endpoint::Verify,
            podrunner_testkit::Fault::Status(503, vec![("Retry-After".into(), "0".into())]),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("concurrent = 1\ncheck_interval = 1\n[[runners]]\n  name = \"chart\"\n  executor = \"shell\"\n  builds_dir = \"{}\"\n", dir.path().join("builds").display())).unwrap();
    let token_file = dir.path().join("runner-token");
    std::fs::write(&token_file, "glrt-from-a-secret\n").unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args([
            "run",
            "-c",
            config.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .env("CI_SERVER_URL", gitlab.url())
        .env_remove("CI_SERVER_TOKEN")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let id = gitlab.enqueue(JobSpec::new("after-verify", &["echo verified"]).variable(
        "GIT_STRATEGY",
        "none",
        false,
    ));
    let view = gitlab
        .wait_for_job(id, Duration::from_secs(30), |j| j.status == "success")
        .await;
    assert!(String::from_utf8_lossy(&view.trace).contains("verified"));
    assert_eq!(
        gitlab.managers().len(),
        1,
        "the manager was announced by verify"
    );
    kill_process(
        Pid::from_raw(child.id().unwrap() as i32).unwrap(),
        Signal::QUIT,
    )
    .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("Cannot reach GitLab to check the runner token; trying again")
            && String::from_utf8_lossy(&output.stderr).contains("retry_in_s=1"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A refused token is final, with a clear message.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["run", "-c", config.to_str().unwrap(), "--url", gitlab.url()])
        .env("CI_SERVER_TOKEN", "glrt-revoked")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("refused the runner token (403)"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_waits_for_running_jobs_then_returns() {
    let mut h = Harness::start(1, "").await;
    let marker = h.path("running");
    let id = h.gitlab.enqueue(
        JobSpec::new(
            "long",
            &[
                &format!("touch {}", marker.display()),
                "sleep 2",
                "echo done",
            ],
        )
        .variable("GIT_STRATEGY", "none", false),
    );
    while !marker.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = h.child.id().unwrap().to_string();
    let started = std::time::Instant::now();
    let drain = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["drain", "--pid", &pid])
        .status();
    let (drained, manager) = tokio::join!(drain, h.exit_code());
    assert!(drained.unwrap().success());
    assert_eq!(manager, Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "drain returned only after the job finished"
    );
    assert_eq!(
        h.gitlab.job(id).unwrap().status,
        "success",
        "the running job finished"
    );
}

/// The features that GitLab's `RUNNER_FEATURES` table (`app/models/ci/build.rb`) requires of
/// a runner, as the stand-in applies them.
const GITLAB_REQUIRED: &[&str] = &[
    "upload_multiple_artifacts",
    "refspecs",
    "artifacts_exclude",
    "multi_build_steps",
    "return_exit_code",
    "fallback_cache_keys",
    "vault_secrets",
];

/// podrunner announces exactly the network side's features and `JOB_FEATURES`, and each job
/// GitLab gates on a feature is handed to podrunner and run, while a `secrets:` job (no
/// `vault_secrets`) is dropped by GitLab before podrunner sees it. Mutations checked: taking
/// `artifacts_exclude`, `upload_multiple_artifacts`, `fallback_cache_keys` or
/// `return_exit_code` out of `JOB_FEATURES` (the job ends `runner_unsupported`), announcing
/// `vault_secrets` (the secrets job runs), and an agent that ignores `exclude` or writes a
/// raw artifact as a zip (the artifact checks fail).
#[tokio::test(flavor = "multi_thread")]
async fn jobs_gitlab_gates_on_features_are_handed_over_and_run() {
    let announced = serde_json::to_value(podrunner_agent::agent_features()).unwrap();
    let network = serde_json::to_value(podrunner_gitlab::Features::network()).unwrap();
    for (feature, value) in announced.as_object().unwrap() {
        let expected = network[feature] == true
            || podrunner_agent::JOB_FEATURES
                .iter()
                .any(|(name, _)| name == feature);
        assert_eq!(value, &serde_json::json!(expected), "{feature}");
    }
    for (feature, _) in podrunner_agent::JOB_FEATURES {
        assert_eq!(announced[*feature], true, "{feature} is a Features key");
    }
    assert_eq!(announced["vault_secrets"], false);

    let cache_dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(
        4,
        &format!("  cache_dir = \"{}\"\n", cache_dir.path().display()),
    )
    .await;
    let none = |spec: JobSpec| spec.variable("GIT_STRATEGY", "none", false);
    let reports = h.gitlab.enqueue(none(
        JobSpec::new(
            "reports",
            &[
                "echo '<testsuites/>' > report.xml",
                "echo 'requirement: met' > requirements.json",
                "mkdir -p out && echo keep > out/keep.txt && echo drop > out/drop.tmp",
            ],
        )
        .payload_field(
            "artifacts",
            serde_json::json!([
                {"name": "out", "paths": ["out/"], "exclude": ["out/*.tmp"], "when": "on_success", "artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 day"},
                {"name": "junit", "paths": ["report.xml"], "when": "always", "artifact_type": "junit", "artifact_format": "gzip", "expire_in": "1 day"},
                {"name": "requirements", "paths": ["requirements.json"], "when": "on_success", "artifact_type": "requirements", "artifact_format": "raw", "expire_in": "1 day"},
            ]),
        ),
    ));
    let exit_codes = h.gitlab.enqueue(none(
        JobSpec::new("exit-codes", &["exit 3"]).allow_failure_exit_codes(&[3]),
    ));
    let release = h.gitlab.enqueue(none(JobSpec::new("release", &["true"]).payload_field(
        "steps",
        serde_json::json!([
            {"name": "script", "script": ["echo built"], "timeout": 600, "when": "on_success", "allow_failure": false},
            {"name": "release", "script": ["echo released v1"], "timeout": 600, "when": "on_success", "allow_failure": false},
        ]),
    )));
    let merge_request = h.gitlab.enqueue(none(
        JobSpec::new("mr", &["echo mr pipeline"]).merge_request_ref(5),
    ));
    let secrets = h.gitlab.enqueue(none(
        JobSpec::new("secrets", &["echo must not run"]).payload_field(
            "secrets",
            serde_json::json!({"DB_PASSWORD": {"vault": {"engine": {"name": "kv-v2", "path": "kv"}, "path": "db", "field": "password"}, "file": true}}),
        ),
    ));

    let view = h.finished(reports).await;
    assert_eq!(view.status, "success", "{}", trace(&view));
    let by_type = |t: &str| {
        view.artifacts
            .iter()
            .find(|(q, _, _)| q.get("artifact_type").map(String::as_str) == Some(t))
            .unwrap_or_else(|| panic!("no {t} artifact: {:?}", view.artifacts))
            .clone()
    };
    let (query, _, archive) = by_type("archive");
    assert_eq!(query["artifact_format"], "zip");
    let names = String::from_utf8_lossy(&archive);
    assert!(
        names.contains("out/keep.txt") && !names.contains("out/drop.tmp"),
        "exclude applied"
    );
    let (query, name, junit) = by_type("junit");
    assert_eq!(query["artifact_format"], "gzip");
    assert!(
        junit.starts_with(&[0x1f, 0x8b]) && name.ends_with(".gz"),
        "{name}"
    );
    let (query, _, raw) = by_type("requirements");
    assert_eq!(query["artifact_format"], "raw");
    assert_eq!(raw, b"requirement: met\n");

    let view = h.finished(exit_codes).await;
    assert_eq!(
        (view.status.as_str(), view.exit_code, view.allowed_to_fail),
        ("failed", Some(3), true),
        "{}",
        trace(&view)
    );
    let view = h.finished(release).await;
    assert!(
        view.status == "success" && trace(&view).contains("released v1"),
        "{}",
        trace(&view)
    );
    let view = h.finished(merge_request).await;
    assert_eq!(view.status, "success", "{}", trace(&view));

    let view = h.finished(secrets).await;
    assert_eq!(
        (view.status.as_str(), view.failure_reason.as_deref()),
        ("failed", Some("runner_unsupported"))
    );
    assert!(
        view.updates.is_empty() && view.trace.is_empty() && view.runner_features.is_null(),
        "never reached podrunner: {view:?}"
    );
    for feature in GITLAB_REQUIRED {
        let gated = *feature != "vault_secrets";
        assert_eq!(announced[*feature] == true, gated, "{feature}");
    }
    h.signal(Signal::QUIT);
    assert_eq!(h.exit_code().await, Some(0));
}

/// After a 409 the manager waits `check_interval` before it asks again, as gitlab-runner.
/// Counted on the stand-in's request log with an hour-long interval: one request, then
/// none. Mutation checked: asking again at once after a 409 (the old `again_now`) makes the
/// next requests arrive within milliseconds.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_conflict_the_next_request_waits_for_check_interval() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab.inject_conflicts(3);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "concurrent = 1\ncheck_interval = 3600\n[[runners]]\n  name = \"e2e\"\n  url = \"{}\"\n  token = \"{TOKEN}\"\n  executor = \"shell\"\n  builds_dir = \"{}\"\n",
            gitlab.url(),
            dir.path().join("builds").display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env_remove("CONFIG_FILE")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let requests = || {
        gitlab
            .requests()
            .iter()
            .filter(|r| r.path == "/api/v4/jobs/request")
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while requests() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no job request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A manager that asks again at once has made its next requests long before this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        requests(),
        1,
        "one request, answered 409, then the interval"
    );
    let pid = Pid::from_raw(child.id().unwrap() as i32).unwrap();
    kill_process(pid, Signal::QUIT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `fail_job` on a job whose final `state=failed` GitLab applies: the 200 carries the new
/// `Job-Status: failed`, and that is delivery. Mutation checked: reading the answer's
/// `Abort` as "not delivered" (the old code) makes it return false.
#[tokio::test(flavor = "multi_thread")]
async fn fail_job_counts_a_200_with_job_status_failed_as_delivered() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let id = gitlab.enqueue(JobSpec::new("lost", &["true"]));
    let client = podrunner_gitlab::GitlabClient::new(&podrunner_gitlab::ClientOptions {
        url: gitlab.url().to_owned(),
        ..Default::default()
    })
    .unwrap();
    let info = podrunner_gitlab::RunnerInfo::new(
        podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION,
        "shell",
        podrunner_agent::agent_features(),
    );
    let token = podrunner_gitlab::Secret::new(TOKEN);
    let payload = match client
        .request_job(&token, "s_0123456789ab", &info, None)
        .await
        .outcome
    {
        podrunner_gitlab::JobRequestOutcome::Job(job) => *job,
        other => panic!("{other:?}"),
    };
    let ack = podrunner_gitlab::api::UpdateJobRequest {
        info: info.clone(),
        token: payload.job.token.clone(),
        state: podrunner_gitlab::api::JobState::Running,
        failure_reason: None,
        checksum: None,
        output: None,
        exit_code: None,
    };
    client.update_job(id, &ack).await;
    let runner = podrunner_config::RunnerConfig {
        url: Some(gitlab.url().to_owned()),
        token: Some(TOKEN.to_owned().into()),
        ..Default::default()
    };
    let job = podrunner_manager::AcceptedJob {
        runner: std::sync::Arc::new(runner),
        payload,
        system_id: "s_0123456789ab".to_owned(),
        concurrent_id: 0,
    };
    assert!(
        podrunner_manager::fail_job(
            &job.contact(),
            &info,
            "0.1.0",
            "the agent vanished",
            Some(0)
        )
        .await,
        "a 200 with Job-Status: failed is delivery"
    );
    let view = gitlab.job(id).unwrap();
    assert_eq!(
        (view.status.as_str(), view.failure_reason.as_deref()),
        ("failed", Some("runner_system_failure"))
    );
    assert!(
        trace(&view).contains("the agent vanished"),
        "{}",
        trace(&view)
    );
}
