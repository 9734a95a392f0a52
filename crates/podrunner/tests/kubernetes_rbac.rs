//! `podrunner run` with the Kubernetes executor under the chart's own RBAC: the chart is
//! rendered with helm-python-sdk (as `chart.rs` does), its Role and RoleBinding are loaded into
//! the Kubernetes stand-in, and the manager authenticates as the chart's ServiceAccount, so it
//! has exactly the permissions a user installs. `scripts/test` sets `PODRUNNER_CHART_PYTHON`
//! and `PODRUNNER_STATIC_BINARY`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

#[allow(dead_code)]
#[path = "support/chart_manager.rs"]
mod chart_manager;

use chart_manager::{
    ChartManager as Harness, RELEASE_NAMESPACE, granted, repo_root, spawn_manager,
};
use podrunner_testkit::{GitlabStandIn, Image, JobSpec, KubernetesStandIn};
use serde_json::{Value, json};

const TOKEN: &str = "glrt-kubernetes-rbac-e2e-token";
/// The namespace the seed values put job pods in (their Fargate profile's).
const JOB_NAMESPACE: &str = "gitlab-runner";

impl Harness {
    /// Both stand-ins, the chart's RBAC loaded, and `podrunner run --values` with the seed
    /// values under the chart's ServiceAccount.
    async fn start() -> Harness {
        let seed = std::fs::read_to_string(repo_root().join("examples/seed-values.yaml")).unwrap();
        Harness::with_values(&seed, |_| {}).await
    }

    /// Like [`Harness::start`] with these Helm values, `prepare` setting up the Kubernetes
    /// stand-in (with the seed's Fargate profile) before the manager starts.
    async fn with_values(values: &str, prepare: impl FnOnce(&KubernetesStandIn)) -> Harness {
        let h = Harness::launch(TOKEN, values, |kube| {
            kube.add_fargate_profile("gitlab-jobs", JOB_NAMESPACE, &[("use-fargate", "true")]);
            kube.map_image("alpine:latest", Image::HostRoot);
            kube.set_fargate_boot(Duration::from_millis(200));
            prepare(kube);
        })
        .await;
        assert_eq!(h.role["kind"], "Role", "the seed values render a Role");
        assert_eq!(h.role["metadata"]["namespace"], JOB_NAMESPACE);
        assert_eq!(h.service_account.0, RELEASE_NAMESPACE);
        h
    }

    /// Waits until no pod and no Secret is left.
    async fn clean(&self) {
        for _ in 0..300 {
            if self.kube.objects("Pod").is_empty() && self.kube.objects("Secret").is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "left behind: pods {:#?} secrets {:#?}\nmanager log:\n{}",
            self.kube.objects("Pod"),
            self.kube.objects("Secret"),
            self.manager_log()
        );
    }
}

/// A job that needs no sources, in the seed's default image.
fn job(name: &str, script: &[&str]) -> JobSpec {
    JobSpec::new(name, script)
        .variable("GIT_STRATEGY", "none", false)
        .payload_field("image", json!({"name": "alpine:3.20"}))
}

