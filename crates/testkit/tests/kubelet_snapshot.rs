//! The stand-in kubelet works from its copy of the pod: environment values are resolved once,
//! when the container is created (a switchable delay before it starts), and downward-API
//! volume files are rewritten on the kubelet's sync period.

use std::time::Duration;

use podrunner_testkit::{Image, KubernetesStandIn};
use serde_json::json;

const NS: &str = "gitlab-runner";

#[tokio::test(flavor = "multi_thread")]
async fn env_is_the_snapshot_and_the_downward_api_file_follows_the_pod() {
    let kube = KubernetesStandIn::start(1, 4.0).await;
    kube.map_image("debian:12", Image::HostRoot);
    kube.set_container_start_delay(Duration::from_secs(1));
    kube.set_downward_api_refresh(Duration::from_millis(200));
    let annotation = "metadata.annotations['example.com/note']";
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "snap", "annotations": {"example.com/note": "first"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "build", "image": "debian:12",
                "command": ["/bin/sh", "-c", "echo env=$NOTE; echo file=$(cat /live/note); sleep 1; echo file=$(cat /live/note)"],
                "env": [{"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": annotation}}}],
                "volumeMounts": [{"name": "live", "mountPath": "/live", "readOnly": true}],
            }],
            "volumes": [{"name": "live", "downwardAPI": {"items": [
                {"path": "note", "fieldRef": {"fieldPath": annotation}}
            ]}}],
        },
    });
    let http = reqwest::Client::new();
    let base = format!("{}/api/v1/namespaces/{NS}/pods", kube.url());
    let created = http.post(&base).json(&pod).send().await.unwrap();
    assert_eq!(created.status().as_u16(), 201);
    while !kube.snapshots().iter().any(|s| s.container == "build") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Changed after the snapshot, before the container starts.
    let patched = http
        .patch(format!("{base}/snap"))
        .header("content-type", "application/merge-patch+json")
        .body(json!({"metadata": {"annotations": {"example.com/note": "second"}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 200);
    let snapshot = kube
        .snapshots()
        .into_iter()
        .find(|s| s.container == "build")
        .unwrap();
    assert_eq!(snapshot.annotations["example.com/note"], "first");
    let mut logs = String::new();
    for _ in 0..200 {
        logs = kube.logs(NS, "snap", "build");
        if logs.lines().count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(
        lines[0], "env=first",
        "the environment is the snapshot's: {logs}"
    );
    assert_eq!(
        lines[2], "file=second",
        "the volume follows the pod: {logs}"
    );
}
