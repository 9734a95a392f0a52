//! One GitLab stand-in, one Kubernetes stand-in and any number of `podrunner run` managers
//! against them, each with its own configuration directory, pod UID (so its own system ID),
//! log and short Lease. Shared by the end-to-end tests that run several managers.

use std::path::PathBuf;
use std::time::Duration;

use podrunner_testkit::{GitlabStandIn, Image, JobSpec, JobView, KubernetesStandIn};

pub const TOKEN: &str = "glrt-several-managers-token";
pub const INIT_IMAGE: &str = "registry.example.com/podrunner:e2e";
pub const NAMESPACE: &str = "gitlab-runner";

fn static_binary() -> PathBuf {
    let path = std::env::var_os("PODRUNNER_STATIC_BINARY")
        .map(PathBuf::from)
        .expect(
            "PODRUNNER_STATIC_BINARY is not set: scripts/test builds the static binary and sets it",
        );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// Both stand-ins.
pub struct Cluster {
    pub gitlab: GitlabStandIn,
    pub kube: KubernetesStandIn,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

/// One `podrunner run`.
pub struct Manager {
    /// Its system ID (derived from its pod UID, as the manager derives it).
    pub system_id: String,
    log: PathBuf,
    child: tokio::process::Child,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let gitlab = GitlabStandIn::start().await;
        gitlab.add_runner_token(TOKEN);
        gitlab.set_long_poll(Duration::from_secs(2));
        let kube = KubernetesStandIn::start(2, 8.0).await;
        // The configured namespace exists, as on a real cluster (per-job namespaces turn
        // the stand-in's NamespaceLifecycle admission on).
        kube.add_namespace(NAMESPACE, &[]);
        kube.map_image(
            INIT_IMAGE,
            Image::Files(vec![(static_binary(), "/podrunner".into())]),
        );
        kube.map_image("alpine:3.20", Image::HostRoot);
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = kube.write_kubeconfig(dir.path());
        Cluster {
            gitlab,
            kube,
            dir,
            kubeconfig,
        }
    }

    /// Starts manager `name` with `concurrent` and a `lease_seconds` Lease.
    pub fn manager(&self, name: &str, concurrent: u32, lease_seconds: u32) -> Manager {
        self.manager_with(name, concurrent, lease_seconds, "")
    }

    /// [`Cluster::manager`] with `extra` lines in `[runners.kubernetes]`.
    pub fn manager_with(
        &self,
        name: &str,
        concurrent: u32,
        lease_seconds: u32,
        extra: &str,
    ) -> Manager {
        let home = self.dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let config = home.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "concurrent = {concurrent}\ncheck_interval = 1\n[[runners]]\n  name = \"k8s\"\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n    namespace = \"{NAMESPACE}\"\n    image = \"alpine:3.20\"\n    poll_timeout = 20\n{extra}"
            ),
        )
        .unwrap();
        // A pod UID of its own (names of up to 6 letters), as the downward API gives one.
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        let uid = format!("6f1c0e52-0000-4000-8000-{hex:0>12}");
        let log = home.join("manager.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
            .stderr(file)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .args(["--url", self.gitlab.url(), "--token", TOKEN])
            .args(["--lease-duration", &lease_seconds.to_string()])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PODRUNNER_INIT_IMAGE", INIT_IMAGE)
            .env("PODRUNNER_POD_UID", &uid)
            .env_remove("PODRUNNER_SYSTEM_ID")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("CONFIG_FILE")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Manager {
            system_id: podrunner_gitlab::system_id::from_pod_uid(&uid),
            log,
            child,
        }
    }

    /// Waits until job `id` ended.
    pub async fn finished(&self, id: i64) -> JobView {
        self.gitlab
            .wait_for_job(id, Duration::from_secs(90), |j| {
                matches!(j.status.as_str(), "success" | "failed")
            })
            .await
    }

    /// Waits until job `id`'s trace contains `text`.
    pub async fn trace_contains(&self, id: i64, text: &str) {
        self.gitlab
            .wait_for_job(id, Duration::from_secs(60), |j| {
                String::from_utf8_lossy(&j.trace).contains(text)
            })
            .await;
    }

    /// The names of the job pods labelled as `manager`'s.
    pub fn pods_of(&self, manager: &Manager) -> Vec<String> {
        self.kube
            .objects("Pod")
            .iter()
            .filter(|p| {
                p["metadata"]["labels"]["podrunner.io/manager"] == manager.system_id.as_str()
            })
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// Waits until no pod and no Secret is left.
    pub async fn clean(&self) {
        for _ in 0..300 {
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

    /// The Lease names and holders, in every namespace.
    pub fn lease_holders(&self) -> Vec<(String, String)> {
        self.kube
            .leases()
            .iter()
            .map(|l| {
                (
                    l["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    l["spec"]["holderIdentity"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }
}

impl Manager {
    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGSTOP: the process is frozen (a paused container, a partitioned node), timers and
    /// all, until [`Manager::resume`].
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT after [`Manager::pause`].
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    /// SIGQUIT: stop taking jobs, finish the running ones.
    pub fn quit(&self) {
        self.signal(rustix::process::Signal::QUIT);
    }

    /// Waits for the process to exit; whether it exited 0.
    pub async fn exited(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the manager exits")
            .unwrap()
            .success()
    }

    /// SIGQUIT, and waits for the exit.
    pub async fn stop(mut self) {
        self.quit();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// A job that needs no sources and runs for `seconds`, saying when it starts and ends.
pub fn long_job(n: usize, seconds: u32) -> JobSpec {
    JobSpec::new(
        &format!("job-{n}"),
        &[
            &format!("echo start-{n}-mark"),
            &format!("sleep {seconds}"),
            &format!("echo end-{n}-mark"),
        ],
    )
    .variable("GIT_STRATEGY", "none", false)
}

/// Waits until `check` holds, for at most `within`.
pub async fn until(within: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