/// Under the chart's Role: a job runs (with registry credentials, so its registry Secret is
/// made and handed to the pod), a restarted manager adopts a running job's pod and sweeps a
/// stray pod and a stray Secret; no request is denied, no sweep call fails, and the Role
/// grants exactly the calls the manager made, nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_role_grants_exactly_what_the_executor_does_and_the_sweep_works_under_it() {
    let mut h = Harness::start().await;
    let system_id = h.system_id().await;

    // 1. A job with registry credentials, to its end.
    let first = h
        .gitlab
        .enqueue(job("first", &["echo first"]).payload_field(
            "credentials",
            json!([{"type": "registry", "url": "registry.example.com",
                    "username": "ci", "password": "registry-password"}]),
        ));
    let view = h.ended(first, Duration::from_secs(90)).await;
    assert_eq!(
        view.status,
        "success",
        "{}\n{}",
        String::from_utf8_lossy(&view.trace),
        h.manager_log()
    );
    h.clean().await;

    // 2. A job still running when the manager is killed, and a stray pod and Secret.
    let second = h.gitlab.enqueue(job("second", &["sleep 6", "echo second"]));
    h.gitlab
        .wait_for_job(second, Duration::from_secs(60), |j| {
            String::from_utf8_lossy(&j.trace).contains("sleep 6")
        })
        .await;
    let labels = json!({"podrunner.io/manager": system_id});
    h.create_as_admin(
        &format!("/api/v1/namespaces/{JOB_NAMESPACE}/secrets"),
        json!({"metadata": {"name": "podrunner-job-4242-registry", "labels": labels},
               "data": {".dockerconfigjson": "e30="}, "type": "kubernetes.io/dockerconfigjson"}),
    )
    .await;
    h.create_as_admin(
        &format!("/api/v1/namespaces/{JOB_NAMESPACE}/pods"),
        json!({"metadata": {"name": "podrunner-job-4243", "labels": labels},
               "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "build", "image": "alpine:3.20",
                                        "command": ["/bin/sleep", "60"]}]}}),
    )
    .await;
    h.kill_and_restart().await;
    let view = h.ended(second, Duration::from_secs(90)).await;
    assert_eq!(view.status, "success", "{}", h.manager_log());
    h.clean().await;

    let log = h.manager_log();
    // A labelled pod without its spec Secret is deleted by adoption, before the sweep.
    assert!(
        log.contains("adopting pod gitlab-runner/podrunner-job-4243\" error=\"its job spec Secret is missing or unreadable; the pod is deleted"),
        "{log}"
    );
    assert!(
        log.contains(
            "Deleted a stray object no job follows kind=Secret namespace=gitlab-runner name=podrunner-job-4242-registry"
        ),
        "{log}"
    );
    assert!(
        !log.contains("Sweep of stray pods and Secrets failed"),
        "{log}"
    );
    // A clean exit deletes the manager's Lease: the last of the calls the Role allows.
    h.quit().await;
    let (made, denied) = h.calls();
    assert!(denied.is_empty(), "denied: {denied:?}\n{log}");
    assert_eq!(
        made,
        granted(&h.role),
        "the manager's calls (left) against the chart's Role (right)"
    );
    h.stop().await;
}

/// Without `list` on secrets, the sweep's failure is logged and counted, and the stray pod is
/// swept all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_sweep_call_is_logged_and_the_pods_are_swept_anyway() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab.set_long_poll(Duration::from_secs(5));
    let kube = KubernetesStandIn::start(2, 4.0).await;
    kube.map_image("alpine:3.20", Image::HostRoot);
    // The chart's Role as it was before the sweep needed it: no `list` on secrets.
    for object in [
        json!({"kind": "Role", "metadata": {"name": "narrow", "namespace": JOB_NAMESPACE},
               "rules": [
                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "list", "watch", "patch", "delete"]},
                   {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get", "patch", "delete"]},
                   {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]}]}),
        json!({"kind": "RoleBinding", "metadata": {"name": "narrow", "namespace": JOB_NAMESPACE},
               "roleRef": {"kind": "Role", "name": "narrow"},
               "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": RELEASE_NAMESPACE}]}),
    ] {
        kube.load_rbac(&object).unwrap();
    }
    let token = kube.service_account_token(RELEASE_NAMESPACE, "runner");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig_with_token(dir.path(), &token);
    let values = dir.path().join("seed-values.yaml");
    std::fs::copy(repo_root().join("examples/seed-values.yaml"), &values).unwrap();
    let mut child = spawn_manager(&values, &gitlab, TOKEN, &kubeconfig);
    let id_file = dir.path().join(".runner_system_id");
    for _ in 0..200 {
        if id_file.is_file() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let system_id = std::fs::read_to_string(&id_file).unwrap().trim().to_owned();
    let labels = json!({"podrunner.io/manager": system_id});
    let status = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/{JOB_NAMESPACE}/pods",
            kube.url()
        ))
        .bearer_auth("stand-in-token")
        .json(
            &json!({"metadata": {"name": "podrunner-job-4243", "labels": labels},
               "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "build", "image": "alpine:3.20",
                                        "command": ["/bin/sleep", "60"]}]}}),
        )
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 201);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let mut child = spawn_manager(&values, &gitlab, TOKEN, &kubeconfig);
    let log_file = dir.path().join("manager.log");
    let mut log = String::new();
    for _ in 0..300 {
        log = std::fs::read_to_string(&log_file).unwrap_or_default();
        if log.contains("Sweep of stray pods and Secrets failed") && kube.objects("Pod").is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.contains(&format!(
            "Sweep of stray pods and Secrets failed namespace=gitlab-runner call=\"list Secrets\" error=\"secrets is forbidden: User \\\"system:serviceaccount:gitlab:runner\\\" cannot list resource \\\"secrets\\\" in API group \\\"\\\" in the namespace \\\"{JOB_NAMESPACE}\\\" (Forbidden)\""
        )),
        "{log}"
    );
    assert!(
        kube.objects("Pod").is_empty(),
        "the stray pod is swept anyway"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// A job whose image's USER is not root reads its spec and runs, under the chart's RBAC.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_in_a_non_root_image_runs() {
    let seed = std::fs::read_to_string(repo_root().join("examples/seed-values.yaml")).unwrap();
    let h =
        Harness::with_values(&seed, |kube| kube.set_image_user("alpine:3.20", 1000, 1000)).await;
    let id = h
        .gitlab
        .enqueue(job("non-root", &["echo \"running as $(id -u):$(id -g)\""]));
    let view = h.ended(id, Duration::from_secs(90)).await;
    let pod_log: String = h
        .kube
        .authorizations()
        .iter()
        .filter(|a| !a.allowed)
        .map(|a| format!("denied {a:?}\n"))
        .collect();
    assert_eq!(
        view.status,
        "success",
        "{}\n{}\n{pod_log}",
        String::from_utf8_lossy(&view.trace),
        h.manager_log()
    );
    let trace = String::from_utf8_lossy(&view.trace);
    assert!(trace.contains("running as 1000:1000"), "{trace}");
    h.clean().await;
    h.stop().await;
}

