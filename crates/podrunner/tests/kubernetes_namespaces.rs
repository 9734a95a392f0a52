//! `podrunner run` with jobs in more than one namespace, under the chart's own RBAC (rendered
//! with helm-python-sdk, as `kubernetes_rbac.rs` does) and with NamespaceLifecycle on in the
//! Kubernetes stand-in: `namespace_per_job` makes each job's namespace and deletes it, a
//! restarted manager adopts a job in its per-job namespace and sweeps a namespace a crash
//! left; a job in a namespace chosen by `KUBERNETES_NAMESPACE_OVERWRITE` is adopted after a
//! restart and a stray pod there is swept. `scripts/test` sets `PODRUNNER_CHART_PYTHON` and
//! `PODRUNNER_STATIC_BINARY`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podrunner_testkit::{GitlabStandIn, Image, JobSpec, KubernetesStandIn};
use serde_json::{Value, json};

const TOKEN: &str = "glrt-kubernetes-namespaces-e2e-token";
const INIT_IMAGE: &str = "registry.example.com/podrunner:e2e";
const RELEASE_NAMESPACE: &str = "gitlab";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn static_binary() -> PathBuf {
    let path = std::env::var_os("PODRUNNER_STATIC_BINARY")
        .map(PathBuf::from)
        .expect(
            "PODRUNNER_STATIC_BINARY is not set: scripts/test builds the static binary and sets it",
        );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// The chart's RBAC objects for `values`, as JSON.
fn rendered_rbac(values: &Path) -> Vec<Value> {
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
    let text = files["podrunner/templates/rbac.yaml"].as_str().unwrap();
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(document).unwrap();
            serde_json::to_value(value).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The (verb, resource) pairs a role's rules grant.
fn granted(role: &Value) -> BTreeSet<(String, String)> {
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

struct Harness {
    gitlab: GitlabStandIn,
    kube: KubernetesStandIn,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    values: PathBuf,
    child: tokio::process::Child,
    role: Value,
    user: String,
}

impl Harness {
    /// Both stand-ins with `namespaces` existing, the chart's RBAC for `values` loaded, and
    /// `podrunner run --values` under the chart's ServiceAccount.
    async fn start(values: &str, namespaces: &[&str]) -> Harness {
        let gitlab = GitlabStandIn::start().await;
        gitlab.add_runner_token(TOKEN);
        gitlab.set_long_poll(Duration::from_secs(5));
        let kube = KubernetesStandIn::start(2, 4.0).await;
        kube.map_image(
            INIT_IMAGE,
            Image::Files(vec![(static_binary(), "/podrunner".into())]),
        );
        kube.map_image("alpine:3.20", Image::HostRoot);
        kube.add_namespace(RELEASE_NAMESPACE, &[]);
        for namespace in namespaces {
            kube.add_namespace(namespace, &[]);
        }
        let dir = tempfile::tempdir().unwrap();
        let values_file = dir.path().join("values.yaml");
        std::fs::write(&values_file, values).unwrap();
        let mut role = Value::Null;
        let mut subject = None;
        for document in rendered_rbac(&values_file) {
            kube.load_rbac(&document).unwrap();
            match document["kind"].as_str() {
                Some("Role" | "ClusterRole") => role = document,
                Some("RoleBinding" | "ClusterRoleBinding") => {
                    let s = &document["subjects"][0];
                    subject = Some((
                        s["namespace"].as_str().unwrap().to_owned(),
                        s["name"].as_str().unwrap().to_owned(),
                    ));
                }
                _ => {}
            }
        }
        let (sa_namespace, sa_name) = subject.expect("the chart binds its ServiceAccount");
        let token = kube.service_account_token(&sa_namespace, &sa_name);
        let kubeconfig = kube.write_kubeconfig_with_token(dir.path(), &token);
        let child = spawn_manager(&values_file, &gitlab, &kubeconfig);
        Harness {
            gitlab,
            kube,
            dir,
            kubeconfig,
            values: values_file,
            child,
            role,
            user: format!("system:serviceaccount:{sa_namespace}:{sa_name}"),
        }
    }

    fn manager_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    async fn system_id(&self) -> String {
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

    async fn kill_and_restart(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        self.child = spawn_manager(&self.values, &self.gitlab, &self.kubeconfig);
    }

    /// Creates `body` at `path` as the cluster admin (not as the manager).
    async fn create_as_admin(&self, path: &str, body: Value) {
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

    async fn finished(&self, id: i64) -> String {
        let view = self
            .gitlab
            .wait_for_job(id, Duration::from_secs(90), |j| {
                matches!(j.status.as_str(), "success" | "failed")
            })
            .await;
        assert_eq!(
            view.status,
            "success",
            "{}\n{}",
            String::from_utf8_lossy(&view.trace),
            self.manager_log()
        );
        String::from_utf8_lossy(&view.trace).into_owned()
    }

    /// Waits until `check` holds, or fails with the manager's log.
    async fn eventually(&self, what: &str, check: impl Fn(&KubernetesStandIn) -> bool) {
        for _ in 0..300 {
            if check(&self.kube) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{what} never happened; namespaces {:?}, pods {:#?}\nmanager log:\n{}",
            self.kube.namespaces(),
            self.kube.objects("Pod"),
            self.manager_log()
        );
    }

    /// The manager's calls as the authorizer saw them, and any denial.
    fn calls(&self) -> (BTreeSet<(String, String)>, Vec<String>) {
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

fn spawn_manager(
    values: &Path,
    gitlab: &GitlabStandIn,
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
        .args(["--url", gitlab.url(), "--token", TOKEN])
        .env("KUBECONFIG", kubeconfig)
        .env("PODRUNNER_INIT_IMAGE", INIT_IMAGE)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("CONFIG_FILE")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn job(name: &str, script: &[&str]) -> JobSpec {
    JobSpec::new(name, script)
        .variable("GIT_STRATEGY", "none", false)
        .payload_field("image", json!({"name": "alpine:3.20"}))
}

fn has_pod_in(kube: &KubernetesStandIn, namespace: &str) -> bool {
    kube.objects("Pod")
        .iter()
        .any(|p| p["metadata"]["namespace"] == namespace)
}

/// `namespace_per_job` under the chart's ClusterRole: the job runs in `ci-job-<ID>`, made
/// before and deleted after; a restarted manager adopts a job running in its namespace (found
/// by a cluster-wide list) and deletes a labelled namespace a crash left with no pod in it;
/// no call is denied and every call is one the ClusterRole grants.
#[tokio::test(flavor = "multi_thread")]
async fn namespace_per_job_makes_and_deletes_each_jobs_namespace_and_adopts_across_a_restart() {
    let values = "runners:\n  config: |\n    [[runners]]\n      [runners.kubernetes]\n        namespace_per_job = true\n        poll_timeout = 60\n";
    let mut h = Harness::start(values, &[]).await;
    assert_eq!(h.role["kind"], "ClusterRole", "{:#}", h.role);
    let system_id = h.system_id().await;

    let first = h.gitlab.enqueue(job("first", &["echo first"]));
    let namespace = format!("ci-job-{first}");
    h.eventually("the job's namespace appearing", |k| {
        k.object("Namespace", "", &namespace).is_some()
    })
    .await;
    let made = h.kube.object("Namespace", "", &namespace).unwrap();
    assert_eq!(
        made["metadata"]["labels"]["podrunner.io/manager"],
        system_id
    );
    assert_eq!(
        made["metadata"]["labels"]["podrunner.io/job-id"],
        first.to_string()
    );
    h.finished(first).await;
    h.eventually("the job's namespace being deleted", |k| {
        k.object("Namespace", "", &namespace).is_none()
    })
    .await;

    // A job running when the manager is killed, and a namespace a crash left empty.
    let second = h
        .gitlab
        .enqueue(job("second", &["sleep 15", "echo second"]));
    let second_namespace = format!("ci-job-{second}");
    h.gitlab
        .wait_for_job(second, Duration::from_secs(60), |j| {
            String::from_utf8_lossy(&j.trace).contains("sleep 15")
        })
        .await;
    h.create_as_admin(
        "/api/v1/namespaces",
        json!({"metadata": {"name": "ci-job-4242",
                            "labels": {"podrunner.io/manager": system_id, "podrunner.io/job-id": "4242"}}}),
    )
    .await;
    h.kill_and_restart().await;
    h.finished(second).await;
    h.eventually(
        "the adopted job's namespace and the stray one being deleted",
        |k| {
            k.object("Namespace", "", &second_namespace).is_none()
                && k.object("Namespace", "", "ci-job-4242").is_none()
        },
    )
    .await;
    let log = h.manager_log();
    assert!(
        log.contains("Pod adopted") && log.contains(&format!("namespace={second_namespace}")),
        "{log}"
    );
    assert!(
        log.contains("Deleted a stray object no job follows kind=Namespace namespace=ci-job-4242"),
        "{log}"
    );
    let (made, denied) = h.calls();
    assert!(denied.is_empty(), "denied: {denied:?}\n{log}");
    let granted = granted(&h.role);
    assert!(
        made.is_subset(&granted),
        "made {made:?}, granted {granted:?}"
    );
    for call in [
        ("create", "namespaces"),
        ("delete", "namespaces"),
        ("list", "namespaces"),
    ] {
        assert!(
            made.contains(&(call.0.to_owned(), call.1.to_owned())),
            "{call:?} not made: {made:?}"
        );
    }
    h.stop().await;
}

/// A job in a namespace chosen by `KUBERNETES_NAMESPACE_OVERWRITE`: after a restart it is
/// adopted (found by a cluster-wide list under `rbac.clusterWideAccess`), and a stray pod there
/// is swept.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_in_an_overwritten_namespace_is_adopted_and_a_stray_one_swept_after_a_restart() {
    let values = "rbac:\n  clusterWideAccess: true\nrunners:\n  config: |\n    [[runners]]\n      [runners.kubernetes]\n        namespace = \"gitlab-runner\"\n        namespace_overwrite_allowed = \"ci-.*\"\n        poll_timeout = 60\n";
    let mut h = Harness::start(values, &["gitlab-runner", "ci-other"]).await;
    let system_id = h.system_id().await;
    let id = h
        .gitlab
        .enqueue(job("elsewhere", &["sleep 15", "echo elsewhere"]).variable(
            "KUBERNETES_NAMESPACE_OVERWRITE",
            "ci-other",
            false,
        ));
    h.gitlab
        .wait_for_job(id, Duration::from_secs(60), |j| {
            String::from_utf8_lossy(&j.trace).contains("sleep 15")
        })
        .await;
    assert!(has_pod_in(&h.kube, "ci-other"), "{}", h.manager_log());
    h.create_as_admin(
        "/api/v1/namespaces/ci-other/pods",
        json!({"metadata": {"name": "podrunner-job-4243", "labels": {"podrunner.io/manager": system_id}},
               "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "build", "image": "alpine:3.20",
                                        "command": ["/bin/sleep", "60"]}]}}),
    )
    .await;
    h.kill_and_restart().await;
    let trace = h.finished(id).await;
    assert!(trace.contains("elsewhere"), "{trace}");
    h.eventually("every pod in ci-other being gone", |k| {
        !has_pod_in(k, "ci-other")
    })
    .await;
    let log = h.manager_log();
    assert!(
        log.contains("Pod adopted") && log.contains("namespace=ci-other"),
        "{log}"
    );
    assert!(
        log.contains("adopting pod ci-other/podrunner-job-4243"),
        "the stray pod is found in the overwritten namespace: {log}"
    );
    let (_, denied) = h.calls();
    assert!(denied.is_empty(), "denied: {denied:?}\n{log}");
    h.stop().await;
}
