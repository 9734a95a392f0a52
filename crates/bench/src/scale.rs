//! Scale: the real `podrunner run` with up to a thousand concurrent job pods, on the testkit
//! API server whose kubelet simulates the build containers (no process runs; module
//! `simulated_kubelet` of the Kubernetes stand-in), so that the pods fit one small machine.
//!
//! Reports the manager's RSS (VmRSS, VmHWM) at each step of running pods (100, 250, 500,
//! 1000 by default), each once the manager has settled (it has nothing left to do for the
//! pods' starts: see [`settle`]), and the slope per pod past 100, the API writes per job by verb and
//! resource (Lease calls apart), the watches and streams opened while the jobs ran, and the
//! manager's CPU time (utime + stime) per job.
//!
//!     cargo build --release -p podrunner
//!     cargo run --release -p podrunner-bench -- scale target/release/podrunner [MAX_PODS]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::probe::{self, cpu_seconds, memory_kib, threads};

use podrunner_testkit::kubernetes::SimulatedContainers;
use podrunner_testkit::{GitlabStandIn, Image, JobSpec, KubernetesStandIn};

const TOKEN: &str = "glrt-bench-scale";
const NS: &str = "gitlab-runner";
const INIT_IMAGE: &str = "podrunner:bench";

/// What the agent leaves as the build container's termination message after a job whose
/// final state GitLab accepted (`podrunner_agent::TerminationReport`, as JSON).
const AGENT_REPORT: &str = r#"{"final_update_delivered":true,"state":"success","failure_reason":null,"exit_code":null,"trace_bytes_sent":512,"aborted":false}"#;

/// `create pods`, `patch secrets`, `update leases`…: the verb and resource of a write, from
/// its method and path (`/api/v1/namespaces/<ns>/<resource>[/<name>[/<sub>]]`, or a group's
/// `/apis/<group>/<version>/namespaces/…`).
fn verb_and_resource(method: &str, uri: &str) -> String {
    let path = uri.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let after = parts
        .iter()
        .position(|p| *p == "namespaces")
        .map(|i| &parts[i + 2..])
        .unwrap_or(&parts[parts.len().min(2)..]);
    let resource = match after {
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => (*resource).to_owned(),
        [] => path.to_owned(),
    };
    let verb = match method {
        "POST" => "create",
        "PATCH" => "patch",
        "PUT" => "update",
        "DELETE" => "delete",
        other => other,
    };
    format!("{verb} {resource}")
}

