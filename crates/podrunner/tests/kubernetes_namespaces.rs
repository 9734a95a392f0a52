//! `podrunner run` with jobs in more than one namespace, under the chart's own RBAC (rendered
//! with helm-python-sdk, as `kubernetes_rbac.rs` does) and with NamespaceLifecycle on in the
//! Kubernetes stand-in: `namespace_per_job` makes each job's namespace and deletes it, a
//! restarted manager adopts a job in its per-job namespace and sweeps a namespace a crash
//! left; a job in a namespace chosen by `KUBERNETES_NAMESPACE_OVERWRITE` is adopted after a
//! restart and a stray pod there is swept. `scripts/test` sets `PODRUNNER_CHART_PYTHON` and
//! `PODRUNNER_STATIC_BINARY`.

use std::time::Duration;

#[allow(dead_code)]
#[path = "support/chart_manager.rs"]
mod chart_manager;

use chart_manager::{ChartManager as Harness, RELEASE_NAMESPACE, granted};
use podrunner_testkit::{JobSpec, KubernetesStandIn};
use serde_json::json;

const TOKEN: &str = "glrt-kubernetes-namespaces-e2e-token";

impl Harness {
    /// Both stand-ins with `namespaces` existing (and NamespaceLifecycle on), the chart's
    /// RBAC for `values` loaded, and `podrunner run --values` under the chart's
    /// ServiceAccount.
    async fn start(values: &str, namespaces: &[&str]) -> Harness {
        Harness::launch(TOKEN, values, |kube| {
            kube.add_namespace(RELEASE_NAMESPACE, &[]);
            for namespace in namespaces {
                kube.add_namespace(namespace, &[]);
            }
        })
        .await
    }

    async fn finished(&self, id: i64) -> String {
        let view = self.ended(id, Duration::from_secs(90)).await;
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
