//! The Kubernetes stand-in, exercised over its HTTP API as a client would: pods with real
//! processes under bubblewrap, Fargate scheduling, watches, garbage collection, failures.

use std::time::Duration;

use podrunner_testkit::{Image, Injection, KubernetesStandIn};
use serde_json::{Value, json};

const NS: &str = "gitlab-runner";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(kube: &KubernetesStandIn) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: format!("{}/api/v1/namespaces/{NS}", kube.url()),
        }
    }

    async fn create(&self, resource: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/{resource}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn delete(&self, path: &str, grace: Option<i64>) -> u16 {
        let mut request = self.http.delete(format!("{}/{path}", self.base));
        if let Some(grace) = grace {
            request = request
                .json(&json!({"gracePeriodSeconds": grace, "propagationPolicy": "Background"}));
        }
        request.send().await.unwrap().status().as_u16()
    }

    /// Polls the pod until `check` holds (or fails the test after 20 s).
    async fn wait_pod(&self, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..400 {
            let (code, pod) = self.get(&format!("pods/{name}")).await;
            if code == 200 && check(&pod) {
                return pod;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "pod {name} never reached the expected state: {:#}",
            self.get(&format!("pods/{name}")).await.1
        );
    }

    async fn wait_gone(&self, path: &str) {
        for _ in 0..400 {
            if self.get(path).await.0 == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{path} was never removed");
    }

    async fn events_of(&self, pod: &str) -> Vec<Value> {
        let (_, list) = self
            .get(&format!("events?fieldSelector=involvedObject.name%3D{pod}"))
            .await;
        list["items"].as_array().cloned().unwrap_or_default()
    }
}

fn pod(name: &str, labels: Value, containers: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": containers},
    })
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

async fn stand_in() -> KubernetesStandIn {
    let kube = KubernetesStandIn::start(2, 4.0).await;
    kube.map_image("debian:12", Image::HostRoot);
    kube.add_fargate_profile("gitlab-jobs", NS, &[("use-fargate", "true")]);
    kube
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fargate_pod_runs_its_containers_with_volumes_and_reports_their_end() {
    let kube = stand_in().await;
    let busybox = which("busybox");
    kube.map_image(
        "scratch-tools:1",
        Image::Files(vec![(busybox, "/bin/busybox".into())]),
    );
    let client = Client::new(&kube);
    let (code, secret) = client
        .create(
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "job-spec"},
                   "data": {"job.json": "eyJoZWxsbyI6MX0="}}),
        )
        .await;
    assert_eq!(code, 201, "{secret}");
    let mut body = pod(
        "job-1",
        json!({"use-fargate": "true"}),
        json!([{
            "name": "build", "image": "debian:12",
            "command": ["/bin/sh", "-c", "cat /spec/job.json; cat /shared/from-init; echo report > /dev/termination-log; echo out; echo err >&2"],
            "env": [{"name": "GREETING", "value": "hi"}],
            "resources": {"requests": {"cpu": "2", "memory": "8Gi"}},
            "volumeMounts": [{"name": "spec", "mountPath": "/spec", "readOnly": true},
                             {"name": "shared", "mountPath": "/shared"}],
        }]),
    );
    body["spec"]["initContainers"] = json!([{
        "name": "init", "image": "scratch-tools:1",
        "command": ["/bin/busybox", "sh", "-c", "echo from-init > /shared/from-init"],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
    }]);
    body["spec"]["volumes"] = json!([
        {"name": "spec", "secret": {"secretName": "job-spec", "defaultMode": 256}},
        {"name": "shared", "emptyDir": {}},
    ]);
    let (code, created) = client.create("pods", body).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["schedulerName"], "fargate-scheduler");
    assert_eq!(
        created["metadata"]["labels"]["eks.amazonaws.com/fargate-profile"],
        "gitlab-jobs"
    );
    // The Secret is owned by the pod, as podrunner's executor does it.
    let patch = client
        .http
        .patch(format!("{}/secrets/job-spec", client.base))
        .header("content-type", "application/merge-patch+json")
        .body(
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
                "name": "job-1", "uid": created["metadata"]["uid"]}]}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status().as_u16(), 200);

    let done = client
        .wait_pod("job-1", |p| phase(p) == "Succeeded" || phase(p) == "Failed")
        .await;
    assert_eq!(
        phase(&done),
        "Succeeded",
        "{done:#}\n{}",
        kube.logs(NS, "job-1", "build")
    );
    assert_eq!(
        done["metadata"]["annotations"]["CapacityProvisioned"],
        "2vCPU 9GB"
    );
    assert!(
        done["spec"]["nodeName"]
            .as_str()
            .unwrap()
            .starts_with("fargate-ip-")
    );
    let build = &done["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(build["exitCode"], 0);
    assert_eq!(build["reason"], "Completed");
    assert_eq!(build["message"], "report\n");
    assert_eq!(
        done["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    assert_eq!(
        kube.logs(NS, "job-1", "build"),
        "{\"hello\":1}from-init\nout\nerr\n"
    );
    let log = client
        .http
        .get(format!("{}/pods/job-1/log?container=build", client.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("from-init"));
    let events = client.events_of("job-1").await;
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "Scheduled" && e["source"]["component"] == "fargate-scheduler")
    );

    // Deleting the pod collects its Secret.
    assert_eq!(client.delete("pods/job-1", Some(0)).await, 200);
    client.wait_gone("pods/job-1").await;
    client.wait_gone("secrets/job-spec").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_from_a_list_sees_every_change_and_bookmarks() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let (_, list) = client.get("pods?labelSelector=app%3Dpodrunner").await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut watch = client
        .http
        .get(format!(
            "{}/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&labelSelector=app%3Dpodrunner&timeoutSeconds=20",
            client.base
        ))
        .send()
        .await
        .unwrap();
    // One pod the selector matches, one it does not.
    let containers = json!([{"name": "build", "image": "debian:12", "command": ["/bin/true"]}]);
    client
        .create(
            "pods",
            pod("other", json!({"app": "else"}), containers.clone()),
        )
        .await;
    client
        .create("pods", pod("mine", json!({"app": "podrunner"}), containers))
        .await;
    let mut buffer = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = watch.chunk().await.unwrap() {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                events.push(serde_json::from_slice(&line).unwrap());
            }
            let succeeded = events.iter().any(|e| phase(&e["object"]) == "Succeeded");
            let bookmark = events.iter().any(|e| e["type"] == "BOOKMARK");
            if succeeded && bookmark {
                return;
            }
        }
    })
    .await;
    assert!(finished.is_ok(), "events so far: {events:#?}");
    let objects: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] != "BOOKMARK")
        .map(|e| &e["object"])
        .collect();
    assert!(objects.iter().all(|o| o["metadata"]["name"] == "mine"));
    assert_eq!(events[0]["type"], "ADDED");
    // Resource versions only grow.
    let versions: Vec<u64> = objects
        .iter()
        .map(|o| {
            o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    // Field selectors on lists.
    let (_, running_on) = client
        .get("pods?fieldSelector=metadata.name%3Dmine,status.phase%3DSucceeded")
        .await;
    assert_eq!(running_on["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn fargate_refuses_a_privileged_pod_and_it_stays_pending() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let body = pod(
        "dind",
        json!({"use-fargate": "true"}),
        json!([{"name": "build", "image": "debian:12", "command": ["/bin/true"],
                "securityContext": {"privileged": true}}]),
    );
    client.create("pods", body).await;
    let pending = client
        .wait_pod("dind", |p| !p["status"]["conditions"].is_null())
        .await;
    assert_eq!(phase(&pending), "Pending");
    let condition = &pending["status"]["conditions"][0];
    assert_eq!(condition["reason"], "POD_UNSUPPORTED_ON_FARGATE");
    let events = client.events_of("dind").await;
    let failed = events
        .iter()
        .find(|e| e["reason"] == "FailedScheduling")
        .expect("a FailedScheduling event");
    assert_eq!(failed["type"], "Warning");
    assert_eq!(failed["source"]["component"], "fargate-scheduler");
    assert_eq!(
        failed["message"],
        "Pod not supported on Fargate: invalid SecurityContext fields: Privileged"
    );
    assert_eq!(client.delete("pods/dind", None).await, 200);
    client.wait_gone("pods/dind").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ec2_pod_too_big_for_every_node_is_unschedulable() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let body = pod(
        "huge",
        json!({}),
        json!([{"name": "build", "image": "debian:12", "command": ["/bin/true"],
                "resources": {"requests": {"cpu": "8"}}}]),
    );
    client.create("pods", body).await;
    let pending = client
        .wait_pod("huge", |p| !p["status"]["conditions"].is_null())
        .await;
    assert_eq!(
        pending["status"]["conditions"][0]["reason"],
        "Unschedulable"
    );
    assert_eq!(pending["spec"]["schedulerName"], "default-scheduler");
    let events = client.events_of("huge").await;
    assert!(events.iter().any(|e| e["reason"] == "FailedScheduling"
        && e["message"].as_str().unwrap().contains("Insufficient cpu")));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_image_fails_to_pull_then_backs_off() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let body = pod(
        "pull",
        json!({}),
        json!([{"name": "build", "image": "registry.example.com/missing:1", "command": ["/bin/true"]}]),
    );
    client.create("pods", body).await;
    let waiting = |reason: &'static str| {
        move |p: &Value| p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == reason
    };
    client.wait_pod("pull", waiting("ErrImagePull")).await;
    client.wait_pod("pull", waiting("ImagePullBackOff")).await;
    let body = pod(
        "invalid",
        json!({}),
        json!([{"name": "build", "image": "Not A Name", "command": ["/bin/true"]}]),
    );
    client.create("pods", body).await;
    client
        .wait_pod("invalid", waiting("InvalidImageName"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oom_kills_evictions_and_deadlines_end_the_pod() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let sleeper = json!([{"name": "build", "image": "debian:12", "command": ["/bin/sleep", "60"]}]);
    for name in ["oom", "evicted"] {
        client
            .create("pods", pod(name, json!({}), sleeper.clone()))
            .await;
        client.wait_pod(name, |p| phase(p) == "Running").await;
    }
    assert!(kube.inject(
        NS,
        "oom",
        Injection::OomKill {
            container: "build".into()
        }
    ));
    let oom = client.wait_pod("oom", |p| phase(p) == "Failed").await;
    let terminated = &oom["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled");
    assert_eq!(terminated["exitCode"], 137);

    assert!(kube.inject(NS, "evicted", Injection::Evict));
    let evicted = client.wait_pod("evicted", |p| phase(p) == "Failed").await;
    assert_eq!(evicted["status"]["reason"], "Evicted");

    let mut body = pod("deadline", json!({}), sleeper);
    body["spec"]["activeDeadlineSeconds"] = json!(1);
    client.create("pods", body).await;
    let ended = client.wait_pod("deadline", |p| phase(p) == "Failed").await;
    assert_eq!(ended["status"]["reason"], "DeadlineExceeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_running_pod_sends_sigterm_and_waits_for_the_grace_period() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let body = pod(
        "graceful",
        json!({}),
        json!([{"name": "build", "image": "debian:12",
                "command": ["/bin/bash", "-c", "trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 0.1; done"]}]),
    );
    client.create("pods", body).await;
    client.wait_pod("graceful", |p| phase(p) == "Running").await;
    for _ in 0..100 {
        if kube.logs(NS, "graceful", "build").contains("ready") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.delete("pods/graceful", Some(30)).await, 200);
    let (code, deleting) = client.get("pods/graceful").await;
    assert!(code == 404 || !deleting["metadata"]["deletionTimestamp"].is_null());
    client.wait_gone("pods/graceful").await;
    assert!(kube.logs(NS, "graceful", "build").contains("got TERM"));
    // Requests are recorded for counting.
    assert!(
        kube.requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.uri.ends_with("/pods/graceful"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_kubernetes_status_errors() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let containers = json!([{"name": "build", "image": "debian:12", "command": ["/bin/true"]}]);
    let (code, _) = client
        .create("pods", pod("dup", json!({}), containers.clone()))
        .await;
    assert_eq!(code, 201);
    let (code, body) = client
        .create("pods", pod("dup", json!({}), containers.clone()))
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let (code, body) = client
        .create("pods", pod("Bad_Name", json!({}), containers))
        .await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    let (code, body) = client
        .create(
            "pods",
            json!({"metadata": {"name": "x"}, "spec": {"containers": "nope"}}),
        )
        .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let (code, body) = client.get("pods/absent").await;
    assert_eq!((code, body["kind"].as_str()), (404, Some("Status")));
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed (.ci/run installs it)"))
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_faults_close_the_connection_before_or_after_the_request_is_carried_out() {
    use podrunner_testkit::ConnectionFault;
    let kube = KubernetesStandIn::start(1, 4.0).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}});
    let url = format!("{}/api/v1/namespaces/ns/secrets", kube.url());
    kube.fault("POST", "/secrets", ConnectionFault::DropBeforeHandling);
    let error = client.post(&url).json(&secret).send().await.unwrap_err();
    assert!(error.is_request(), "{error:?}");
    assert!(
        kube.object("Secret", "ns", "s1").is_none(),
        "not carried out"
    );
    kube.fault("POST", "/secrets", ConnectionFault::DropAfterHandling);
    let error = client.post(&url).json(&secret).send().await.unwrap_err();
    assert!(error.is_request(), "{error:?}");
    assert!(kube.object("Secret", "ns", "s1").is_some(), "carried out");
    kube.fault("POST", "/secrets", ConnectionFault::EtcdTimeout);
    let response = client.post(&url).json(&secret).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "etcdserver: request timed out");
    // Faults are used once: the next request is answered (409: it exists).
    let response = client.post(&url).json(&secret).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 409);
}

/// `exec` over WebSocket as kubectl and client libraries speak it (`v5.channel.k8s.io`).
#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_a_command_in_the_container_over_websocket() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let sleeper = json!([{"name": "build", "image": "debian:12",
        "command": ["/bin/sh", "-c", "echo inside > /tmp/marker; exec sleep 60"]}]);
    client
        .create("pods", pod("target", json!({}), sleeper))
        .await;
    client.wait_pod("target", |p| phase(p) == "Running").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let script =
        "cat /tmp/marker; echo to-stderr >&2; read line; echo \"got $line\"; echo $$; exit 3";
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("command", "/bin/sh"),
            ("command", "-c"),
            ("command", script),
            ("container", "build"),
            ("stdin", "true"),
            ("stdout", "true"),
            ("stderr", "true"),
        ])
        .finish();
    let url = format!(
        "{}/api/v1/namespaces/{NS}/pods/target/exec?{query}",
        kube.url().replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    socket
        .send(Message::Binary([&[0u8][..], b"hello\n"].concat().into()))
        .await
        .unwrap();
    socket
        .send(Message::Binary(vec![255u8, 0].into()))
        .await
        .unwrap();
    let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Binary(bytes) = message {
            match bytes.first() {
                Some(1) => stdout.extend_from_slice(&bytes[1..]),
                Some(2) => stderr.extend_from_slice(&bytes[1..]),
                Some(3) => status = Some(serde_json::from_slice::<Value>(&bytes[1..]).unwrap()),
                _ => {}
            }
        }
    }
    let stdout = String::from_utf8(stdout).unwrap();
    // It ran in the container: its file system, its PID namespace, our stdin.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["inside", "got hello"], "{stdout}");
    assert!(
        lines[2].parse::<u32>().unwrap() < 100,
        "a PID of the pod: {stdout}"
    );
    assert_eq!(String::from_utf8(stderr).unwrap(), "to-stderr\n");
    let status = status.expect("a Status on channel 3");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");
    assert!(
        kube.requests()
            .iter()
            .any(|r| r.method == "GET" && r.uri.contains("/pods/target/exec")),
        "recorded"
    );
}

