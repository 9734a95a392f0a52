//! `podrunner run` with the Kubernetes executor, end to end: the testkit GitLab, the testkit
//! Kubernetes API server (Fargate scheduler, bubblewrap kubelet), the static podrunner as the
//! init image and the agent inside job pods. `scripts/test` builds the static binary and sets
//! `PODRUNNER_STATIC_BINARY`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use podrunner_testkit::{GitlabStandIn, Image, JobSpec, JobView, KubernetesStandIn};
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
    child: tokio::process::Child,
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
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
            .arg("run")
            .args(&args)
            .args(["--url", gitlab.url(), "--token", TOKEN])
            .env("KUBECONFIG", &kubeconfig)
            .env("PODRUNNER_INIT_IMAGE", INIT_IMAGE)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("CONFIG_FILE")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Harness {
            gitlab,
            kube,
            _dir: dir,
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

    async fn with_config(kubernetes: &'static str) -> Harness {
        Harness::start(move |dir| {
            let path = dir.join("config.toml");
            std::fs::write(
                &path,
                format!(
                    "concurrent = 4\ncheck_interval = 1\n[[runners]]\n  name = \"k8s\"\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n    namespace = \"gitlab-runner\"\n    poll_timeout = 5\n{kubernetes}\n"
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

fn trace(view: &JobView) -> String {
    String::from_utf8_lossy(&view.trace).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_deployment_runs_a_job_on_its_own_fargate_node() {
    let h = Harness::seed().await;
    let id = h.gitlab.enqueue(
        JobSpec::new(
            "build",
            &[
                "echo \"hello from pod $HOSTNAME as pid $$\"",
                "echo \"secret is $DEPLOY_KEY\"",
            ],
        )
        .variable("GIT_STRATEGY", "none", false)
        .variable("DEPLOY_KEY", "very-secret-deploy-key", true),
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

    // Four writes per job, one shared watch, no per-job reads, no exec, no logs.
    let requests = h.kube.requests();
    let writes: Vec<String> = requests
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect();
    assert_eq!(writes.len(), 4, "{writes:#?}");
    let per_pod_reads = requests
        .iter()
        .filter(|r| r.method == "GET" && (r.uri.contains("/pods/") || r.uri.contains("/secrets/")))
        .count();
    assert_eq!(per_pod_reads, 0, "{requests:#?}");
    let watches = requests.iter().filter(|r| r.watch).count();
    assert!(watches >= 1, "{requests:#?}");
    // The job token and the masked variable are not in any pod spec.
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_script_and_image_pull_failure() {
    let h = Harness::seed().await;
    let failing = h.gitlab.enqueue(
        JobSpec::new("fails", &["echo about to fail", "exit 7"]).variable(
            "GIT_STRATEGY",
            "none",
            false,
        ),
    );
    let missing = h.gitlab.enqueue(
        JobSpec::new("missing-image", &["true"])
            .variable("GIT_STRATEGY", "none", false)
            .payload_field(
                "image",
                serde_json::json!({"name": "registry.example.com/nope:1"}),
            ),
    );
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
    let id =
        h.gitlab
            .enqueue(JobSpec::new("dind", &["true"]).variable("GIT_STRATEGY", "none", false));
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
    let id =
        h.gitlab
            .enqueue(JobSpec::new("huge", &["true"]).variable("GIT_STRATEGY", "none", false));
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "failed", "{text}");
    assert!(
        text.contains("was not scheduled within poll_timeout (5s)")
            && text.contains("Insufficient cpu"),
        "{text}"
    );
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oom_killed_build_container_fails_the_job_with_the_reason() {
    let h = Harness::seed().await;
    let id = h.gitlab.enqueue(
        JobSpec::new("hungry", &["echo started", "sleep 60"]).variable(
            "GIT_STRATEGY",
            "none",
            false,
        ),
    );
    // Wait until the script runs, then let the kernel kill it.
    h.gitlab
        .wait_for_job(id, Duration::from_secs(60), |j| {
            String::from_utf8_lossy(&j.trace).contains("started")
        })
        .await;
    let pod = h.kube.objects("Pod")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
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
