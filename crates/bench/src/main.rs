//! Runs the real `podrunner run` against the testkit stand-ins and measures it from outside.
//!
//! Shell executor: manager RSS idle and with 20 running jobs, agent RSS while a job runs, and
//! the median time from a job being queued to its first script output.
//!
//!     cargo build --release -p podrunner
//!     cargo run --release -p podrunner-bench -- target/release/podrunner
//!
//! Kubernetes executor (the testkit API server, Fargate scheduler and bubblewrap kubelet; the
//! binary must be static because it is the init image): API requests per job, manager RSS with
//! N concurrent job pods (default 200), and the time from the build container running to
//! GitLab receiving the agent's first trace bytes.
//!
//!     RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p podrunner --target x86_64-unknown-linux-gnu
//!     cargo run --release -p podrunner-bench -- kubernetes target/x86_64-unknown-linux-gnu/release/podrunner [PODS]
//!
//! Scale (module `scale`): up to a thousand concurrent job pods on a simulating kubelet.

mod archive;
mod probe;
mod scale;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use podrunner_testkit::{GitlabStandIn, Image, JobSpec, KubernetesStandIn};

const TOKEN: &str = "glrt-bench-runner";

/// Processes whose command line starts with `<program> agent`.
fn agents(program: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                let parts: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
                parts.len() > 1
                    && parts[0] == program.as_os_str().as_encoded_bytes()
                    && parts[1] == b"agent"
            })
        })
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// Seconds since the epoch of the first `01O` line (job output) of a timestamped trace.
fn first_job_output(trace: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(trace);
    let line = text
        .lines()
        .find(|l| l.get(28..31) == Some("01O") && !l.contains("$ "))?;
    let stamp = &line[..27];
    // YYYY-MM-DDTHH:MM:SS.ffffffZ
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.trim_end_matches('Z').split(':');
    let (h, min, s) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(mode) = args.first().filter(|a| a.starts_with("archive")) {
        return archive::main(mode, &args[1..]).await;
    }
    if args.first().map(String::as_str) == Some("scale") {
        let pods = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
        scale::scale(&program(args.get(1)), pods).await;
    } else if args.first().map(String::as_str) == Some("kubernetes") {
        let program = program(args.get(1));
        let pods = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200);
        kubernetes(&program, pods).await;
    } else {
        shell(&program(args.first())).await;
    }
}

fn program(arg: Option<&String>) -> PathBuf {
    let program = PathBuf::from(
        arg.cloned()
            .unwrap_or_else(|| "target/release/podrunner".to_owned()),
    );
    let program = std::path::absolute(&program).expect("program path");
    assert!(
        program.is_file(),
        "{} does not exist: build it with cargo build --release -p podrunner",
        program.display()
    );
    program
}