/// Creates `pod` (a valid pod changed by `change`) and returns the answer.
async fn create_changed(
    client: &Client,
    name: &str,
    change: impl FnOnce(&mut Value),
) -> (u16, Value) {
    let mut body = json!({
        "metadata": {"name": name, "labels": {"app": "x"}, "annotations": {"example.com/a": "b"}},
        "spec": {
            "restartPolicy": "Never", "activeDeadlineSeconds": 60,
            "nodeSelector": {"kubernetes.io/arch": "amd64"},
            "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["redis", "db.local"]}],
            "initContainers": [{"name": "podrunner-init", "image": "debian:12", "command": ["/bin/true"]}],
            "containers": [
                {"name": "build", "image": "debian:12", "command": ["/bin/true"],
                 "env": [{"name": "CI_JOB_ID", "value": "1"}],
                 "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "svc-0", "image": "debian:12", "command": ["/bin/true"]},
            ],
        },
    });
    change(&mut body);
    client.create("pods", body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_the_api_server_would_refuse_get_its_422_invalid() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let (code, body) = create_changed(&client, "valid", |_| {}).await;
    assert_eq!(code, 201, "{body}");

    // Each case: a change of the valid pod, and the message the API server gives.
    type Change = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "svc-name",
            Box::new(|p| p["spec"]["containers"][1]["name"] = json!("bitnami__redis")),
            "Pod \"svc-name\" is invalid: spec.containers[1].name: Invalid value: \"bitnami__redis\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        ),
        (
            "dup-name",
            Box::new(|p| p["spec"]["containers"][1]["name"] = json!("build")),
            "Pod \"dup-name\" is invalid: spec.containers[1].name: Duplicate value: \"build\"",
        ),
        (
            "dup-init",
            Box::new(|p| p["spec"]["containers"][1]["name"] = json!("podrunner-init")),
            "Pod \"dup-init\" is invalid: spec.containers[1].name: Duplicate value: \"podrunner-init\"",
        ),
        (
            "label-key",
            Box::new(|p| p["metadata"]["labels"] = json!({"team name": "x"})),
            "Pod \"label-key\" is invalid: metadata.labels: Invalid value: \"team name\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName' or 'my.name' or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
        ),
        (
            "label-value",
            Box::new(|p| p["metadata"]["labels"] = json!({"team": "a b"})),
            "Pod \"label-value\" is invalid: metadata.labels: Invalid value: \"a b\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue' or 'my_value' or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        ),
        (
            "annotation-key",
            Box::new(|p| p["metadata"]["annotations"] = json!({"a/b/c": "x"})),
            "Pod \"annotation-key\" is invalid: metadata.annotations: Invalid value: \"a/b/c\": a valid label key must consist of alphanumeric characters",
        ),
        (
            "annotation-size",
            Box::new(|p| p["metadata"]["annotations"] = json!({"big": "x".repeat(256 * 1024)})),
            "Pod \"annotation-size\" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes",
        ),
        (
            "node-selector",
            Box::new(|p| p["spec"]["nodeSelector"] = json!({"pool": "ci runners"})),
            "Pod \"node-selector\" is invalid: spec.nodeSelector: Invalid value: \"ci runners\": a valid label must be",
        ),
        (
            "request-limit",
            Box::new(|p| {
                p["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("1500m")
            }),
            "Pod \"request-limit\" is invalid: spec.containers[0].resources.requests: Invalid value: \"1500m\": must be less than or equal to cpu limit of 1",
        ),
        (
            "negative",
            Box::new(|p| {
                p["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("-1Gi")
            }),
            "Pod \"negative\" is invalid: [spec.containers[0].resources.limits[memory]: Invalid value: \"-1Gi\": must be greater than or equal to 0",
        ),
        (
            "host-alias",
            Box::new(|p| p["spec"]["hostAliases"][0]["hostnames"][0] = json!("bitnami__redis")),
            "Pod \"host-alias\" is invalid: spec.hostAliases[0].hostnames[0]: Invalid value: \"bitnami__redis\": a lowercase RFC 1123 subdomain must consist of",
        ),
        (
            "host-ip",
            Box::new(|p| p["spec"]["hostAliases"][0]["ip"] = json!("localhost")),
            "Pod \"host-ip\" is invalid: spec.hostAliases[0].ip: Invalid value: \"localhost\": must be a valid IP address",
        ),
        (
            "env-name",
            Box::new(|p| p["spec"]["containers"][0]["env"][0]["name"] = json!("A=B")),
            "Pod \"env-name\" is invalid: spec.containers[0].env[0].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='",
        ),
        (
            "deadline-zero",
            Box::new(|p| p["spec"]["activeDeadlineSeconds"] = json!(0)),
            "Pod \"deadline-zero\" is invalid: spec.activeDeadlineSeconds: Invalid value: 0: must be between 1 and 2147483647, inclusive",
        ),
        (
            "deadline-huge",
            Box::new(|p| p["spec"]["activeDeadlineSeconds"] = json!(2_147_483_648_i64)),
            "Pod \"deadline-huge\" is invalid: spec.activeDeadlineSeconds: Invalid value: 2147483648: must be between 1 and 2147483647, inclusive",
        ),
        (
            "volume-name",
            Box::new(|p| p["spec"]["volumes"] = json!([{"name": "cache_my-app", "emptyDir": {}}])),
            "Pod \"volume-name\" is invalid: spec.volumes[0].name: Invalid value: \"cache_my-app\": a lowercase RFC 1123 label",
        ),
        (
            "volume-dup",
            Box::new(|p| {
                p["spec"]["volumes"] =
                    json!([{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}])
            }),
            "Pod \"volume-dup\" is invalid: spec.volumes[1].name: Duplicate value: \"v\"",
        ),
        (
            "two-errors",
            Box::new(|p| {
                p["spec"]["containers"][1]["name"] = json!("build");
                p["spec"]["activeDeadlineSeconds"] = json!(-5);
            }),
            "Pod \"two-errors\" is invalid: [spec.containers[1].name: Duplicate value: \"build\", spec.activeDeadlineSeconds: Invalid value: -5: must be between 1 and 2147483647, inclusive]",
        ),
    ];
    for (name, change, message) in cases {
        let (code, body) = create_changed(&client, name, change).await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (422, Some("Invalid")),
            "{name}: {body}"
        );
        let text = body["message"].as_str().unwrap_or_default();
        assert!(
            text.starts_with(message),
            "{name}: {text}\nexpected: {message}"
        );
        assert_eq!(body["details"]["name"], name);
        assert!(
            body["details"]["causes"]
                .as_array()
                .is_some_and(|c| !c.is_empty()),
            "{name}: {body}"
        );
        // Nothing was stored.
        assert_eq!(client.get(&format!("pods/{name}")).await.0, 404, "{name}");
    }
    // A malformed quantity fails decoding, before validation.
    let (code, body) = create_changed(&client, "quantity", |p| {
        p["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("lots");
    })
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("BadRequest")),
        "{body}"
    );
    // Secrets are named as pods are.
    let (code, body) = client
        .create(
            "secrets",
            json!({"metadata": {"name": "spec", "labels": {"bad key!": "x"}}, "data": {}}),
        )
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (422, Some("Invalid")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().starts_with(
            "Secret \"spec\" is invalid: metadata.labels: Invalid value: \"bad key!\""
        ),
        "{body}"
    );
}

/// RBAC: once a Role is loaded, a ServiceAccount gets exactly what its bindings grant and the
/// real 403 `Status` otherwise; the admin token (system:masters) keeps everything; an unknown
/// token is 401.
#[tokio::test]
async fn rbac_grants_what_the_bindings_say_and_answers_the_real_forbidden() {
    let kube = KubernetesStandIn::start(1, 4.0).await;
    for object in [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "jobs", "namespace": NS},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "create"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "jobs", "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "jobs"},
               "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": "ci"}]}),
    ] {
        kube.load_rbac(&object).unwrap();
    }
    let token = kube.service_account_token("ci", "runner");
    let http = reqwest::Client::new();
    let url = kube.url().to_owned();
    let get = |path: String, token: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http
                .get(format!("{url}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let code = response.status().as_u16();
            (code, response.json::<Value>().await.unwrap())
        }
    };
    let (code, _) = get(format!("/api/v1/namespaces/{NS}/pods"), token.clone()).await;
    assert_eq!(code, 200);
    let (code, status) = get(format!("/api/v1/namespaces/{NS}/secrets"), token.clone()).await;
    assert_eq!(code, 403);
    assert_eq!(
        status["message"],
        format!(
            "secrets is forbidden: User \"system:serviceaccount:ci:runner\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{NS}\""
        )
    );
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(status["details"]["kind"], "secrets");
    let (code, status) = get(format!("/api/v1/namespaces/{NS}/secrets/x"), token.clone()).await;
    assert_eq!(code, 403);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("secrets \"x\" is forbidden: User \"system:serviceaccount:ci:runner\" cannot get resource"),
        "{status}"
    );
    let (code, _) = get("/api/v1/namespaces/elsewhere/pods".into(), token.clone()).await;
    assert_eq!(code, 403, "a RoleBinding grants only in its namespace");
    let (code, status) = get("/api/v1/pods".into(), token.clone()).await;
    assert_eq!(code, 403);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .ends_with("at the cluster scope"),
        "{status}"
    );
    let (code, _) = get(
        format!("/api/v1/namespaces/{NS}/secrets"),
        "stand-in-token".into(),
    )
    .await;
    assert_eq!(code, 200, "system:masters is allowed everything");
    let (code, status) = get(format!("/api/v1/namespaces/{NS}/pods"), "made-up".into()).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (401, Some("Unauthorized"))
    );
    let decisions: Vec<_> = kube
        .authorizations()
        .into_iter()
        .filter(|a| a.user == "system:serviceaccount:ci:runner")
        .map(|a| (a.verb, a.resource, a.allowed))
        .collect();
    assert_eq!(decisions[0], ("list".into(), "pods".into(), true));
    assert_eq!(decisions[1], ("list".into(), "secrets".into(), false));
}