/// A job with `run_as_user` and no `fs_group` reads its spec and runs as that user.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_with_run_as_user_and_no_fs_group_runs() {
    let values = "runners:\n  config: |\n    [[runners]]\n      [runners.kubernetes]\n        namespace = \"gitlab-runner\"\n        poll_timeout = 60\n        [runners.kubernetes.pod_labels]\n          use-fargate = \"true\"\n        [runners.kubernetes.pod_security_context]\n          run_as_user = 1234\n";
    let h = Harness::with_values(values, |_| {}).await;
    let id = h
        .gitlab
        .enqueue(job("run-as-user", &["echo \"running as $(id -u)\""]));
    let view = h.ended(id, Duration::from_secs(90)).await;
    assert_eq!(
        view.status,
        "success",
        "{}\n{}",
        String::from_utf8_lossy(&view.trace),
        h.manager_log()
    );
    let trace = String::from_utf8_lossy(&view.trace);
    assert!(trace.contains("running as 1234"), "{trace}");
    let pod = h
        .kube
        .authorizations()
        .iter()
        .any(|a| a.verb == "create" && a.resource == "pods" && a.allowed);
    assert!(pod, "the pod was created under the chart's Role");
    h.clean().await;
    h.stop().await;
}

/// A job pod deleted while the manager's watch was down (and the watch history compacted, so
/// the manager must list again) fails its job with the reason within 60 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_deleted_during_a_watch_outage_fails_its_job() {
    let h = Harness::start().await;
    let id = h.gitlab.enqueue(job("long", &["sleep 120"]));
    h.gitlab
        .wait_for_job(id, Duration::from_secs(60), |j| {
            String::from_utf8_lossy(&j.trace).contains("sleep 120")
        })
        .await;
    let pod = h.kube.objects("Pod")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let outage = h.kube.watch_outage();
    let status = reqwest::Client::new()
        .delete(format!(
            "{}/api/v1/namespaces/{JOB_NAMESPACE}/pods/{pod}",
            h.kube.url()
        ))
        .bearer_auth("stand-in-token")
        .json(&json!({"gracePeriodSeconds": 0}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);
    for _ in 0..100 {
        if h.kube.objects("Pod").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.kube.objects("Pod").is_empty());
    h.kube.compact_watch_history();
    drop(outage);
    let view = h.ended(id, Duration::from_secs(60)).await;
    assert_eq!(view.status, "failed", "{}", h.manager_log());
    // The agent, stopped by the deletion, may report before the manager logs it.
    let deleted = format!("pod {JOB_NAMESPACE}/{pod} was deleted before the job finished");
    let log = h.manager_log_once_it_has(&deleted).await;
    assert!(log.contains(&deleted), "{log}");
    h.clean().await;
    h.stop().await;
}

