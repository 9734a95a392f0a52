//! `podrunner run` with a list of pull policies, end to end: the registry refuses the job's
//! image while the EC2 nodes have it cached. With `["always", "if-not-present"]` the first
//! pod fails its pull, is deleted with what it owns, and the second pod runs the job from the
//! cache, with gitlab-runner's warning in the log; with `["always"]` alone the job fails with
//! the pull error. `scripts/test` sets `PODRUNNER_STATIC_BINARY`.

use std::path::PathBuf;
use std::time::Duration;

use podrunner_testkit::{GitlabStandIn, Image, JobSpec, JobView, KubernetesStandIn};

const TOKEN: &str = "glrt-kubernetes-pull-e2e-token";
const INIT_IMAGE: &str = "registry.example.com/podrunner:e2e";
const IMAGE: &str = "registry.example.com/ruby:3.3";
const REGISTRY_ERROR: &str = "failed to pull and unpack image \"registry.example.com/ruby:3.3\": failed to resolve reference \"registry.example.com/ruby:3.3\": unexpected status from HEAD request: 503 Service Unavailable";

fn static_binary() -> PathBuf {
    let path = std::env::var_os("PODRUNNER_STATIC_BINARY")
        .map(PathBuf::from)
        .expect(
            "PODRUNNER_STATIC_BINARY is not set: scripts/test builds the static binary and sets it",
        );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

struct Harness {
    gitlab: GitlabStandIn,
    kube: KubernetesStandIn,
    _dir: tempfile::TempDir,
    child: tokio::process::Child,
}

impl Harness {
    /// The stand-ins, the job image cached on the EC2 nodes but refused by the registry, and
    /// `podrunner run` with `pull_policy`.
    async fn start(pull_policy: &str) -> Harness {
        let gitlab = GitlabStandIn::start().await;
        gitlab.add_runner_token(TOKEN);
        gitlab.set_long_poll(Duration::from_secs(2));
        let kube = KubernetesStandIn::start(2, 4.0).await;
        kube.map_image(
            INIT_IMAGE,
            Image::Files(vec![(static_binary(), "/podrunner".into())]),
        );
        kube.map_image(IMAGE, Image::PullFails(REGISTRY_ERROR.into()));
        kube.cache_image_on_nodes(IMAGE, Image::HostRoot);
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = kube.write_kubeconfig(dir.path());
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "concurrent = 1\ncheck_interval = 1\n[[runners]]\n  name = \"k8s\"\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n    namespace = \"gitlab-runner\"\n    image = \"{IMAGE}\"\n    poll_timeout = 30\n    pull_policy = {pull_policy}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("manager.log")).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
            .stderr(log)
            .arg("run")
            .arg("-c")
            .arg(&config)
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

    async fn finished(&self, id: i64) -> JobView {
        self.gitlab
            .wait_for_job(id, Duration::from_secs(90), |j| {
                matches!(j.status.as_str(), "success" | "failed")
            })
            .await
    }

    /// Waits until no pod, Secret or PodDisruptionBudget is left.
    async fn clean(&self) {
        for _ in 0..300 {
            if ["Pod", "Secret", "PodDisruptionBudget"]
                .iter()
                .all(|k| self.kube.objects(k).is_empty())
            {
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

    /// The pods created (POST requests to the pods collection).
    fn pods_created(&self) -> usize {
        self.kube
            .requests()
            .iter()
            .filter(|r| {
                r.method == "POST"
                    && r.uri
                        .split('?')
                        .next()
                        .is_some_and(|p| p.ends_with("/pods"))
            })
            .count()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn job() -> JobSpec {
    let mut spec = JobSpec::new("pull", &["echo ran-from-the-node-cache"]).variable(
        "GIT_STRATEGY",
        "none",
        false,
    );
    spec.image = IMAGE.to_owned();
    spec
}

fn trace(view: &JobView) -> String {
    String::from_utf8_lossy(&view.trace).into_owned()
}

const FIRST_WARNING: &str = "WARNING: Failed to pull image \"registry.example.com/ruby:3.3\" for container \"build\" with policy \"Always\": image pull failed: ";

#[tokio::test(flavor = "multi_thread")]
async fn the_next_policy_runs_the_job_from_the_node_cache() {
    let h = Harness::start("[\"always\", \"if-not-present\"]").await;
    let id = h.gitlab.enqueue(job());
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert_eq!(text.matches(FIRST_WARNING).count(), 1, "{text}");
    assert_eq!(
        text.matches("Attempt #2: Trying \"IfNotPresent\" pull policy for \"registry.example.com/ruby:3.3\" image for container \"build\"").count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("ran-from-the-node-cache").count(),
        2,
        "the echo and its output: {text}"
    );
    let warning = text.find(FIRST_WARNING).unwrap();
    let ran = text.find("$ echo ran-from-the-node-cache").expect(&text);
    assert!(warning < ran, "{text}");
    assert_eq!(h.pods_created(), 2, "one pod per attempt");
    // The first pod's Secrets went with it, the second's after the job.
    h.clean().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_policy_left_the_job_fails_with_the_pull_error() {
    let h = Harness::start("[\"always\"]").await;
    let id = h.gitlab.enqueue(job());
    let view = h.finished(id).await;
    let text = trace(&view);
    assert_eq!(view.status, "failed", "{text}");
    assert_eq!(text.matches(FIRST_WARNING).count(), 1, "{text}");
    assert!(!text.contains("Attempt #2"), "{text}");
    assert!(
        text.contains("cannot pull image \"registry.example.com/ruby:3.3\""),
        "{text}"
    );
    assert!(!text.contains("ran-from-the-node-cache"), "{text}");
    // image_pull_failure, as GitLab supports it (the stand-in lists the reasons of older
    // GitLab, so gitlab-runner's compatibility mapping sends runner_system_failure).
    assert_eq!(
        view.failure_reason.as_deref(),
        Some("runner_system_failure"),
        "{text}"
    );
    assert_eq!(h.pods_created(), 1);
    h.clean().await;
    h.stop().await;
}