/// Container identity: the image's USER, or runAsUser/runAsGroup, really runs the process; a
/// root-owned 0400 Secret file is unreadable to a non-root user, 0444 is readable, and with
/// fsGroup the file is group-owned and group-readable; emptyDir is writable by anyone.
#[tokio::test(flavor = "multi_thread")]
async fn containers_run_as_their_user_and_secret_files_are_owned_as_the_kubelet_makes_them() {
    let kube = stand_in().await;
    kube.map_image("nonroot:1", Image::HostRoot);
    kube.set_image_user("nonroot:1", 1000, 1000);
    let client = Client::new(&kube);
    let (code, _) = client
        .create(
            "secrets",
            json!({"metadata": {"name": "spec"}, "data": {"job.json": "eyJoZWxsbyI6MX0="}}),
        )
        .await;
    assert_eq!(code, 201);
    let script = "id -u; id -g; stat -c '%a' /spec/job.json; cat /spec/job.json 2>/dev/null && echo read || echo unreadable; touch /builds/x && echo wrote";
    let cases = [
        // (pod, image, pod securityContext, defaultMode, expected output)
        (
            "image-user-0400",
            "nonroot:1",
            json!({}),
            0o400,
            "1000\n1000\n400\nunreadable\nwrote\n",
        ),
        (
            "image-user-0444",
            "nonroot:1",
            json!({}),
            0o444,
            "1000\n1000\n444\n{\"hello\":1}read\nwrote\n",
        ),
        (
            "run-as-user-0400",
            "debian:12",
            json!({"runAsUser": 2000}),
            0o400,
            "2000\n0\n400\nunreadable\nwrote\n",
        ),
        (
            "fs-group-0400",
            "debian:12",
            json!({"runAsUser": 2000, "runAsGroup": 2000, "fsGroup": 3000}),
            0o400,
            "2000\n2000\n440\n{\"hello\":1}read\nwrote\n",
        ),
        (
            "root-0400",
            "debian:12",
            json!({}),
            0o400,
            "0\n0\n400\n{\"hello\":1}read\nwrote\n",
        ),
    ];
    for (name, image, security, mode, _) in &cases {
        let mut body = pod(
            name,
            json!({}),
            json!([{"name": "build", "image": image, "command": ["/bin/sh", "-c", script],
                    "volumeMounts": [{"name": "spec", "mountPath": "/spec"},
                                     {"name": "builds", "mountPath": "/builds"}]}]),
        );
        body["spec"]["securityContext"] = security.clone();
        body["spec"]["volumes"] = json!([
            {"name": "spec", "secret": {"secretName": "spec", "defaultMode": mode}},
            {"name": "builds", "emptyDir": {}},
        ]);
        let (code, answer) = client.create("pods", body).await;
        assert_eq!(code, 201, "{answer}");
    }
    for (name, _, _, _, expected) in &cases {
        client
            .wait_pod(name, |p| matches!(phase(p), "Succeeded" | "Failed"))
            .await;
        assert_eq!(kube.logs(NS, name, "build"), *expected, "pod {name}");
    }
}

