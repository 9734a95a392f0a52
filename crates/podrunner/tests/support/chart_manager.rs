//! `podrunner run --values` under the chart's own RBAC: the chart rendered with helm-python-sdk
//! (`chart/tests/helm.py`), its Role or ClusterRole and bindings loaded into the Kubernetes
//! stand-in, and the manager authenticated as the chart's ServiceAccount, so that it runs with
//! exactly the permissions a user installs. Shared by the end-to-end tests that need the
//! chart's RBAC; `scripts/test` sets `PODRUNNER_CHART_PYTHON` and `PODRUNNER_STATIC_BINARY`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podrunner_testkit::{GitlabStandIn, Image, JobView, KubernetesStandIn};
use serde_json::Value;

pub const INIT_IMAGE: &str = "registry.example.com/podrunner:e2e";
/// The namespace the chart is installed in (its ServiceAccount's).
pub const RELEASE_NAMESPACE: &str = "gitlab";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn static_binary() -> PathBuf {
    let path = std::env::var_os("PODRUNNER_STATIC_BINARY")
        .map(PathBuf::from)
        .expect(
            "PODRUNNER_STATIC_BINARY is not set: scripts/test builds the static binary and sets it",
        );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// The chart's manifests for the values in `values`, parsed, as JSON (NOTES.txt left out).
pub fn rendered_chart(values: &Path) -> Vec<Value> {
    let python = std::env::var("PODRUNNER_CHART_PYTHON").expect(
        "PODRUNNER_CHART_PYTHON is not set: scripts/test installs helm-python-sdk and sets it",
    );
    let output = std::process::Command::new(python)
        .args([
            "chart/tests/helm.py",
            "render",
            "chart/podrunner",
            values.to_str().unwrap(),
            RELEASE_NAMESPACE,
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let files: serde_json::Map<String, Value> = serde_json::from_slice(&output.stdout).unwrap();
    let mut documents = Vec::new();
    for (path, text) in files {
        if path.ends_with("NOTES.txt") {
            continue;
        }
        for document in serde_yaml_ng::Deserializer::from_str(text.as_str().unwrap()) {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(document).unwrap();
            if !value.is_null() {
                documents.push(serde_json::to_value(value).unwrap());
            }
        }
    }
    documents
}

/// The (verb, resource) pairs a Role's or ClusterRole's rules grant.
pub fn granted(role: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for resource in rule["resources"].as_array().unwrap() {
            for verb in rule["verbs"].as_array().unwrap() {
                out.insert((
                    verb.as_str().unwrap().to_owned(),
                    resource.as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

/// Both stand-ins and one manager under the chart's ServiceAccount.
pub struct ChartManager {
    pub gitlab: GitlabStandIn,
    pub kube: KubernetesStandIn,
    pub dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    /// The Helm values file the manager runs with.
    pub values: PathBuf,
    child: tokio::process::Child,
    /// The chart's Role or ClusterRole, as rendered.
    pub role: Value,
    /// The namespace and name of the ServiceAccount the chart binds it to.
    pub service_account: (String, String),
    /// The authorizer's user name of that ServiceAccount.
    pub user: String,
    token: &'static str,
}

impl ChartManager {
    /// The stand-ins (two nodes of 4 CPUs; the init image and `alpine:3.20` mapped), `prepare`
    /// setting up the Kubernetes stand-in further, the chart's RBAC for `values` loaded, and
    /// `podrunner run --values` with runner token `token` under the chart's ServiceAccount.
    pub async fn launch(
        token: &'static str,
        values: &str,
        prepare: impl FnOnce(&KubernetesStandIn),
    ) -> ChartManager {
        let gitlab = GitlabStandIn::start().await;
        gitlab.add_runner_token(token);
        gitlab.set_long_poll(Duration::from_secs(5));
        let kube = KubernetesStandIn::start(2, 4.0).await;
        kube.map_image(
            INIT_IMAGE,
            Image::Files(vec![(static_binary(), "/podrunner".into())]),
        );
        kube.map_image("alpine:3.20", Image::HostRoot);
        prepare(&kube);
        let dir = tempfile::tempdir().unwrap();
        let values_file = dir.path().join("values.yaml");
        std::fs::write(&values_file, values).unwrap();
        let mut role = Value::Null;
        let mut subject = None;
        for document in rendered_chart(&values_file) {
            match document["kind"].as_str() {
                Some("Role" | "ClusterRole") => {
                    kube.load_rbac(&document).unwrap();
                    role = document;
                }
                Some("RoleBinding" | "ClusterRoleBinding") => {
                    let s = &document["subjects"][0];
                    subject = Some((
                        s["namespace"].as_str().unwrap().to_owned(),
                        s["name"].as_str().unwrap().to_owned(),
                    ));
                    kube.load_rbac(&document).unwrap();
                }
                _ => {}
            }
        }
        let (sa_namespace, sa_name) = subject.expect("the chart binds its ServiceAccount");
        let sa_token = kube.service_account_token(&sa_namespace, &sa_name);
        let kubeconfig = kube.write_kubeconfig_with_token(dir.path(), &sa_token);
        let child = spawn_manager(&values_file, &gitlab, token, &kubeconfig);
        ChartManager {
            gitlab,
            kube,
            dir,
            kubeconfig,
            values: values_file,
            child,
            role,
            user: format!("system:serviceaccount:{sa_namespace}:{sa_name}"),
            service_account: (sa_namespace, sa_name),
            token,
        }
    }

    pub fn manager_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    /// The manager's log once it contains `text` (at most 30 s): a job may end in GitLab
    /// before the manager logs why (its agent's own final update can get there first).
    pub async fn manager_log_once_it_has(&self, text: &str) -> String {
        for _ in 0..300 {
            let log = self.manager_log();
            if log.contains(text) {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.manager_log()
    }

    pub async fn system_id(&self) -> String {
        let file = self.dir.path().join(".runner_system_id");
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&file)
                && !text.trim().is_empty()
            {
                return text.trim().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no system ID in {}", file.display());
    }

    /// Job `id` once it succeeded or failed, waiting up to `within`.
    pub async fn ended(&self, id: i64, within: Duration) -> JobView {
        self.gitlab
            .wait_for_job(id, within, |j| {
                matches!(j.status.as_str(), "success" | "failed")
            })
            .await
    }

    /// SIGKILL, and a new manager with the same configuration.
    pub async fn kill_and_restart(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        self.child = spawn_manager(&self.values, &self.gitlab, self.token, &self.kubeconfig);
    }

    /// Creates `body` at API `path` as the cluster admin (not as the manager).
    pub async fn create_as_admin(&self, path: &str, body: Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.kube.url()))
            .bearer_auth("stand-in-token")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert_eq!(status, 201, "{path}: {}", response.text().await.unwrap());
    }

    /// The manager's requests as the authorizer saw them: (verb, resource), and any denial.
    pub fn calls(&self) -> (BTreeSet<(String, String)>, Vec<String>) {
        let mut made = BTreeSet::new();
        let mut denied = Vec::new();
        for decision in self.kube.authorizations() {
            if decision.user != self.user {
                continue;
            }
            if !decision.allowed {
                denied.push(format!(
                    "{} {} in {:?}",
                    decision.verb, decision.resource, decision.namespace
                ));
            }
            made.insert((decision.verb, decision.resource));
        }
        (made, denied)
    }

    /// SIGQUIT, and waits until the manager exited (it gives up its Lease on the way out).
    pub async fn quit(&mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }

    pub async fn stop(mut self) {
        self.quit().await;
    }
}

pub fn spawn_manager(
    values: &Path,
    gitlab: &GitlabStandIn,
    token: &str,
    kubeconfig: &Path,
) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(kubeconfig.with_file_name("manager.log"))
        .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .stderr(log)
        .arg("run")
        .arg("--values")
        .arg(values)
        .args(["--url", gitlab.url(), "--token", token])
        .env("KUBECONFIG", kubeconfig)
        .env("PODRUNNER_INIT_IMAGE", INIT_IMAGE)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("CONFIG_FILE")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
