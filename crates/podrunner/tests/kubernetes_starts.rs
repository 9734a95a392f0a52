//! `podrunner run` with three times as many jobs arriving at once as the executor starts at
//! once: no more than that many jobs are between the create of their pod and the create of
//! its spec Secret at any point of the API server's request log, and every pod runs and is
//! deleted. The kubelet simulates the build containers (the bench's mode), so no process runs.
//!
//! Mutation checked: with the bound raised a thousandfold, 32 jobs were between the two at
//! once.

use std::time::Duration;

use podrunner_testkit::kubernetes::SimulatedContainers;
use podrunner_testkit::{GitlabStandIn, Image, JobSpec, KubernetesStandIn};

const TOKEN: &str = "glrt-kubernetes-starts-e2e-token";
const INIT_IMAGE: &str = "registry.example.com/podrunner:e2e";
const NS: &str = "gitlab-runner";
const STARTS: usize = podrunner_kube::executor::STARTS_UNDER_WAY;
const JOBS: usize = 3 * STARTS;
/// What the agent leaves as the build container's termination message after a job whose
/// final state GitLab accepted (`podrunner_agent::TerminationReport`, as JSON).
const AGENT_REPORT: &str = r#"{"final_update_delivered":true,"state":"success","failure_reason":null,"exit_code":null,"trace_bytes_sent":512,"aborted":false}"#;

fn running(kube: &KubernetesStandIn) -> usize {
    kube.objects("Pod")
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_more_than_the_bound_of_jobs_are_starting_at_once() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let kube = KubernetesStandIn::start(0, 0.0).await;
    kube.add_fargate_profile("gitlab-jobs", NS, &[("use-fargate", "true")]);
    // Each call takes a round trip, as to a real API server: the jobs' starts overlap.
    kube.set_answer_delay(Duration::from_millis(100));
    kube.map_image(INIT_IMAGE, Image::HostRoot);
    kube.map_image("alpine:3.20", Image::HostRoot);
    kube.simulate_containers(SimulatedContainers::new(
        Duration::from_secs(3600),
        [("build".to_owned(), AGENT_REPORT.to_owned())].into(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "concurrent = {JOBS}\ncheck_interval = 1\n[[runners]]\n  url = \"{}\"\n  token = \"{TOKEN}\"\n  executor = \"kubernetes\"\n  request_concurrency = 4\n  [runners.kubernetes]\n    namespace = \"{NS}\"\n    image = \"alpine:3.20\"\n    [runners.kubernetes.pod_labels]\n      use-fargate = \"true\"\n",
            gitlab.url()
        ),
    )
    .unwrap();
    for i in 0..JOBS {
        gitlab.enqueue(JobSpec::new(&format!("start-{i}"), &["true"]).variable(
            "GIT_STRATEGY",
            "none",
            false,
        ));
    }
    let mut manager = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env("KUBECONFIG", &kubeconfig)
        .env("PODRUNNER_INIT_IMAGE", INIT_IMAGE)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while running(&kube) < JOBS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {JOBS} pods ran",
            running(&kube)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Pods made whose spec Secret is not made yet, along the request log (the jobs bring no
    // registry credentials: every Secret created is a spec Secret).
    let (mut starting, mut most, mut pods) = (0usize, 0usize, 0usize);
    for request in kube.requests() {
        let path = request.uri.split('?').next().unwrap_or_default();
        if request.method != "POST" {
            continue;
        }
        if path.ends_with("/pods") {
            pods += 1;
            starting += 1;
            most = most.max(starting);
        } else if path.ends_with("/secrets") {
            starting = starting.saturating_sub(1);
        }
    }
    assert_eq!(pods, JOBS, "one pod per job");
    assert!(
        most <= STARTS,
        "{most} jobs were starting at once, more than {STARTS}"
    );

    kube.end_simulated_containers();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !(kube.objects("Pod").is_empty() && kube.objects("Secret").is_empty()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {} pods, {} Secrets",
            kube.objects("Pod").len(),
            kube.objects("Secret").len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(pid) = manager
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), manager.wait()).await;
}