/// Watch history: after compaction a watch from an older resourceVersion gets the one 410
/// `Expired` event, and a pod deleted in the gap is missing from the relist; an outage ends
/// open watches and refuses new ones until it is over.
#[tokio::test(flavor = "multi_thread")]
async fn a_compacted_history_expires_old_watches_and_an_outage_ends_them() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let container =
        json!([{"name": "build", "image": "debian:12", "command": ["/bin/sleep", "30"]}]);
    for name in ["kept", "deleted"] {
        let mut body = pod(name, json!({}), container.clone());
        body["spec"]["terminationGracePeriodSeconds"] = json!(0);
        assert_eq!(client.create("pods", body).await.0, 201);
    }
    let (_, list) = client.get("pods").await;
    let old_rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    // An open watch ends with the outage; a new one is refused until it is over.
    let open = client
        .http
        .get(format!(
            "{}/pods?watch=true&resourceVersion={old_rv}",
            client.base
        ))
        .send()
        .await
        .unwrap();
    let outage = kube.watch_outage();
    let body = tokio::time::timeout(Duration::from_secs(5), open.text())
        .await
        .expect("the open watch ends with the outage")
        .unwrap();
    assert!(!body.contains("ERROR"), "{body}");
    let refused = client
        .http
        .get(format!(
            "{}/pods?watch=true&resourceVersion={old_rv}",
            client.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(client.delete("pods/deleted", Some(0)).await, 200);
    client.wait_gone("pods/deleted").await;
    kube.compact_watch_history();
    drop(outage);
    let expired = client
        .http
        .get(format!(
            "{}/pods?watch=true&resourceVersion={old_rv}",
            client.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expired.status().as_u16(),
        200,
        "the error comes inside the stream"
    );
    let text = tokio::time::timeout(Duration::from_secs(5), expired.text())
        .await
        .expect("an expired watch ends after its error")
        .unwrap();
    let event: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
    assert!(
        event["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("too old resource version: {old_rv} (")),
        "{event}"
    );
    let (_, relist) = client.get("pods").await;
    let names: Vec<&str> = relist["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kept"]);
}

/// An injected Fargate capacity shortage keeps a Fargate pod Pending with one Warning
/// FailedScheduling event from fargate-scheduler; once it ends, the pod is scheduled.
#[tokio::test(flavor = "multi_thread")]
async fn a_fargate_capacity_shortage_keeps_the_pod_pending_until_it_ends() {
    let kube = stand_in().await;
    kube.set_fargate_capacity_shortage(Some(podrunner_testkit::kubernetes::CAPACITY_UNAVAILABLE));
    let client = Client::new(&kube);
    let body = pod(
        "waits",
        json!({"use-fargate": "true"}),
        json!([{"name": "build", "image": "debian:12", "command": ["/bin/true"]}]),
    );
    assert_eq!(client.create("pods", body).await.0, 201);
    let mut events = Vec::new();
    for _ in 0..100 {
        events = client.events_of("waits").await;
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["reason"], "FailedScheduling");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["source"]["component"], "fargate-scheduler");
    assert_eq!(
        events[0]["message"],
        podrunner_testkit::kubernetes::CAPACITY_UNAVAILABLE
    );
    let (_, stored) = client.get("pods/waits").await;
    assert_eq!(phase(&stored), "Pending");
    assert!(stored["spec"]["nodeName"].is_null());
    kube.set_fargate_capacity_shortage(None);
    client.wait_pod("waits", |p| phase(p) == "Succeeded").await;
}

/// The Eviction API marks the pod `DisruptionTarget` (EvictionByEvictionAPI), then deletes it
/// with its grace period, and answers 201 Success.
#[tokio::test(flavor = "multi_thread")]
async fn an_eviction_marks_the_pod_disruption_target_then_deletes_it() {
    let kube = stand_in().await;
    let client = Client::new(&kube);
    let mut body = pod(
        "evicted",
        json!({}),
        json!([{"name": "build", "image": "debian:12", "command": ["/bin/sleep", "30"]}]),
    );
    body["spec"]["terminationGracePeriodSeconds"] = json!(1);
    assert_eq!(client.create("pods", body).await.0, 201);
    client.wait_pod("evicted", |p| phase(p) == "Running").await;
    let (code, status) = client
        .create(
            "pods/evicted/eviction",
            json!({"apiVersion": "policy/v1", "kind": "Eviction",
                   "metadata": {"name": "evicted", "namespace": NS}}),
        )
        .await;
    assert_eq!(
        (code, status["status"].as_str()),
        (201, Some("Success")),
        "{status}"
    );
    let (_, stored) = client.get("pods/evicted").await;
    assert!(
        !stored["metadata"]["deletionTimestamp"].is_null(),
        "{stored}"
    );
    let condition = stored["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DisruptionTarget")
        .cloned()
        .unwrap_or_else(|| panic!("{stored}"));
    assert_eq!(condition["reason"], "EvictionByEvictionAPI");
    assert_eq!(condition["message"], "Eviction API: evicting");
    client.wait_gone("pods/evicted").await;
    let (code, _) = client
        .create(
            "pods/evicted/eviction",
            json!({"apiVersion": "policy/v1", "kind": "Eviction"}),
        )
        .await;
    assert_eq!(code, 404);
}

/// PodSecurity admission: a `restricted` namespace refuses a pod that does not opt in, with
/// the admission plugin's message; a pod that does is admitted; `baseline` refuses only what
/// baseline forbids.
#[tokio::test(flavor = "multi_thread")]
async fn pod_security_admission_enforces_the_namespace_level() {
    let kube = stand_in().await;
    kube.set_namespace_labels(NS, &[("pod-security.kubernetes.io/enforce", "restricted")]);
    let client = Client::new(&kube);
    let plain = pod(
        "plain",
        json!({}),
        json!([{"name": "build", "image": "debian:12", "command": ["/bin/true"]}]),
    );
    let mut with_init = plain.clone();
    with_init["spec"]["initContainers"] =
        json!([{"name": "init", "image": "debian:12", "command": ["/bin/true"]}]);
    let (code, status) = client.create("pods", with_init).await;
    assert_eq!(code, 403, "{status}");
    assert_eq!(
        status["message"],
        "pods \"plain\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (containers \"init\", \"build\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (containers \"init\", \"build\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or containers \"init\", \"build\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or containers \"init\", \"build\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    let mut compliant = plain.clone();
    compliant["metadata"]["name"] = json!("compliant");
    compliant["spec"]["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}});
    compliant["spec"]["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    let (code, status) = client.create("pods", compliant).await;
    assert_eq!(code, 201, "{status}");
    kube.set_namespace_labels(NS, &[("pod-security.kubernetes.io/enforce", "baseline")]);
    let mut privileged = plain.clone();
    privileged["metadata"]["name"] = json!("privileged");
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    let (code, status) = client.create("pods", privileged).await;
    assert_eq!(code, 403, "{status}");
    assert_eq!(
        status["message"],
        "pods \"privileged\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"build\" must not set securityContext.privileged=true)"
    );
    assert_eq!(
        client.create("pods", plain).await.0,
        201,
        "baseline admits a plain pod"
    );
}