/// Helm values: one runner in the job namespace on Fargate, with `poll_timeout` and these
/// extra `[runners.kubernetes]` lines.
fn values_with(poll_timeout: u32, kubernetes: &str) -> String {
    let mut config = format!(
        "[[runners]]\n  [runners.kubernetes]\n    namespace = \"{JOB_NAMESPACE}\"\n    poll_timeout = {poll_timeout}\n{kubernetes}    [runners.kubernetes.pod_labels]\n      use-fargate = \"true\"\n"
    );
    config = config
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>();
    format!("runners:\n  config: |\n{config}")
}

/// A privileged pod (let through with `reject_unsupported = false`) is refused by Fargate;
/// the job fails at once, long before `poll_timeout`, with Fargate's message and the way out.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_fargate_does_not_support_fails_at_once_with_the_kaniko_hint() {
    let values = values_with(
        600,
        "    privileged = true\n    [runners.kubernetes.fargate]\n      reject_unsupported = false\n",
    );
    let h = Harness::with_values(&values, |_| {}).await;
    let started = std::time::Instant::now();
    let id = h.gitlab.enqueue(job("dind", &["true"]));
    let view = h.ended(id, Duration::from_secs(60)).await;
    assert_eq!(view.status, "failed", "{}", h.manager_log());
    assert!(started.elapsed() < Duration::from_secs(60));
    let log = h.manager_log();
    assert!(
        log.contains(
            "Fargate cannot run this pod: Pod not supported on Fargate: invalid SecurityContext fields: Privileged"
        ) && log.contains("docker-in-docker cannot work: build images with kaniko or buildah"),
        "{log}"
    );
    h.clean().await;
    h.stop().await;
}

/// While Fargate has no capacity the pod waits; the shortage is written to the job log and the
/// job fails at `poll_timeout` with it as the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_fargate_capacity_shortage_is_logged_and_fails_at_poll_timeout() {
    let values = values_with(5, "");
    let h = Harness::with_values(&values, |kube| {
        kube.set_fargate_capacity_shortage(Some(
            podrunner_testkit::kubernetes::CAPACITY_UNAVAILABLE,
        ))
    })
    .await;
    let id = h.gitlab.enqueue(job("waits", &["true"]));
    let view = h.ended(id, Duration::from_secs(60)).await;
    assert_eq!(view.status, "failed", "{}", h.manager_log());
    let log = h.manager_log();
    let reason = format!(
        "was not scheduled within poll_timeout (5s): Fargate capacity shortage: {}",
        podrunner_testkit::kubernetes::CAPACITY_UNAVAILABLE
    );
    assert!(log.contains(&reason), "{log}");
    let trace = String::from_utf8_lossy(&view.trace);
    assert!(
        trace.contains(podrunner_testkit::kubernetes::CAPACITY_UNAVAILABLE),
        "{trace}"
    );
    h.clean().await;
    h.stop().await;
}

