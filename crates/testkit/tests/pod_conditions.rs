//! The pod conditions of the Kubernetes stand-in, read over its HTTP API as a client would:
//! the scheduler's `PodScheduled` and, from the kubelet's first status on,
//! `PodReadyToStartContainers`, `Initialized`, `Ready` and `ContainersReady` through a pod's
//! life (kubernetes `pkg/kubelet/status/generate.go`).

use std::time::Duration;

use podrunner_testkit::{Image, KubernetesStandIn};
use serde_json::{Value, json};

const NS: &str = "ci";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn create(&self, resource: &str, body: Value) -> u16 {
        let response = self
            .http
            .post(format!("{}/{resource}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }

    async fn pod(&self, name: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/pods/{name}", self.base))
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    /// Polls the pod until `check` holds (or fails the test after 20 s).
    async fn wait_pod(&self, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..400 {
            let pod = self.pod(name).await;
            if check(&pod) {
                return pod;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "pod {name} never reached the expected state: {:#}",
            self.pod(name).await
        );
    }
}

async fn stand_in() -> (KubernetesStandIn, Client) {
    let kube = KubernetesStandIn::start(1, 4.0).await;
    kube.map_image("debian:12", Image::HostRoot);
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("{}/api/v1/namespaces/{NS}", kube.url()),
    };
    (kube, client)
}

fn pod(name: &str, init: Value, containers: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "initContainers": init, "containers": containers},
    })
}

fn container(name: &str, script: &str) -> Value {
    json!({"name": name, "image": "debian:12", "command": ["/bin/sh", "-c", script]})
}

/// The condition of `type_`, if the pod has it.
fn condition<'a>(pod: &'a Value, type_: &str) -> Option<&'a Value> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The condition of `type_` as (status, reason, message), empty where absent.
fn summary(pod: &Value, type_: &str) -> (String, String, String) {
    let c = condition(pod, type_).unwrap_or_else(|| panic!("no {type_} condition: {pod:#}"));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&c["status"]), text(&c["reason"]), text(&c["message"]))
}

fn holds(pod: &Value, type_: &str) -> bool {
    condition(pod, type_).is_some_and(|c| c["status"] == "True")
}

