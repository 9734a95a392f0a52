//! A client written by others against the Kubernetes stand-in: kubectl's everyday commands
//! (`get`, `describe`, `logs`, `exec`, `wait`, `label`, `annotate`, `apply`, `delete`,
//! `get -w`, `wait --for=condition=Ready`) with a kubeconfig the test writes. kubectl is
//! `PODRUNNER_KUBECTL`, else the first `kubectl` on `PATH` (`scripts/test` installs one when
//! none is there); without any the test says so and skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use podrunner_testkit::{Image, KubernetesStandIn};

fn kubectl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PODRUNNER_KUBECTL") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubectl"))
            .find(|candidate| candidate.is_file())
    })
}

/// Runs kubectl with `args` against `kubeconfig`; returns (success, stdout, stderr).
async fn run(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("kubectl {args:?} did not end within 60 s"))
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Like [`run`], failing the test unless kubectl succeeds; returns stdout.
async fn ok(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = run(kubectl, kubeconfig, args).await;
    assert!(
        success,
        "kubectl {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    stdout
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: hello
  namespace: ci
  labels:
    app: hello
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: debian:12
    command: ["/bin/sh", "-c", "echo hello from the pod; exec sleep 60"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_works_against_the_stand_in() {
    let Some(kubectl) = kubectl() else {
        eprintln!(
            "SKIPPED: no kubectl (set PODRUNNER_KUBECTL or put kubectl on PATH; scripts/test installs one)"
        );
        return;
    };
    let kube = KubernetesStandIn::start(1, 4.0).await;
    kube.map_image("debian:12", Image::HostRoot);
    kube.add_namespace("ci", &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = kube.write_kubeconfig(dir.path());
    let manifest = dir.path().join("pod.yaml");
    std::fs::write(&manifest, POD).unwrap();
    let manifest = manifest.to_str().unwrap();
    let k = |args: &'static [&'static str]| {
        let (kubectl, config) = (kubectl.clone(), config.clone());
        async move { ok(&kubectl, &config, args).await }
    };

    // get -w, from before the pod exists until it is deleted.
    let mut watch = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&config)
        .args(["get", "pods", "-n", "ci", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let out = ok(
        &kubectl,
        &config,
        &["apply", "--validate=false", "-f", manifest],
    )
    .await;
    assert_eq!(out.trim(), "pod/hello created");
    let out = k(&[
        "wait",
        "-n",
        "ci",
        "--for=jsonpath={.status.phase}=Running",
        "--timeout=30s",
        "pod/hello",
    ])
    .await;
    assert_eq!(out.trim(), "pod/hello condition met");
    let out = k(&["get", "pods", "-n", "ci"]).await;
    assert!(out.contains("NAME") && out.contains("hello"), "{out}");
    let out = k(&["get", "namespaces"]).await;
    assert!(out.contains("ci") && out.contains("kube-system"), "{out}");
    let out = k(&["describe", "pod", "hello", "-n", "ci"]).await;
    assert!(out.contains("Name:") && out.contains("hello"), "{out}");
    assert!(out.contains("Namespace:") && out.contains("ci"), "{out}");
    assert!(out.contains("Scheduled"), "the pod's events: {out}");
    let mut logs = String::new();
    for _ in 0..50 {
        logs = k(&["logs", "hello", "-n", "ci"]).await;
        if !logs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logs, "hello from the pod\n");
    let out = k(&[
        "exec",
        "hello",
        "-n",
        "ci",
        "--",
        "/bin/sh",
        "-c",
        "echo $((6 * 7))",
    ])
    .await;
    assert_eq!(out, "42\n");
    let (success, _, stderr) = run(
        &kubectl,
        &config,
        &["exec", "hello", "-n", "ci", "--", "/bin/false"],
    )
    .await;
    assert!(!success, "a failing command fails kubectl exec");
    assert!(stderr.contains("exit code 1"), "{stderr}");
    let out = k(&["label", "pod", "hello", "-n", "ci", "stage=test"]).await;
    assert_eq!(out.trim(), "pod/hello labeled");
    let out = k(&["annotate", "pod", "hello", "-n", "ci", "note=checked"]).await;
    assert_eq!(out.trim(), "pod/hello annotated");
    let out = k(&[
        "get",
        "pods",
        "-n",
        "ci",
        "-l",
        "stage=test",
        "-o",
        "jsonpath={.items[*].metadata.annotations.note}",
    ])
    .await;
    assert_eq!(out, "checked");
    let out = ok(
        &kubectl,
        &config,
        &["apply", "--validate=false", "-f", manifest],
    )
    .await;
    assert_eq!(out.trim(), "pod/hello unchanged");
    let out = k(&["delete", "pod", "hello", "-n", "ci"]).await;
    // kubectl 1.37 adds " from ci namespace".
    assert!(out.starts_with("pod \"hello\" deleted"), "{out}");
    assert!(kube.object("Pod", "ci", "hello").is_none());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = watch.start_kill();
    let output = watch.wait_with_output().await.unwrap();
    let watched = String::from_utf8_lossy(&output.stdout);
    assert!(
        watched.contains("ADDED") && watched.contains("hello"),
        "{watched}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(watched.contains("MODIFIED"), "{watched}");
    assert!(watched.contains("DELETED"), "{watched}");
}

const READY_AND_STUCK: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: ready
  namespace: ci
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: debian:12
    command: ["/bin/sleep", "60"]
---
apiVersion: v1
kind: Pod
metadata:
  name: stuck
  namespace: ci
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: registry.example.com/missing:1
    command: ["/bin/true"]
"#;

/// `kubectl wait --for=condition=Ready` reads the `Ready` condition the kubelet reports: met
/// once the pod's container runs, never for a pod whose image cannot be pulled.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_waits_for_the_ready_condition() {
    let Some(kubectl) = kubectl() else {
        eprintln!(
            "SKIPPED: no kubectl (set PODRUNNER_KUBECTL or put kubectl on PATH; scripts/test installs one)"
        );
        return;
    };
    let kube = KubernetesStandIn::start(1, 4.0).await;
    kube.map_image("debian:12", Image::HostRoot);
    let dir = tempfile::tempdir().unwrap();
    let config = kube.write_kubeconfig(dir.path());
    let manifest = dir.path().join("pods.yaml");
    std::fs::write(&manifest, READY_AND_STUCK).unwrap();
    let manifest = manifest.to_str().unwrap();
    ok(
        &kubectl,
        &config,
        &["apply", "--validate=false", "-f", manifest],
    )
    .await;
    let out = ok(
        &kubectl,
        &config,
        &[
            "wait",
            "-n",
            "ci",
            "--for=condition=Ready",
            "--timeout=30s",
            "pod/ready",
        ],
    )
    .await;
    assert_eq!(out.trim(), "pod/ready condition met");
    let out = ok(
        &kubectl,
        &config,
        &[
            "get",
            "pod",
            "ready",
            "-n",
            "ci",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"ContainersReady\")].status}",
        ],
    )
    .await;
    assert_eq!(out, "True");
    let (success, _, stderr) = run(
        &kubectl,
        &config,
        &[
            "wait",
            "-n",
            "ci",
            "--for=condition=Ready",
            "--timeout=3s",
            "pod/stuck",
        ],
    )
    .await;
    assert!(!success, "a pod that cannot pull its image is never Ready");
    assert!(stderr.contains("timed out"), "{stderr}");
    let out = ok(
        &kubectl,
        &config,
        &[
            "wait",
            "-n",
            "ci",
            "--for=condition=PodScheduled",
            "--timeout=30s",
            "pod/stuck",
        ],
    )
    .await;
    assert_eq!(out.trim(), "pod/stuck condition met");
}
