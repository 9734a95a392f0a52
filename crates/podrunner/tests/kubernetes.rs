//! `podrunner run` with the Kubernetes executor, end to end: the testkit GitLab, the testkit
//! Kubernetes API server (Fargate scheduler, bubblewrap kubelet), the static podrunner as the
//! init image and the agent inside job pods. `scripts/test` builds the static binary and sets
//! `PODRUNNER_STATIC_BINARY`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use podrunner_testkit::{
    Endpoint, Fault, GitlabStandIn, Image, JobSpec, JobView, KubernetesStandIn,
};
use serde_json::Value;

const TOKEN: &str = "glrt-kubernetes-e2e-token";
const INIT_IMAGE: &str = "registry.example.com/podrunner:e2e";

fn static_binary() -> PathBuf {
    let path = std::env::var_os("PODRUNNER_STATIC_BINARY")
        .map(PathBuf::from)
        .expect(
            "PODRUNNER_STATIC_BINARY is not set: scripts/test builds the static binary and sets it",
        );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Harness {
    gitlab: GitlabStandIn,
    kube: KubernetesStandIn,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    args: Vec<String>,
    child: tokio::process::Child,
}

fn spawn_manager(
    args: &[String],
    gitlab: &GitlabStandIn,
    kubeconfig: &Path,
) -> tokio::process::Child {
    // The manager's log, kept next to the kubeconfig for the tests to read.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(kubeconfig.with_file_name("manager.log"))
        .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .stderr(log)
        .arg("run")
        .args(args)
        .args(["--url", gitlab.url(), "--token", TOKEN])
        .env("KUBECONFIG", kubeconfig)
        .env("PODRUNNER_INIT_IMAGE", INIT_IMAGE)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("CONFIG_FILE")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

impl Harness {
    /// Starts both stand-ins and `podrunner run` with `config` (a path and its flag).
    async fn start(config: impl FnOnce(&Path) -> Vec<String>) -> Harness {
        let gitlab = GitlabStandIn::start().await;
        gitlab.add_runner_token(TOKEN);
        gitlab.set_long_poll(Duration::from_secs(5));
        let kube = KubernetesStandIn::start(2, 4.0).await;
        kube.add_fargate_profile("gitlab-jobs", "gitlab-runner", &[("use-fargate", "true")]);
        kube.map_image(
            INIT_IMAGE,
            Image::Files(vec![(static_binary(), "/podrunner".into())]),
        );
        kube.map_image("alpine:3.20", Image::HostRoot);
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = kube.write_kubeconfig(dir.path());
        let args = config(dir.path());
        let child = spawn_manager(&args, &gitlab, &kubeconfig);
        Harness {
            gitlab,
            kube,
            _dir: dir,
            kubeconfig,
            args,
            child,
        }
    }

    async fn seed() -> Harness {
        // A copy, unchanged: the manager keeps its system ID next to its configuration.
        Harness::start(|dir| {
            let values = dir.join("seed-values.yaml");
            std::fs::copy(repo_root().join("examples/seed-values.yaml"), &values).unwrap();
            vec!["--values".into(), values.display().to_string()]
        })
        .await
    }

    async fn with_config(kubernetes: impl Into<String>) -> Harness {
        Harness::with_concurrent(4, kubernetes).await
    }

    /// A config.toml runner with `concurrent` and `kubernetes` (lines of
    /// `[runners.kubernetes]`, after namespace and a 5 s poll_timeout unless they give one).
    async fn with_concurrent(concurrent: u32, kubernetes: impl Into<String>) -> Harness {
        let kubernetes = kubernetes.into();
        let poll_timeout = if kubernetes.contains("poll_timeout") {
            ""
        } else {
            "    poll_timeout = 5\n"
        };
        Harness::start(move |dir| {
            let path = dir.join("config.toml");
            std::fs::write(
                &path,
                format!(
                    "concurrent = {concurrent}\ncheck_interval = 1\n[[runners]]\n  name = \"k8s\"\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n    namespace = \"gitlab-runner\"\n{poll_timeout}{kubernetes}\n"
                ),
            )
            .unwrap();
            vec!["-c".into(), path.display().to_string()]
        })
        .await
    }

    async fn finished(&self, id: i64) -> JobView {
        self.gitlab
            .wait_for_job(id, Duration::from_secs(90), |j| {
                matches!(j.status.as_str(), "success" | "failed")
            })
            .await
    }

    /// Waits until no pod and no Secret is left.
    async fn clean(&self) {
        for _ in 0..200 {
            if self.kube.objects("Pod").is_empty() && self.kube.objects("Secret").is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "left behind: pods {:#?} secrets {:#?}",
            self.kube.objects("Pod"),
            self.kube.objects("Secret")
        );
    }

    /// Kills the manager with SIGKILL and starts it again with the same configuration.
    async fn kill_and_restart(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        self.child = spawn_manager(&self.args, &self.gitlab, &self.kubeconfig);
    }

    /// The name of the first job pod.
    fn first_pod(&self) -> String {
        self.kube.objects("Pod")[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// What the manager logged so far.
    fn manager_log(&self) -> String {
        std::fs::read_to_string(self.kubeconfig.with_file_name("manager.log")).unwrap_or_default()
    }

    /// Waits until the job's trace contains `text`.
    async fn trace_contains(&self, id: i64, text: &str) {
        self.gitlab
            .wait_for_job(id, Duration::from_secs(60), |j| {
                String::from_utf8_lossy(&j.trace).contains(text)
            })
            .await;
    }

    async fn stop(mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// A job that needs no sources.
fn job(name: &str, script: &[&str]) -> JobSpec {
    JobSpec::new(name, script).variable("GIT_STRATEGY", "none", false)
}

fn trace(view: &JobView) -> String {
    String::from_utf8_lossy(&view.trace).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_deployment_runs_a_job_on_its_own_fargate_node() {
    let h = Harness::seed().await;
    h.kube.set_fargate_boot(Duration::from_millis(500));
    let id = h.gitlab.enqueue(
        job(
            "build",
            &[
                "echo \"hello from pod $HOSTNAME as pid $$\"",
                "echo \"secret is $DEPLOY_KEY\"",
                "sleep 1",
            ],
        )
        .variable("DEPLOY_KEY", "very-secret-deploy-key", true),
    );
    // The pod as the API server stored it is a valid Pod and holds no secret.
    let pod = loop {
        if let Some(pod) = h.kube.objects("Pod").into_iter().next() {
            break pod;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let stored = serde_json::to_string_pretty(&pod).unwrap();
    assert!(!stored.contains("very-secret-deploy-key"), "{stored}");
    let file = h._dir.path().join("stored-pod.yaml");
    std::fs::write(&file, &stored).unwrap();
    let program =
        std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    let output = std::process::Command::new(&program)
        .arg("--strict")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{}{}\n{stored}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(text.contains("hello from pod podrunner-job-"), "{text}");
    assert!(text.contains("secret is [MASKED]"), "{text}");
    h.clean().await;

    // It ran on a Fargate node of its own, sized from the seed's requests.
    let events = h.kube.objects("Event");
    let scheduled: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "Scheduled")
        .collect();
    assert_eq!(scheduled.len(), 1, "{events:#?}");
    assert_eq!(scheduled[0]["source"]["component"], "fargate-scheduler");
    assert!(
        scheduled[0]["message"]
            .as_str()
            .unwrap()
            .contains("to fargate-ip-"),
        "{:#}",
        scheduled[0]
    );

    // While the pod started, the manager wrote the log: what the pod waited for, then the
    // Fargate size it got; the agent continued it (the stand-in checked the checksum).
    let order = [
        "Running with podrunner",
        "Preparing environment",
        "Waiting for pod gitlab-runner/podrunner-job-1000 to be running on the node fargate-ip-",
        "Fargate: provisioned 2vCPU 9GB, $0.",
        // The seed's 8Gi request plus Fargate's 256 MiB pays for 9 GB.
        "a memory request of 7936Mi or less keeps it at 2vCPU 8GB",
        "Running on podrunner-job-1000...",
        "hello from pod podrunner-job-",
        "Fargate: 2vCPU 9GB at $0.120965/h, ",
        "Job succeeded",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|s| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s:?} is not in:\n{text}"))
        })
        .collect();
    assert!(positions.is_sorted(), "{positions:?} in:\n{text}");
    assert_eq!(text.matches("Running with podrunner").count(), 1, "{text}");

    // Per job: create the Pod, create its spec Secret already owned by it, the prelude
    // annotation follows what the log says (here: unscheduled, on its node, the kubelet's
    // first conditions, then initialized), delete the Pod. One shared watch, no per-job
    // reads, no exec, no logs. (The manager's Lease is its own, made at start and renewed,
    // not the job's.)
    let requests = h.kube.requests();
    let writes: Vec<String> = requests
        .iter()
        .filter(|r| r.method != "GET" && !r.uri.starts_with("/apis/coordination.k8s.io/"))
        .map(|r| {
            format!(
                "{} {}",
                r.method,
                r.uri.split('?').next().unwrap_or_default()
            )
        })
        .collect();
    let pod = "/api/v1/namespaces/gitlab-runner/pods/podrunner-job-1000";
    // The watch may or may not show each state before the next: one prelude patch per state
    // it saw (unscheduled, on its node, the kubelet's first conditions, initialized).
    let patches = writes.len().saturating_sub(3);
    assert!((1..=4).contains(&patches), "{writes:#?}");
    let mut expected = vec![
        "POST /api/v1/namespaces/gitlab-runner/pods".to_owned(),
        "POST /api/v1/namespaces/gitlab-runner/secrets".to_owned(),
    ];
    expected.extend((0..patches).map(|_| format!("PATCH {pod}")));
    expected.push(format!("DELETE {pod}"));
    assert_eq!(writes, expected);
    let per_pod_reads = requests
        .iter()
        .filter(|r| r.method == "GET" && (r.uri.contains("/pods/") || r.uri.contains("/secrets/")))
        .count();
    assert_eq!(per_pod_reads, 0, "{requests:#?}");
    let watches = requests.iter().filter(|r| r.watch).count();
    assert!(watches >= 1, "{requests:#?}");
    // The manager logged what the job's Fargate pod cost, and never a secret.
    let log = h.manager_log();
    assert!(
        log.contains(&format!("Fargate cost job={id} capacity=\"2vCPU 9GB\""))
            && log.contains("usd_per_hour=0.120965"),
        "{log}"
    );
    // ... and it is the cost the job's log says: decided once, by the agent, from the price
    // the manager handed it (a manager pricing the pod again would count its own lifetime).
    let after = |text: &str, marker: &str| -> f64 {
        let start = text
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} is not in:\n{text}"))
            + marker.len();
        let value: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        value
            .parse()
            .unwrap_or_else(|e| panic!("{marker}{value}: {e}"))
    };
    let metric_line = &log[log.find(&format!("Fargate cost job={id} ")).unwrap()..];
    let metric_line = metric_line.lines().next().unwrap();
    assert_eq!(
        format!("{:.6}", after(metric_line, " usd=")),
        format!("{:.6}", after(&text, "about $")),
        "the log says one cost, the metric another:\n{metric_line}\n{text}"
    );
    assert_eq!(
        after(metric_line, " seconds="),
        after(
            &text[text.find("Fargate: 2vCPU 9GB at $").unwrap()..],
            "/h, "
        ),
        "{metric_line}\n{text}"
    );
    assert!(
        log.contains(&format!("Pod running job={id} namespace=gitlab-runner "))
            && log.contains(" compute=fargate start_s="),
        "the pod's start latency is reported, on Fargate: {log}"
    );
    let job_token = h.gitlab.job_token(id).unwrap();
    assert!(
        !log.contains(&job_token)
            && !log.contains("very-secret-deploy-key")
            && !log.contains(TOKEN),
        "{log}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_script_and_image_pull_failure() {
    let h = Harness::seed().await;
    let failing = h
        .gitlab
        .enqueue(job("fails", &["echo about to fail", "exit 7"]));
    let missing = h
        .gitlab
        .enqueue(job("missing-image", &["true"]).payload_field(
            "image",
            serde_json::json!({"name": "registry.example.com/nope:1"}),
        ));
    let view = h.finished(failing).await;
    let text = trace(&view);
    assert_eq!(view.status, "failed", "{text}");
    assert!(text.contains("about to fail"), "{text}");
    assert!(text.contains("exit code 7"), "{text}");
    let view = h.finished(missing).await;
    let text = trace(&view);
    assert_eq!(view.status, "failed", "{text}");
    assert!(
        text.contains("cannot pull image \"registry.example.com/nope:1\""),
        "{text}"
    );
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_fargate_refuses_fails_fast_with_the_reason() {
    let h = Harness::with_config(
        "    privileged = true\n    [runners.kubernetes.pod_labels]\n      use-fargate = \"true\"\n",
    )
    .await;
    let id = h.gitlab.enqueue(job("dind", &["true"]));
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "failed", "{text}");
    assert!(
        text.contains("Pod not supported on Fargate: invalid SecurityContext fields: Privileged"),
        "{text}"
    );
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unschedulable_pod_fails_after_poll_timeout() {
    let h = Harness::with_config("    cpu_request = \"16\"\n").await;
    let id = h.gitlab.enqueue(job("huge", &["true"]));
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "failed", "{text}");
    assert!(
        text.contains("was not scheduled within poll_timeout (5s)")
            && text.contains("Insufficient cpu"),
        "{text}"
    );
    // While it waited, the log said why, as gitlab-runner does.
    let waiting = text
        .find("Waiting for pod gitlab-runner/podrunner-job-")
        .expect(&text);
    let condition = text.find("\tUnschedulable: \"").expect(&text);
    // The scheduler's Warning event, from the shared events watch.
    let event = text
        .find("WARNING: Event retrieved from the cluster: 0/2 nodes are available: 2 Insufficient cpu.")
        .expect(&text);
    let failure = text.find("was not scheduled within").expect(&text);
    assert!(
        waiting < condition && condition < failure && event < failure,
        "{text}"
    );
    h.clean().await;
    h.stop().await;

    // print_pod_warning_events = false keeps the waiting lines, without the conditions.
    let h =
        Harness::with_config("    cpu_request = \"16\"\n    print_pod_warning_events = false\n")
            .await;
    let id = h.gitlab.enqueue(job("huge", &["true"]));
    let text = trace(&h.finished(id).await);
    assert!(
        text.contains("Waiting for pod gitlab-runner/podrunner-job-"),
        "{text}"
    );
    assert!(!text.contains("\tUnschedulable"), "{text}");
    assert!(!text.contains("Event retrieved from the cluster"), "{text}");
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oom_killed_build_container_fails_the_job_with_the_reason() {
    let h = Harness::seed().await;
    let id = h
        .gitlab
        .enqueue(job("hungry", &["echo started", "sleep 60"]));
    // Wait until the script runs, then let the kernel kill it.
    h.trace_contains(id, "started").await;
    let pod = h.first_pod();
    assert!(h.kube.inject(
        "gitlab-runner",
        &pod,
        podrunner_testkit::Injection::OomKill {
            container: "build".into()
        }
    ));
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "failed", "{text}");
    assert!(text.contains("started"), "{text}");
    assert!(text.contains("OOMKilled"), "{text}");
    h.clean().await;
    h.stop().await;
}

/// gitlab-runner retries API calls that fail on the network or on a busy etcd; a create whose
/// answer was lost is not made twice (the retry's 409 means it went through).
#[tokio::test(flavor = "multi_thread")]
async fn api_calls_survive_lost_connections_and_etcd_timeouts() {
    use podrunner_testkit::ConnectionFault::{DropAfterHandling, EtcdTimeout};
    let h = Harness::seed().await;
    h.kube.fault("POST", "/secrets", DropAfterHandling);
    h.kube.fault("POST", "/pods", EtcdTimeout);
    h.kube.fault("POST", "/pods", DropAfterHandling);
    h.kube.fault("DELETE", "/pods/", EtcdTimeout);
    let id = h.gitlab.enqueue(job("flaky", &["echo made-it"]));
    let view = h.finished(id).await;
    let text = trace(&view);
    let log = h.manager_log();
    assert_eq!(view.status, "success", "{text}\n{log}");
    assert!(text.contains("made-it"), "{text}");
    // One pod, and it is gone at the end although the first delete failed.
    h.clean().await;
    let log = h.manager_log();
    let requests = h.kube.requests();
    let pods_created = requests
        .iter()
        .filter(|r| r.method == "POST" && r.uri.contains("/pods?"))
        .count();
    assert!(pods_created >= 2, "{requests:#?}");
    assert_eq!(
        log.matches("Kubernetes API call failed; retrying").count(),
        4,
        "one per fault:\n{log}"
    );
    assert!(log.contains("etcdserver: request timed out"), "{log}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_job_survives_the_manager_killed_with_sigkill_and_restarted() {
    let mut h = Harness::seed().await;
    let id = h.gitlab.enqueue(job(
        "long",
        &["echo first half", "sleep 3", "echo second half"],
    ));
    h.trace_contains(id, "first half").await;
    h.kill_and_restart().await;
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(
        text.contains("first half") && text.contains("second half"),
        "{text}"
    );
    // The restarted manager adopted the pod and removed it.
    h.clean().await;
    h.stop().await;
}

/// An adopted job holds its place in `concurrent` like a new one: with `concurrent = 1` the
/// restarted manager takes no new job until the adopted one ended.
#[tokio::test(flavor = "multi_thread")]
async fn adopted_jobs_count_toward_concurrent() {
    let mut h = Harness::with_concurrent(1, "").await;
    let first = h.gitlab.enqueue(job(
        "first",
        &["echo first half", "sleep 4", "echo second half"],
    ));
    h.trace_contains(first, "first half").await;
    h.kill_and_restart().await;
    let second = h.gitlab.enqueue(job("second", &["echo second job"]));
    let view = h.finished(second).await;
    assert_eq!(view.status, "success", "{}", trace(&view));
    assert_eq!(h.finished(first).await.status, "success");
    let requests: Vec<String> = h
        .kube
        .requests()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r.method,
                r.uri.split('?').next().unwrap_or_default()
            )
        })
        .collect();
    let position = |wanted: &str| {
        requests
            .iter()
            .position(|r| r == wanted)
            .unwrap_or_else(|| panic!("{wanted} is not in {requests:#?}"))
    };
    let first_deleted = position(&format!(
        "DELETE /api/v1/namespaces/gitlab-runner/pods/podrunner-job-{first}"
    ));
    let second_created = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.as_str() == "POST /api/v1/namespaces/gitlab-runner/pods")
        .map(|(i, _)| i)
        .nth(1)
        .expect("two pods created");
    assert!(first_deleted < second_created, "{requests:#?}");
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_deleted_mid_job_fails_the_job_and_says_so() {
    let h = Harness::seed().await;
    let id = h
        .gitlab
        .enqueue(job("doomed", &["echo the-script-runs", "sleep 60"]));
    h.trace_contains(id, "the-script-runs").await;
    let pod = h.first_pod();
    let status = reqwest::Client::new()
        .delete(format!(
            "{}/api/v1/namespaces/gitlab-runner/pods/{pod}",
            h.kube.url()
        ))
        .json(&serde_json::json!({"gracePeriodSeconds": 2}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "failed", "{text}");
    assert!(text.contains("the-script-runs"), "{text}");
    // Deleting the pod sent the agent SIGTERM: it says so and reports the failure itself.
    assert!(text.contains("Job failed: runner interrupted"), "{text}");
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_and_cancel_end_the_pod() {
    let h = Harness::seed().await;
    let slow = h
        .gitlab
        .enqueue(job("slow", &["echo waiting", "sleep 60"]).timeout(2));
    let cancelled = h
        .gitlab
        .enqueue(job("cancelled", &["echo cancel me", "sleep 60"]));
    h.trace_contains(cancelled, "cancel me").await;
    h.gitlab.set_status(cancelled, "canceling");
    let view = h
        .gitlab
        .wait_for_job(cancelled, Duration::from_secs(60), |j| {
            j.updates.iter().any(|u| u["state"] == "failed")
        })
        .await;
    assert!(
        trace(&view).contains("WARNING: script canceled externally (UI, API)"),
        "{}",
        trace(&view)
    );
    let view = h.finished(slow).await;
    assert_eq!(view.status, "failed", "{}", trace(&view));
    assert!(
        trace(&view).contains("execution took longer than"),
        "{}",
        trace(&view)
    );
    h.clean().await;
    h.stop().await;
}

const DECLARED_PROFILE: &str = "    [runners.kubernetes.pod_labels]\n      use-fargate = \"true\"\n    [runners.kubernetes.fargate]\n      [[runners.kubernetes.fargate.profiles]]\n        name = \"gitlab-jobs\"\n        [[runners.kubernetes.fargate.profiles.selectors]]\n          namespace = \"gitlab-runner\"\n          labels = { use-fargate = \"true\" }\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_profile_refuses_an_unsupported_pod_before_creating_anything() {
    let h = Harness::with_config(format!("    privileged = true\n{DECLARED_PROFILE}")).await;
    let id = h.gitlab.enqueue(job("dind", &["true"]));
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "failed", "{text}");
    assert!(
        text.contains(
            "Fargate profile gitlab-jobs takes this job's pod, but Fargate cannot run it"
        ) && text.contains("privileged")
            && text.contains("kaniko or buildah"),
        "{text}"
    );
    // The manager's own Lease (made at start) aside.
    let writes: Vec<String> = h
        .kube
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && !r.uri.starts_with("/apis/coordination.k8s.io/"))
        .map(|r| r.uri.clone())
        .collect();
    assert!(writes.is_empty(), "nothing is created: {writes:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trace_tells_the_fargate_size_and_price() {
    let h = Harness::with_config(format!(
        "    cpu_request = \"1\"\n    memory_request = \"1Gi\"\n{DECLARED_PROFILE}"
    ))
    .await;
    // A Fargate node takes a while to boot: the manager sees the pod placed before it runs.
    h.kube.set_fargate_boot(Duration::from_millis(1500));
    let id = h.gitlab.enqueue(job("sized", &["true"]));
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    // Predicted before the pod exists, provisioned once placed, the cost at the end.
    let order = [
        "Fargate: profile gitlab-jobs, pod sized 1vCPU 2GB (requests 1 vCPU, 1.00 GB), $0.049370/h",
        "Fargate: provisioned 1vCPU 2GB, $0.049370/h",
        "Fargate: 1vCPU 2GB at $0.049370/h, ",
        "Job succeeded",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|s| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s:?} is not in:\n{text}"))
        })
        .collect();
    assert!(positions.is_sorted(), "{positions:?} in:\n{text}");
    // The cost is logged before the pod is deleted.
    h.clean().await;
    assert!(
        h.manager_log().contains("capacity=\"1vCPU 2GB\""),
        "{}",
        h.manager_log()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_is_reachable_by_its_alias() {
    let h = Harness::seed().await;
    let id = h.gitlab.enqueue(
        job("with-service", &[
                "for i in $(seq 100); do exec 3<>/dev/tcp/web/18733 && break; sleep 0.1; done",
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3",
                "head -n 1 <&3",
            ])
        .payload_field(
            "services",
            serde_json::json!([{
                "name": "alpine:3.20", "alias": "web",
                // PID 1 of its container: it must handle SIGTERM itself to stop at once.
                "entrypoint": ["/bin/sh", "-c", "trap 'exit 0' TERM; python3 -m http.server 18733 --bind 127.0.0.1 & wait"],
                "command": [],
            }]),
        ),
    );
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(text.contains("HTTP/1.0 200 OK"), "{text}");
    // The service kept running after the build; deleting the pod stopped it.
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_manager_removes_its_stray_pods_and_secrets() {
    let mut h = Harness::with_config("").await;
    let id_file = h.kubeconfig.with_file_name(".runner_system_id");
    for _ in 0..100 {
        if id_file.is_file() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let system_id = std::fs::read_to_string(&id_file).unwrap().trim().to_owned();
    let base = format!("{}/api/v1/namespaces/gitlab-runner", h.kube.url());
    let labels = serde_json::json!({"podrunner.io/manager": system_id});
    let http = reqwest::Client::new();
    // A Secret whose pod was never created, and a pod whose job cannot be known.
    for (resource, body) in [
        (
            "secrets",
            serde_json::json!({"metadata": {"name": "podrunner-job-4242-spec", "labels": labels},
                               "data": {"job.json": "e30="}}),
        ),
        (
            "pods",
            serde_json::json!({"metadata": {"name": "podrunner-job-4243", "labels": labels},
                               "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                                        "containers": [{"name": "build", "image": "alpine:3.20",
                                                        "command": ["/bin/sleep", "60"]}]}}),
        ),
    ] {
        let status = http
            .post(format!("{base}/{resource}"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 201);
    }
    h.kill_and_restart().await;
    h.clean().await;
    h.stop().await;
}

/// `DOCKER_AUTH_CONFIG` of the job and of the runner's `environment` fill the job pod's pull
/// Secret in gitlab-runner's order (the job's variable first), which the pod names in
/// `imagePullSecrets`; no credential is in the pod spec.
#[tokio::test(flavor = "multi_thread")]
async fn docker_auth_config_fills_the_pull_secret() {
    let h = Harness::start(|dir| {
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            "concurrent = 2\ncheck_interval = 1\n[[runners]]\n  name = \"k8s\"\n  executor = \"kubernetes\"\n  environment = ['DOCKER_AUTH_CONFIG={\"auths\": {\"quay.io\": {\"auth\": \"cnVubmVyOmVudg==\"}}}']\n  [runners.kubernetes]\n    namespace = \"gitlab-runner\"\n    poll_timeout = 5\n",
        )
        .unwrap();
        vec!["-c".into(), path.display().to_string()]
    })
    .await;
    let id = h
        .gitlab
        .enqueue(job("pull-secret", &["sleep 2", "echo pulled"]).variable(
            "DOCKER_AUTH_CONFIG",
            r#"{"auths": {"https://Registry.Example.com/v1/": {"auth": "am9iOnZhcg=="}}}"#,
            true,
        ));
    let mut secret = None;
    for _ in 0..300 {
        secret = h.kube.objects("Secret").into_iter().find(|s| {
            s["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-registry"))
        });
        if secret.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secret = secret.expect("the pull Secret");
    use base64::Engine as _;
    let config: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(secret["data"][".dockerconfigjson"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["auths"]["registry.example.com"]["auth"],
        "am9iOnZhcg=="
    );
    assert!(
        config["auths"]["quay.io"].is_null(),
        "the job's DOCKER_AUTH_CONFIG hides the runner's, as in gitlab-runner: {config}"
    );
    // The pull Secret is made before the pod: wait for the pod too.
    let mut pods = h.kube.objects("Pod");
    for _ in 0..500 {
        if !pods.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        pods = h.kube.objects("Pod");
    }
    let pod = pods.remove(0);
    assert_eq!(
        pod["spec"]["imagePullSecrets"][0]["name"],
        secret["metadata"]["name"]
    );
    assert!(!pod.to_string().contains("am9iOnZhcg=="));
    let view = h.finished(id).await;
    assert_eq!(view.status, "success", "{}", trace(&view));
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expanded_image_and_a_bitnami_style_service_that_reads_a_job_variable() {
    // The allow-list sees the expanded image; the stand-in validates the pod as the API
    // server does, so a derived `bitnami__redis` container name or host alias would be a 422.
    let h = Harness::with_config("    allowed_images = [\"registry.example.com/acme/*\"]").await;
    h.kube
        .map_image("registry.example.com/acme/app/builder:1", Image::HostRoot);
    h.kube.map_image("bitnami/redis:7.2", Image::HostRoot);
    let id = h.gitlab.enqueue(
        job("bitnami-service", &[
                "for i in $(seq 100); do exec 3<>/dev/tcp/bitnami-redis/18734 && break; sleep 0.1; done",
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3",
                "head -n 1 <&3",
            ])
        .variable("CI_REGISTRY_IMAGE", "registry.example.com/acme/app", false)
        .variable("REDIS_PASSWORD", "fake-redis-password", false)
        .payload_field("image", serde_json::json!({"name": "$CI_REGISTRY_IMAGE/builder:1"}))
        .payload_field(
            "services",
            serde_json::json!([{
                "name": "bitnami/redis:7.2",
                "entrypoint": ["/bin/sh", "-c", "echo \"service sees REDIS_PASSWORD=$REDIS_PASSWORD\"; trap 'exit 0' TERM; python3 -m http.server 18734 --bind 127.0.0.1 & wait"],
                "command": [],
            }]),
        ),
    );
    let pod_name = format!("podrunner-job-{id}");
    // The pod as the API server stored it, and the service's output, while the job runs.
    let mut stored = None;
    let mut service_log = String::new();
    for _ in 0..600 {
        if stored.is_none() {
            stored = h.kube.object("Pod", "gitlab-runner", &pod_name);
        }
        if stored.is_some() {
            service_log = h.kube.logs("gitlab-runner", &pod_name, "svc-0");
            if service_log.contains("service sees") {
                break;
            }
        }
        if stored.is_none()
            && h.gitlab
                .job(id)
                .is_some_and(|j| matches!(j.status.as_str(), "success" | "failed"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pod = stored.unwrap_or_else(|| {
        panic!(
            "the job pod was never created: {:?}",
            h.gitlab.job(id).map(|j| trace(&j))
        )
    });
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(
        containers[0]["image"], "registry.example.com/acme/app/builder:1",
        "{pod:#}"
    );
    assert_eq!(containers[1]["name"], "svc-0");
    assert!(
        containers[1]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "REDIS_PASSWORD" && e["value"] == "fake-redis-password"),
        "{pod:#}"
    );
    assert_eq!(
        pod["spec"]["hostAliases"][0]["hostnames"],
        serde_json::json!(["bitnami-redis"])
    );
    assert!(
        service_log.contains("service sees REDIS_PASSWORD=fake-redis-password"),
        "{service_log}"
    );
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(text.contains("HTTP/1.0 200 OK"), "{text}");
    h.clean().await;
    h.stop().await;
}

// --- the log's hand-over from the manager to the agent (docs/architecture.md) ----------

/// The only job pod's name, once it exists.
async fn job_pod(h: &Harness) -> String {
    for _ in 0..600 {
        if let Some(pod) = h.kube.objects("Pod").first() {
            return pod["metadata"]["name"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no job pod");
}

/// The decoded trace prelude annotation of a snapshot.
fn snapshot_prelude(snapshot: &podrunner_testkit::Snapshot) -> String {
    let text = snapshot.annotations["podrunner.io/trace-prelude"]
        .as_str()
        .unwrap_or_default();
    // Standard base64, padded.
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut bytes = Vec::new();
    for chunk in text.trim_end_matches('=').as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | u32::from(value(*c)) << (18 - 6 * i));
        bytes.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    String::from_utf8(bytes).unwrap()
}

/// The log is one writer's: the header once, no line twice before the agent's output, the
/// final update's checksum GitLab's own.
fn assert_one_writer(view: &JobView) {
    let text = trace(view);
    assert_eq!(view.status, "success", "{text}");
    assert_eq!(text.matches("Running with podrunner").count(), 1, "{text}");
    let prelude_end = text.find("$ echo handed over").expect("the script ran");
    let mut seen = std::collections::HashSet::new();
    for line in text[..prelude_end].lines() {
        // Lines differ at least by their timestamps.
        assert!(seen.insert(line), "{line:?} twice in:\n{text}");
    }
    let update = view.updates.last().unwrap();
    assert_eq!(
        update["output"]["checksum"].as_str(),
        Some(format!("crc32:{:08x}", crc32fast_hash(&view.trace)).as_str()),
        "the final checksum is GitLab's:\n{text}"
    );
    assert_eq!(
        update["output"]["bytesize"].as_u64(),
        Some(view.trace.len() as u64)
    );
}

/// CRC-32 (IEEE), as GitLab's `Gitlab::Ci::Trace::Checksum` computes it.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A Warning event of `pod`, as any controller may post one.
async fn warn_pod(h: &Harness, pod: &str, message: &str) {
    let event = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{pod}.late"), "namespace": "gitlab-runner"},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": "gitlab-runner", "name": pod},
        "type": "Warning", "reason": "Late", "message": message,
        "source": {"component": "e2e"},
    });
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/gitlab-runner/events",
            h.kube.url()
        ))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manager_line_sent_after_the_kubelets_snapshot_reaches_gitlab_once() {
    let h = Harness::with_config("").await;
    // The kubelet resolves the build container's environment, then starts it 2 s later: the
    // manager writes a line in between, which the agent's environment lacks.
    h.kube.set_container_start_delay(Duration::from_secs(2));
    h.kube.set_downward_api_refresh(Duration::from_millis(300));
    let id = h.gitlab.enqueue(job("late", &["echo handed over"]));
    let pod = job_pod(&h).await;
    let snapshot = loop {
        if let Some(s) = h
            .kube
            .snapshots()
            .into_iter()
            .find(|s| s.container == "build")
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    warn_pod(&h, &pod, "a line after the snapshot").await;
    h.trace_contains(id, "a line after the snapshot").await;
    let view = h.finished(id).await;
    let text = trace(&view);
    assert!(
        !snapshot_prelude(&snapshot).contains("a line after the snapshot"),
        "the race happened: the agent's environment lacks the line"
    );
    assert_eq!(
        text.matches("a line after the snapshot").count(),
        1,
        "{text}"
    );
    assert!(
        text.find("a line after the snapshot") < text.find("$ echo handed over"),
        "{text}"
    );
    assert_one_writer(&view);
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_answers_to_the_manager_and_the_agent_double_nothing() {
    let h = Harness::with_config("").await;
    h.kube.set_container_start_delay(Duration::from_secs(1));
    // The manager's opening lands and its answer is lost: its retry gets a 416 and it stops
    // writing; the agent sends what GitLab lacks.
    h.gitlab
        .fault(Endpoint::PatchTrace, Fault::ApplyThenStatus(502));
    let id = h.gitlab.enqueue(job("lost", &["echo handed over"]));
    job_pod(&h).await;
    while !h.kube.snapshots().iter().any(|s| s.container == "build") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Whoever patches next (the agent's claim, by now) has its answer lost too.
    h.gitlab
        .fault(Endpoint::PatchTrace, Fault::ApplyThenStatus(500));
    let view = h.finished(id).await;
    assert_one_writer(&view);
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_canceled_while_its_pod_waits_for_fargate_ends_at_once() {
    for status in ["canceled", "canceling"] {
        let h = Harness::with_config(DECLARED_PROFILE).await;
        // A Fargate node that takes long to boot: the agent never starts.
        h.kube.set_fargate_boot(Duration::from_secs(120));
        let id = h.gitlab.enqueue(job("waits", &["echo never"]));
        let pod = job_pod(&h).await;
        h.trace_contains(id, "Waiting for pod").await;
        // A full heartbeat interval later, so the cancel lands between two of them.
        tokio::time::sleep(Duration::from_secs(3)).await;
        h.gitlab.set_status(id, status);
        let asked = std::time::Instant::now();
        loop {
            let deleting = h
                .kube
                .object("Pod", "gitlab-runner", &pod)
                .is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null());
            if deleting {
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(60),
                "the pod is still there"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "{status}: pod deleted {:.2} s after the cancel, while it waited for Fargate",
            asked.elapsed().as_secs_f64()
        );
        let view = h.gitlab.job(id).unwrap();
        assert!(!trace(&view).contains("never"), "{}", trace(&view));
        if status == "canceling" {
            // GitLab waits for the final state: failed, job_canceled (as the payload's
            // failure_reasons allow: the stand-in's lists no job_canceled).
            let view = h
                .gitlab
                .wait_for_job(id, Duration::from_secs(10), |j| {
                    j.updates.iter().any(|u| u["state"] == "failed")
                })
                .await;
            let last = view.updates.last().unwrap();
            assert!(last["failure_reason"].is_string(), "{last}");
        }
        h.clean().await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manager_restarted_while_the_pod_waits_writes_and_listens_again() {
    for then in ["run", "cancel"] {
        // poll_timeout covers the wait until the pod runs: longer than the node's boot.
        let mut h =
            Harness::with_config(format!("    poll_timeout = 180\n{DECLARED_PROFILE}")).await;
        // For the cancel, a node that boots long after it: only the manager can end the job.
        let boot = if then == "run" { 8 } else { 120 };
        h.kube.set_fargate_boot(Duration::from_secs(boot));
        let id = h.gitlab.enqueue(job("adopted", &["echo handed over"]));
        let pod = job_pod(&h).await;
        h.trace_contains(id, "Waiting for pod").await;
        h.kill_and_restart().await;
        if then == "run" {
            // The new manager rebuilt the log from the annotation: one writer all the same.
            let view = h.finished(id).await;
            assert_one_writer(&view);
        } else {
            // It listens to GitLab again while the pod waits.
            tokio::time::sleep(Duration::from_secs(2)).await;
            h.gitlab.set_status(id, "canceled");
            let asked = std::time::Instant::now();
            while h
                .kube
                .object("Pod", "gitlab-runner", &pod)
                .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_null())
            {
                assert!(
                    asked.elapsed() < Duration::from_secs(30),
                    "the pod is still there"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!(
                "after a restart: pod deleted {:.2} s after the cancel",
                asked.elapsed().as_secs_f64()
            );
        }
        h.clean().await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manager_patch_still_in_flight_when_the_agent_claims_lands_once_or_not_at_all() {
    let h = Harness::with_config("").await;
    h.kube.set_container_start_delay(Duration::from_secs(2));
    h.kube.set_downward_api_refresh(Duration::from_millis(300));
    let id = h.gitlab.enqueue(job("in flight", &["echo handed over"]));
    let pod = job_pod(&h).await;
    while !h.kube.snapshots().iter().any(|s| s.container == "build") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The manager's next patch reaches GitLab only 5 s later, about when the agent (started 2 s
    // after the snapshot, first patch one update interval after that) claims the log.
    h.gitlab
        .fault(Endpoint::PatchTrace, Fault::Delay(Duration::from_secs(5)));
    warn_pod(&h, &pod, "a line in flight").await;
    let view = h.finished(id).await;
    let text = trace(&view);
    let count = text.matches("a line in flight").count();
    assert!(count <= 1, "{text}");
    if count == 1 {
        assert!(
            text.find("a line in flight") < text.find("$ echo handed over"),
            "{text}"
        );
    }
    println!("the in-flight line landed {count} time(s)");
    assert_one_writer(&view);
    h.clean().await;
    h.stop().await;
}