/// Fargate's patching evicts a running job's pod through the Eviction API: the job fails with
/// "evicted by Fargate (patching); retry the job".
#[tokio::test(flavor = "multi_thread")]
async fn a_patching_eviction_is_reported_as_such() {
    let h = Harness::start().await;
    let id = h.gitlab.enqueue(job("long", &["sleep 120"]));
    h.gitlab
        .wait_for_job(id, Duration::from_secs(60), |j| {
            String::from_utf8_lossy(&j.trace).contains("sleep 120")
        })
        .await;
    let pod = h.kube.objects("Pod")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    // EKS evicts as itself, not as the runner.
    let status = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/{JOB_NAMESPACE}/pods/{pod}/eviction",
            h.kube.url()
        ))
        .bearer_auth("stand-in-token")
        .json(&json!({"apiVersion": "policy/v1", "kind": "Eviction",
                      "metadata": {"name": pod, "namespace": JOB_NAMESPACE}}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 201);
    let view = h.ended(id, Duration::from_secs(60)).await;
    assert_eq!(view.status, "failed", "{}", h.manager_log());
    // The agent, stopped by the eviction, may report before the manager logs the eviction.
    let evicted =
        format!("pod {JOB_NAMESPACE}/{pod} was evicted by Fargate (patching); retry the job");
    let log = h.manager_log_once_it_has(&evicted).await;
    assert!(log.contains(&evicted), "{log}");
    h.clean().await;
    h.stop().await;
}

/// With declared Fargate profiles, a pod none of them selects is warned about in the job log
/// and the manager's log (here it runs on an EC2 node), and by `podrunner plan`.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_no_declared_profile_selects_is_warned_about() {
    let config = format!(
        "[[runners]]\n  [runners.kubernetes]\n    namespace = \"{JOB_NAMESPACE}\"\n    poll_timeout = 30\n    [runners.kubernetes.fargate]\n      [[runners.kubernetes.fargate.profiles]]\n        name = \"gitlab-jobs\"\n        [[runners.kubernetes.fargate.profiles.selectors]]\n          namespace = \"{JOB_NAMESPACE}\"\n          labels = {{ use-fargate = \"true\" }}\n"
    );
    let indented: String = config.lines().map(|l| format!("    {l}\n")).collect();
    let values = format!("runners:\n  config: |\n{indented}");
    let h = Harness::with_values(&values, |_| {}).await;
    let warning =
        "no declared Fargate profile (gitlab-jobs) selects this pod (namespace \"gitlab-runner\")";
    let plan = std::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .arg("plan")
        .arg("--values")
        .arg(&h.values)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&plan.stderr);
    assert!(stderr.contains(warning), "{stderr}");
    let id = h.gitlab.enqueue(job("ec2", &["true"]));
    let view = h.ended(id, Duration::from_secs(60)).await;
    let trace = String::from_utf8_lossy(&view.trace);
    assert!(trace.contains(warning), "{trace}");
    // The log quotes its values, escaping the namespace's quotes.
    assert!(
        h.manager_log()
            .contains("no declared Fargate profile (gitlab-jobs) selects this pod"),
        "{}",
        h.manager_log()
    );
    h.clean().await;
    h.stop().await;
}

/// What `podrunner plan` says about the PodSecurity level of the planned pod.
fn planned_level(values: &Path) -> String {
    let plan = std::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .arg("plan")
        .arg("--values")
        .arg(values)
        .output()
        .unwrap();
    String::from_utf8_lossy(&plan.stdout)
        .lines()
        .find(|l| l.starts_with("# pod security: meets "))
        .unwrap_or_default()
        .to_owned()
}

/// A job in a namespace enforcing PodSecurity `restricted`: refused with the admission
/// message when the configuration does not opt in, run when it does (seccomp from
/// `pod_security_context`, no privilege escalation, all capabilities dropped, non-root);
/// `podrunner plan` says which level each planned pod meets.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_in_a_restricted_namespace() {
    let restricted = |kube: &KubernetesStandIn| {
        kube.set_namespace_labels(
            JOB_NAMESPACE,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
    };
    // Not opted in: refused at creation, with the reason.
    let h = Harness::with_values(&values_with(30, ""), restricted).await;
    assert_eq!(planned_level(&h.values), "# pod security: meets baseline");
    let id = h.gitlab.enqueue(job("refused", &["true"]));
    let view = h.ended(id, Duration::from_secs(60)).await;
    assert_eq!(view.status, "failed");
    let log = h.manager_log();
    assert!(
        log.contains("is forbidden: violates PodSecurity \\\"restricted:latest\\\": allowPrivilegeEscalation != false"),
        "{log}"
    );
    h.clean().await;
    h.stop().await;

    let opted_in = "    allow_privilege_escalation = false\n    cap_drop = [\"ALL\"]\n    [runners.kubernetes.pod_security_context]\n      run_as_non_root = true\n      run_as_user = 1000\n      [runners.kubernetes.pod_security_context.seccomp_profile]\n        type = \"RuntimeDefault\"\n";
    let h = Harness::with_values(&values_with(30, opted_in), restricted).await;
    assert_eq!(planned_level(&h.values), "# pod security: meets restricted");
    let id = h
        .gitlab
        .enqueue(job("admitted", &["echo \"admitted as $(id -u)\""]));
    let view = h.ended(id, Duration::from_secs(60)).await;
    assert_eq!(view.status, "success", "{}", h.manager_log());
    let trace = String::from_utf8_lossy(&view.trace);
    assert!(trace.contains("admitted as 1000"), "{trace}");
    h.clean().await;
    h.stop().await;
}