fn s(text: &str) -> String {
    text.to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_is_initialized_then_ready_then_completed() {
    let (_kube, client) = stand_in().await;
    let body = pod(
        "life",
        json!([container("init", "sleep 1")]),
        json!([container("main", "sleep 2")]),
    );
    assert_eq!(client.create("pods", body).await, 201);

    // While the init container runs.
    let initializing = client
        .wait_pod("life", |p| {
            p["status"]["initContainerStatuses"][0]["state"]
                .get("running")
                .is_some()
        })
        .await;
    assert_eq!(
        summary(&initializing, "Initialized"),
        (
            s("False"),
            s("ContainersNotInitialized"),
            s("containers with incomplete status: [init]")
        )
    );
    assert_eq!(
        summary(&initializing, "Ready"),
        (
            s("False"),
            s("ContainersNotReady"),
            s("containers with unready status: [main]")
        )
    );
    assert_eq!(
        summary(&initializing, "ContainersReady"),
        summary(&initializing, "Ready")
    );
    assert_eq!(
        summary(&initializing, "PodReadyToStartContainers"),
        (s("True"), s(""), s(""))
    );
    assert_eq!(
        summary(&initializing, "PodScheduled"),
        (s("True"), s(""), s(""))
    );
    let scheduled_at =
        condition(&initializing, "PodScheduled").unwrap()["lastTransitionTime"].clone();
    assert!(scheduled_at.is_string(), "{initializing:#}");

    // Once the container runs.
    let running = client.wait_pod("life", |p| holds(p, "Ready")).await;
    assert_eq!(running["status"]["phase"], "Running");
    let types: Vec<&str> = running["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled"
        ]
    );
    for type_ in types {
        assert_eq!(
            summary(&running, type_),
            (s("True"), s(""), s("")),
            "{type_}"
        );
    }
    assert_eq!(running["status"]["initContainerStatuses"][0]["ready"], true);
    assert_eq!(running["status"]["containerStatuses"][0]["ready"], true);
    assert_eq!(
        condition(&running, "PodScheduled").unwrap()["lastTransitionTime"],
        scheduled_at,
        "PodScheduled did not change"
    );

    // Once it has ended.
    let done = client
        .wait_pod("life", |p| p["status"]["phase"] == "Succeeded")
        .await;
    assert_eq!(
        summary(&done, "Ready"),
        (s("False"), s("PodCompleted"), s(""))
    );
    assert_eq!(
        summary(&done, "ContainersReady"),
        (s("False"), s("PodCompleted"), s(""))
    );
    assert_eq!(
        summary(&done, "Initialized"),
        (s("True"), s("PodCompleted"), s(""))
    );
    assert_eq!(
        summary(&done, "PodReadyToStartContainers"),
        (s("False"), s(""), s("")),
        "the sandbox is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_pod_and_a_pod_that_cannot_pull_are_not_ready() {
    let (_kube, client) = stand_in().await;
    let failing = pod("failing", json!([]), json!([container("main", "exit 3")]));
    assert_eq!(client.create("pods", failing).await, 201);
    let mut pulling = pod("pulling", json!([]), json!([container("main", "true")]));
    pulling["spec"]["containers"][0]["image"] = json!("registry.example.com/missing:1");
    assert_eq!(client.create("pods", pulling).await, 201);

    let failed = client
        .wait_pod("failing", |p| p["status"]["phase"] == "Failed")
        .await;
    assert_eq!(
        summary(&failed, "Ready"),
        (s("False"), s("PodFailed"), s(""))
    );
    assert_eq!(
        summary(&failed, "ContainersReady"),
        (s("False"), s("PodFailed"), s(""))
    );
    assert_eq!(summary(&failed, "Initialized"), (s("True"), s(""), s("")));

    // The kubelet made the sandbox before it pulled the image.
    let backing_off = client
        .wait_pod("pulling", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
        })
        .await;
    assert_eq!(
        summary(&backing_off, "Ready"),
        (
            s("False"),
            s("ContainersNotReady"),
            s("containers with unready status: [main]")
        )
    );
    assert_eq!(
        summary(&backing_off, "PodReadyToStartContainers"),
        (s("True"), s(""), s(""))
    );
    assert_eq!(
        summary(&backing_off, "Initialized"),
        (s("True"), s(""), s(""))
    );
    assert!(
        backing_off["status"]["startTime"].is_string(),
        "{backing_off:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unschedulable_pod_has_only_the_schedulers_condition() {
    let (_kube, client) = stand_in().await;
    let mut huge = pod("huge", json!([]), json!([container("main", "true")]));
    huge["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "8"}});
    assert_eq!(client.create("pods", huge).await, 201);
    let pending = client
        .wait_pod("huge", |p| condition(p, "PodScheduled").is_some())
        .await;
    assert_eq!(summary(&pending, "PodScheduled").1, "Unschedulable");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pending = client.pod("huge").await;
    assert_eq!(
        pending["status"]["conditions"].as_array().map(Vec::len),
        Some(1),
        "no kubelet has seen the pod: {pending:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubelet_keeps_the_conditions_it_does_not_own() {
    let (kube, client) = stand_in().await;
    // `quits` ends on SIGTERM; `lingers` (PID 1 without a handler) ignores it until the
    // grace period ends, so the pod lives on after a kubelet status about `quits`.
    let mut body = pod(
        "evicted",
        json!([]),
        json!([
            container(
                "quits",
                "trap 'exit 0' TERM; echo trapped; while true; do sleep 0.1; done"
            ),
            container("lingers", "while true; do sleep 0.1; done"),
        ]),
    );
    body["spec"]["terminationGracePeriodSeconds"] = json!(3);
    assert_eq!(client.create("pods", body).await, 201);
    client.wait_pod("evicted", |p| holds(p, "Ready")).await;
    for _ in 0..400 {
        if kube.logs(NS, "evicted", "quits").contains("trapped") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        kube.logs(NS, "evicted", "quits").contains("trapped"),
        "the container never set its trap"
    );
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
                          "metadata": {"name": "evicted", "namespace": NS}});
    assert_eq!(client.create("pods/evicted/eviction", eviction).await, 201);
    let stopping = client
        .wait_pod("evicted", |p| {
            p["status"]["containerStatuses"][0]["state"]
                .get("terminated")
                .is_some()
        })
        .await;
    assert_eq!(
        summary(&stopping, "DisruptionTarget"),
        (
            s("True"),
            s("EvictionByEvictionAPI"),
            s("Eviction API: evicting")
        )
    );
    assert_eq!(
        stopping["status"]["conditions"][0]["type"], "DisruptionTarget",
        "{stopping:#}"
    );
    assert_eq!(
        summary(&stopping, "Ready"),
        (
            s("False"),
            s("ContainersNotReady"),
            s("containers with unready status: [quits]")
        )
    );
}