async fn shell(program: &Path) {
    let program = program.to_owned();
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab.set_long_poll(Duration::from_secs(50));
    let dir = std::env::temp_dir().join(format!("podrunner-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!("concurrent = 20\ncheck_interval = 3\n[[runners]]\n  url = \"{}\"\n  token = \"{TOKEN}\"\n  executor = \"shell\"\n  builds_dir = \"{}\"\n", gitlab.url(), dir.join("builds").display()),
    )
    .expect("config");
    let mut manager = tokio::process::Command::new(&program)
        .args(["run", "-c", config.to_str().expect("utf-8 path")])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start podrunner run");
    let pid = manager.id().expect("pid");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = probe::memory_kib(pid).0;

    // Dispatch latency: one job at a time, queued while the manager long-polls.
    let mut latencies = Vec::new();
    for i in 0..15 {
        let queued = now();
        let id = gitlab.enqueue(
            JobSpec::new(&format!("latency-{i}"), &["echo first-output"]).variable(
                "GIT_STRATEGY",
                "none",
                false,
            ),
        );
        let view = gitlab
            .wait_for_job(id, Duration::from_secs(60), |j| j.status == "success")
            .await;
        if let Some(first) = first_job_output(&view.trace) {
            latencies.push((first - queued) * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // 20 jobs at once.
    let ids: Vec<i64> = (0..20)
        .map(|i| {
            gitlab.enqueue(JobSpec::new(&format!("load-{i}"), &["sleep 6"]).variable(
                "GIT_STRATEGY",
                "none",
                false,
            ))
        })
        .collect();
    let mut busy_manager = 0;
    let mut agent_max = 0;
    let mut agents_seen = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        busy_manager = busy_manager.max(probe::memory_kib(pid).0);
        let running = agents(&program);
        agents_seen = agents_seen.max(running.len());
        for agent in running {
            agent_max = agent_max.max(probe::memory_kib(agent).0);
        }
    }
    for id in ids {
        gitlab
            .wait_for_job(id, Duration::from_secs(60), |j| j.status == "success")
            .await;
    }
    let _ = tokio::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), manager.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);

    let report = serde_json::json!({
        "manager_rss_idle_kib": idle,
        "manager_rss_with_20_running_jobs_kib": busy_manager,
        "agents_running_at_once": agents_seen,
        "agent_rss_max_kib": agent_max,
        "queued_to_first_output_ms_median": if latencies.is_empty() { 0.0 } else { median(&mut latencies) },
        "queued_to_first_output_ms_samples": latencies.len(),
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}

async fn kubernetes(program: &Path, pods: usize) {
    const INIT_IMAGE: &str = "podrunner:bench";
    const NS: &str = "gitlab-runner";
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab.set_long_poll(Duration::from_secs(50));
    let kube = KubernetesStandIn::start(2, 4.0).await;
    kube.add_fargate_profile("gitlab-jobs", NS, &[("use-fargate", "true")]);
    kube.map_image(
        INIT_IMAGE,
        Image::Files(vec![(program.to_owned(), "/podrunner".into())]),
    );
    kube.map_image("alpine:3.20", Image::HostRoot);
    let dir = std::env::temp_dir().join(format!("podrunner-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let kubeconfig = kube.write_kubeconfig(&dir);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!("concurrent = {pods}\ncheck_interval = 1\n[[runners]]\n  url = \"{}\"\n  token = \"{TOKEN}\"\n  executor = \"kubernetes\"\n  request_concurrency = 4\n  [runners.kubernetes]\n    namespace = \"{NS}\"\n    [runners.kubernetes.pod_labels]\n      use-fargate = \"true\"\n", gitlab.url()),
    )
    .expect("config");
    let mut manager = tokio::process::Command::new(program)
        .args(["run", "-c", config.to_str().expect("utf-8 path")])
        .env("KUBECONFIG", &kubeconfig)
        .env("PODRUNNER_INIT_IMAGE", INIT_IMAGE)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start podrunner run");
    let pid = manager.id().expect("pid");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = probe::memory_kib(pid).0;

    // One job at a time: build container running -> first trace bytes at GitLab.
    let writes_before = kube.requests().iter().filter(|r| r.method != "GET").count();
    let mut latencies = Vec::new();
    let samples = 10;
    for i in 0..samples {
        let id = gitlab.enqueue(
            JobSpec::new(&format!("latency-{i}"), &["echo first-output"]).variable(
                "GIT_STRATEGY",
                "none",
                false,
            ),
        );
        gitlab
            .wait_for_job(id, Duration::from_secs(60), |j| j.status == "success")
            .await;
        let started = kube.container_started(NS, &format!("podrunner-job-{id}"), "build");
        // The manager's own patches (the log while the pod starts) come before.
        let first_trace = gitlab
            .requests()
            .into_iter()
            .find(|r| {
                r.method == "PATCH"
                    && r.path.contains(&format!("/jobs/{id}/trace"))
                    && started.is_some_and(|s| r.at >= s)
            })
            .map(|r| r.at);
        if let (Some(started), Some(first)) = (started, first_trace)
            && let Ok(delta) = first.duration_since(started)
        {
            latencies.push(delta.as_secs_f64() * 1000.0);
        }
        // Let the pod go before the next one, so the numbers are per job.
        for _ in 0..100 {
            if kube.objects("Pod").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let requests = kube.requests();
    let writes = requests.iter().filter(|r| r.method != "GET").count() - writes_before;
    let reads: Vec<String> = requests
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.uri.clone())
        .collect();

    // Many jobs at once.
    let ids: Vec<i64> = (0..pods)
        .map(|i| {
            gitlab.enqueue(JobSpec::new(&format!("load-{i}"), &["sleep 45"]).variable(
                "GIT_STRATEGY",
                "none",
                false,
            ))
        })
        .collect();
    // Sampled for at least 10 s, to catch the peak after the last pod ran.
    let seen = probe::load(
        &kube,
        pid,
        pods,
        Duration::from_secs(10),
        Duration::from_secs(180),
    )
    .await;
    let (busy_manager, running_max) = (seen.rss_max_kib, seen.running_max);
    let all_running_after_s = seen.seconds.unwrap_or(180.0);
    for id in ids {
        gitlab
            .wait_for_job(id, Duration::from_secs(300), |j| j.status == "success")
            .await;
    }
    let _ = tokio::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(60), manager.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);

    let report = serde_json::json!({
        "manager_rss_idle_kib": idle,
        "concurrent_job_pods_running_max": running_max,
        "seconds_until_all_running": all_running_after_s,
        "manager_rss_with_concurrent_job_pods_kib": busy_manager,
        "api_writes_per_job": writes as f64 / samples as f64,
        "api_reads_total_before_load": reads,
        "build_running_to_first_trace_ms_median": if latencies.is_empty() { 0.0 } else { median(&mut latencies) },
        "build_running_to_first_trace_ms_samples": latencies.len(),
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