/// With `pod_disruption_budget = true`, the chart's Role grants the budget's create, and the
/// job's pod gets a PodDisruptionBudget (`<pod>-pdb`, `minAvailable: 1`, selecting that pod
/// alone, owned by it) while it runs: an eviction (a node drain, Fargate's patching) is
/// refused with 429 and the job goes on to succeed; the budget goes with the pod; no request
/// is denied.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_pod_gets_a_disruption_budget_that_refuses_evictions() {
    let values = seed_with_kubernetes_key("pod_disruption_budget = true");
    let h = Harness::with_values(&values, |_| {}).await;
    assert!(
        granted(&h.role).contains(&("create".to_owned(), "poddisruptionbudgets".to_owned())),
        "{:#}",
        h.role
    );
    let id = h
        .gitlab
        .enqueue(job("guarded", &["sleep 4", "echo guarded"]));
    // The pod runs (its log may reach GitLab only later: the agent catches up with the
    // manager's last prelude lines first).
    let mut running = None;
    for _ in 0..600 {
        running = h
            .kube
            .objects("Pod")
            .into_iter()
            .find(|p| p["status"]["phase"] == "Running");
        if running.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pod = running.unwrap_or_else(|| panic!("the job's pod never ran: {}", h.manager_log()));
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let budgets = h.kube.disruption_budgets();
    assert_eq!(budgets.len(), 1, "{budgets:#?}");
    let budget = &budgets[0];
    assert_eq!(budget["metadata"]["name"], format!("{pod_name}-pdb"));
    assert_eq!(budget["metadata"]["namespace"], JOB_NAMESPACE);
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(
        budget["spec"]["selector"],
        json!({"matchLabels": {"job.runner.gitlab.com/pod":
            pod["metadata"]["labels"]["job.runner.gitlab.com/pod"].clone()}})
    );
    assert_eq!(
        budget["metadata"]["ownerReferences"][0]["uid"],
        pod["metadata"]["uid"]
    );
    // EKS evicts as itself, not as the runner.
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/{JOB_NAMESPACE}/pods/{pod_name}/eviction",
            h.kube.url()
        ))
        .bearer_auth("stand-in-token")
        .json(&json!({"apiVersion": "policy/v1", "kind": "Eviction",
                      "metadata": {"name": pod_name, "namespace": JOB_NAMESPACE}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 429);
    let status: Value = answer.json().await.unwrap();
    assert_eq!(
        status["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(status["reason"], "TooManyRequests");
    let view = h.ended(id, Duration::from_secs(60)).await;
    assert_eq!(
        view.status,
        "success",
        "{}\n{}",
        String::from_utf8_lossy(&view.trace),
        h.manager_log()
    );
    h.clean().await;
    assert!(
        h.kube.disruption_budgets().is_empty(),
        "{:#?}",
        h.kube.disruption_budgets()
    );
    let (made, denied) = h.calls();
    assert!(denied.is_empty(), "denied: {denied:?}");
    assert!(made.contains(&("create".to_owned(), "poddisruptionbudgets".to_owned())));
    h.stop().await;
}

/// With `bearer_token_overwrite_allowed`, a job's `KUBERNETES_BEARER_TOKEN` makes the job's
/// writes: its Pod and spec Secret are created and deleted by the token's ServiceAccount (the
/// stand-in authorises by token), while the manager still watches with its own; a token whose
/// account has no rights fails its job with the API server's refusal and a note naming the
/// variable, and nothing is left behind. Neither token reaches the manager's log.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_bearer_token_makes_the_job_writes_when_the_overwrite_is_allowed() {
    let values = seed_with_kubernetes_key("bearer_token_overwrite_allowed = true");
    let h = Harness::with_values(&values, |kube| {
        for object in [
            json!({"kind": "Role", "metadata": {"name": "deployer", "namespace": JOB_NAMESPACE},
                   "rules": [
                       {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "list", "patch", "delete"]},
                       {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch", "delete"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "deployer", "namespace": JOB_NAMESPACE},
                   "roleRef": {"kind": "Role", "name": "deployer"},
                   "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": JOB_NAMESPACE}]}),
        ] {
            kube.load_rbac(&object).unwrap();
        }
    })
    .await;
    let deployer = h.kube.service_account_token(JOB_NAMESPACE, "deployer");
    let nobody = h.kube.service_account_token(JOB_NAMESPACE, "nobody");
    let calls_of = |user: &str| -> BTreeSet<(String, String)> {
        h.kube
            .authorizations()
            .into_iter()
            .filter(|d| d.user == user && d.allowed)
            .map(|d| (d.verb, d.resource))
            .collect()
    };

    // 1. A token with the rights: the job runs, its writes made as the token's account.
    let id = h
        .gitlab
        .enqueue(job("own-token", &["echo own token"]).variable(
            "KUBERNETES_BEARER_TOKEN",
            &deployer,
            false,
        ));
    let view = h.ended(id, Duration::from_secs(90)).await;
    assert_eq!(
        view.status,
        "success",
        "{}\n{}",
        String::from_utf8_lossy(&view.trace),
        h.manager_log()
    );
    h.clean().await;
    let by_job = calls_of(&format!("system:serviceaccount:{JOB_NAMESPACE}:deployer"));
    for call in [
        ("create", "pods"),
        ("create", "secrets"),
        ("delete", "pods"),
    ] {
        assert!(
            by_job.contains(&(call.0.to_owned(), call.1.to_owned())),
            "{call:?} not made with the job's token: {by_job:?}"
        );
    }
    assert!(
        !by_job.iter().any(|(verb, _)| verb == "watch"),
        "the job's token watched: {by_job:?}"
    );
    let (by_manager, denied) = h.calls();
    assert!(denied.is_empty(), "denied: {denied:?}");
    assert!(by_manager.contains(&("watch".to_owned(), "pods".to_owned())));
    for call in [("create", "pods"), ("create", "secrets")] {
        assert!(
            !by_manager.contains(&(call.0.to_owned(), call.1.to_owned())),
            "{call:?} made with the manager's token: {by_manager:?}"
        );
    }

    // 2. A token without rights: the job fails at once, naming the variable; nothing is made.
    let id = h.gitlab.enqueue(job("no-rights", &["echo never"]).variable(
        "KUBERNETES_BEARER_TOKEN",
        &nobody,
        false,
    ));
    let view = h.ended(id, Duration::from_secs(60)).await;
    let trace = String::from_utf8_lossy(&view.trace);
    assert_eq!(view.status, "failed", "{trace}\n{}", h.manager_log());
    assert!(
        trace.contains("is forbidden")
            && trace.contains("this call was made with the job's KUBERNETES_BEARER_TOKEN"),
        "{trace}"
    );
    assert!(!trace.contains("echo never"), "{trace}");
    h.clean().await;
    let log = h.manager_log();
    assert!(!log.contains(&deployer) && !log.contains(&nobody), "{log}");
    h.stop().await;
}

/// The seed deployment's values with `key` added to their `[runners.kubernetes]` section.
fn seed_with_kubernetes_key(key: &str) -> String {
    let seed = std::fs::read_to_string(repo_root().join("examples/seed-values.yaml")).unwrap();
    let section = "      [runners.kubernetes]\n";
    let values = seed.replacen(section, &format!("{section}        {key}\n"), 1);
    assert_ne!(
        values, seed,
        "the seed values have no [runners.kubernetes] section"
    );
    values
}