/// Runs the benchmark against `program` with steps of running pods up to `max_pods`.
pub async fn scale(program: &Path, max_pods: usize) {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab.set_long_poll(Duration::from_secs(5));
    let kube = KubernetesStandIn::start(0, 0.0).await;
    kube.add_fargate_profile("gitlab-jobs", NS, &[("use-fargate", "true")]);
    kube.map_image(
        INIT_IMAGE,
        Image::Files(vec![(program.to_owned(), "/podrunner".into())]),
    );
    kube.map_image("alpine:3.20", Image::HostRoot);
    kube.simulate_containers(SimulatedContainers::new(
        Duration::from_secs(3600),
        [("build".to_owned(), AGENT_REPORT.to_owned())].into(),
    ));
    let dir = std::env::temp_dir().join(format!("podrunner-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let kubeconfig = kube.write_kubeconfig(&dir);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!("concurrent = {max_pods}\ncheck_interval = 1\n[[runners]]\n  url = \"{}\"\n  token = \"{TOKEN}\"\n  executor = \"kubernetes\"\n  request_concurrency = 4\n  [runners.kubernetes]\n    namespace = \"{NS}\"\n    image = \"alpine:3.20\"\n    [runners.kubernetes.pod_labels]\n      use-fargate = \"true\"\n", gitlab.url()),
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle_rss, _) = memory_kib(pid);
    let cpu_before = cpu_seconds(pid);
    let requests_before = kube.requests().len();

    let mut steps: Vec<usize> = [100, 250, 500, 1000]
        .into_iter()
        .filter(|s| *s < max_pods)
        .collect();
    steps.push(max_pods);
    let mut enqueued = 0;
    let mut samples = Vec::new();
    for step in &steps {
        while enqueued < *step {
            gitlab.enqueue(
                JobSpec::new(&format!("scale-{enqueued}"), &["true"]).variable(
                    "GIT_STRATEGY",
                    "none",
                    false,
                ),
            );
            enqueued += 1;
        }
        let took = probe::load(&kube, pid, *step, Duration::ZERO, Duration::from_secs(600))
            .await
            .seconds;
        // Running pods are not yet a settled manager: it still writes what their starts left
        // (the API calls queued behind the rate limit and the bound of calls under way, the
        // log's first lines). The sample is of the steady state, once it has nothing left.
        let settled = settle(pid).await;
        let (rss, hwm) = memory_kib(pid);
        samples.push(serde_json::json!({
            "running_pods": probe::running(&kube),
            "seconds_to_run": took,
            "seconds_to_settle": settled,
            "vm_rss_kib": rss,
            "vm_hwm_kib": hwm,
            "threads": threads(pid),
            "cpu_seconds": cpu_seconds(pid) - cpu_before,
        }));
        eprintln!("scale: {}", samples.last().expect("just pushed"));
    }

    // The builds end; the manager deletes every pod (and its Secrets go with it).
    let ending = Instant::now();
    kube.end_simulated_containers();
    while ending.elapsed() < Duration::from_secs(600)
        && !(kube.objects("Pod").is_empty() && kube.objects("Secret").is_empty())
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ended_after = ending.elapsed().as_secs_f64();
    let left = kube.objects("Pod").len() + kube.objects("Secret").len();
    let cpu = cpu_seconds(pid) - cpu_before;
    let (rss_end, hwm_end) = memory_kib(pid);

    let requests = kube.requests();
    let load = &requests[requests_before..];
    let mut writes: BTreeMap<String, usize> = BTreeMap::new();
    let mut lease_writes = 0;
    let mut watches: BTreeMap<String, usize> = BTreeMap::new();
    let mut streams = 0;
    for request in load {
        let path = request.uri.split('?').next().unwrap_or_default();
        if request.watch {
            *watches.entry(path.to_owned()).or_default() += 1;
        }
        if request.method == "GET" && (path.ends_with("/log") || path.ends_with("/exec")) {
            streams += 1;
        }
        if request.method != "GET" {
            let key = verb_and_resource(&request.method, &request.uri);
            if key.contains("leases") {
                lease_writes += 1;
            } else {
                *writes.entry(key).or_default() += 1;
            }
        }
    }
    let jobs = enqueued as f64;
    let job_writes: usize = writes.values().sum();

    let _ = tokio::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(60), manager.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);

    let rss_at = |pods: usize| {
        samples
            .iter()
            .find(|s| s["running_pods"].as_u64() == Some(pods as u64))
            .and_then(|s| s["vm_rss_kib"].as_u64())
    };
    let first = steps[0];
    let slope = match (rss_at(first), rss_at(max_pods)) {
        (Some(low), Some(high)) if max_pods > first => {
            Some((high as f64 - low as f64) / (max_pods - first) as f64)
        }
        _ => None,
    };
    let report = serde_json::json!({
        "jobs": enqueued,
        "manager_rss_idle_kib": idle_rss,
        "steps": samples,
        "manager_rss_kib_per_pod_past_first_step": slope,
        "manager_rss_after_all_ended_kib": rss_end,
        "manager_hwm_kib": hwm_end,
        "api_writes_per_job": job_writes as f64 / jobs,
        "api_writes_by_verb_and_resource": writes,
        "lease_writes": lease_writes,
        "watches_opened_during_load": watches,
        "log_or_exec_streams_opened": streams,
        "manager_cpu_ms_per_job": cpu * 1000.0 / jobs,
        "seconds_until_all_deleted": ended_after,
        "pods_and_secrets_left": left,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}

/// Waits until the manager at `pid` has settled: at least 3 s, then until it used under 2%
/// of a core over a second (its Lease renewals and the watches' keep-alives are all that is
/// left then), at most 120 s. How long that took, in seconds.
async fn settle(pid: u32) -> f64 {
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    while start.elapsed() < Duration::from_secs(120) {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu_seconds(pid) - before < 0.02 {
            break;
        }
    }
    start.elapsed().as_secs_f64()
}
