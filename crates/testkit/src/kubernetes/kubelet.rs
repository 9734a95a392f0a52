//! The kubelet of one pod: image pulls, volumes, `/etc/hosts`, init containers in order and
//! then the containers together, their statuses and events, and the pod's final phase. The
//! processes themselves are module `sandbox`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::images::{ImageEvent, Node, PullPolicy, default_pull_policy};
use super::sandbox::{start_container, supervise};
use super::store::wait_until_gone;
use super::{
    Image, Kind, Shared, event, identity, kubelet_snapshot, now, pod_conditions,
    pod_gone_or_deleting, update_pod,
};

/// Runtime handles of one pod on the kubelet.
#[derive(Default)]
pub(super) struct PodRuntime {
    /// Host PIDs of running containers, by container name.
    pub(super) pids: HashMap<String, u32>,
    /// Containers killed by an injected OOM.
    pub(super) oom_killed: Vec<String>,
    /// Why the kubelet stopped the pod (eviction, deadline), if it did.
    pub(super) stopped: Option<(String, String)>,
    /// Woken when the pod is deleted or stopped.
    pub(super) stop: Arc<Notify>,
    /// Containers the benchmark kubelet reports running (module `simulated_kubelet`).
    pub(super) simulated_running: usize,
}

/// Writes a status of the pod as the kubelet's status manager does: `change` applied, the
/// `startTime` of the first status kept (`updateStatusInternal` in
/// kubernetes `pkg/kubelet/status/status_manager.go`), and the kubelet's conditions
/// regenerated (module `pod_conditions`). The stand-in's kubelet writes its first status once
/// the pod's sandbox exists and tears the sandbox down when the pod ends, so the sandbox is
/// ready until the phase is terminal. Every status the kubelet writes goes through here.
pub(super) fn set_status(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    change: impl FnOnce(&mut Value),
) -> Option<Value> {
    update_pod(shared, namespace, name, uid, |p| {
        change(p);
        let now = now();
        if p["status"]["startTime"].is_null() {
            p["status"]["startTime"] = json!(now);
        }
        let terminal = matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        pod_conditions::generate(p, !terminal, &now);
    })
}

pub(super) fn container_status(name: &str, image: &str, state: Value) -> Value {
    json!({"name": name, "image": image, "imageID": "", "ready": state.get("running").is_some(), "restartCount": 0, "started": state.get("running").is_some(), "state": state})
}

fn valid_image_name(image: &str) -> bool {
    !image.is_empty()
        && !image
            .chars()
            .any(|c| c.is_ascii_uppercase() || c.is_whitespace())
        && !image.starts_with(['/', ':', '.'])
}

/// A container whose image cannot be pulled: container name, image, reason, message.
type PullFailure = (String, String, &'static str, String);

/// The image-pull decision for the pod's containers, made here only: an unparsable reference
/// is `InvalidImageName`; otherwise the kubelet's image manager decides by the container's
/// pull policy and the node's store (module `images`), pulling from the registry (the
/// [`Image`] map: unmapped or [`Image::PullFails`] fails). Returns the failures, the images
/// the containers run, and the kubelet's image events.
fn pull_failures<'a>(
    shared: &Shared,
    (namespace, name): (&str, &str),
    containers: impl Iterator<Item = &'a Container>,
    fargate: bool,
) -> (Vec<PullFailure>, HashMap<String, Image>, Vec<ImageEvent>) {
    let mut inner = shared.lock();
    let node_name = inner
        .objects
        .get(&(Kind::Pod, namespace.to_owned(), name.to_owned()))
        .and_then(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let node = if fargate {
        Node::Fargate
    } else {
        Node::Ec2(&node_name)
    };
    let registry = inner.images.clone();
    let mut pull_failures = Vec::new();
    let mut resolved = HashMap::new();
    let mut events = Vec::new();
    for container in containers {
        let image = container.image.clone().unwrap_or_default();
        if !valid_image_name(&image) {
            let message = format!(
                "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format"
            );
            // `events.FailedToInspectImage` of image_manager.go.
            events.push(("Warning", "InspectFailed", message.clone()));
            pull_failures.push((
                container.name.clone(),
                image.clone(),
                "InvalidImageName",
                message,
            ));
            continue;
        }
        // The API server defaulted the policy at create (`images::default_pod_pull_policies`).
        let policy = PullPolicy::effective(container.image_pull_policy.as_deref(), &image)
            .unwrap_or_else(|| default_pull_policy(&image));
        match inner
            .node_images
            .ensure(node, &image, policy, registry.get(&image))
        {
            Ok(ensured) => {
                events.extend(ensured.events);
                resolved.insert(image, ensured.image);
            }
            Err(failure) => {
                events.extend(failure.events);
                pull_failures.push((
                    container.name.clone(),
                    image,
                    failure.reason,
                    failure.message,
                ));
            }
        }
    }
    (pull_failures, resolved, events)
}

pub(super) async fn kubelet(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    pod: &Pod,
    stored: &Value,
    stop: &Arc<Notify>,
) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let init_containers: Vec<Container> = spec.init_containers.clone().unwrap_or_default();
    let containers: Vec<Container> = spec.containers.clone();
    let started = tokio::time::Instant::now();
    let deadline = spec
        .active_deadline_seconds
        .map(|s| started + Duration::from_secs(s as u64));
    // Images.
    let fargate = spec.scheduler_name.as_deref() == Some("fargate-scheduler");
    let (pull_failures, images, image_events) = pull_failures(
        shared,
        (namespace, name),
        init_containers.iter().chain(containers.iter()),
        fargate,
    );
    for (type_, reason, message) in &image_events {
        event(shared, namespace, stored, type_, reason, message, "kubelet");
    }
    if !pull_failures.is_empty() {
        let set = |reason: &'static str, failures: &[PullFailure]| {
            let failures = failures.to_vec();
            let init_names: Vec<String> = init_containers.iter().map(|c| c.name.clone()).collect();
            move |p: &mut Value| {
                let status_of = |c: &Value| {
                    let cname = c["name"].as_str().unwrap_or_default();
                    let image = c["image"].as_str().unwrap_or_default();
                    let state = match failures.iter().find(|f| f.0 == cname) {
                        // Nothing is pulled for these, so nothing backs off.
                        Some(f) if f.2 == "InvalidImageName" || f.2 == "ErrImageNeverPull" => {
                            json!({"waiting": {"reason": f.2, "message": f.3}})
                        }
                        Some(f) => {
                            json!({"waiting": {"reason": reason, "message": if reason == "ImagePullBackOff" { format!("Back-off pulling image \"{}\"", f.1) } else { f.3.clone() }}})
                        }
                        None => {
                            json!({"waiting": {"reason": if init_names.is_empty() { "ContainerCreating" } else { "PodInitializing" }}})
                        }
                    };
                    container_status(cname, image, state)
                };
                let init: Vec<Value> = p["spec"]["initContainers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(status_of)
                    .collect();
                let regular: Vec<Value> = p["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(status_of)
                    .collect();
                if !init.is_empty() {
                    p["status"]["initContainerStatuses"] = json!(init);
                }
                p["status"]["containerStatuses"] = json!(regular);
            }
        };
        set_status(
            shared,
            namespace,
            name,
            uid,
            set("ErrImagePull", &pull_failures),
        );
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        set_status(
            shared,
            namespace,
            name,
            uid,
            set("ImagePullBackOff", &pull_failures),
        );
        if pull_failures.iter().any(|f| f.2 == "ErrImagePull") {
            event(
                shared,
                namespace,
                stored,
                "Normal",
                "BackOff",
                "Back-off pulling image",
                "kubelet",
            );
        }
        wait_until_gone(shared, namespace, name, uid, stop).await;
        return;
    }
    let pod_dir = shared.work_dir.join("pods").join(uid);
    let _ = std::fs::create_dir_all(&pod_dir);
    let _ = std::fs::create_dir_all(shared.work_dir.join("logs"));
    // Like the kubelet, a volume that cannot be set up yet (a Secret created after the pod) is
    // retried until it can, with one FailedMount warning.
    let mut warned = false;
    let volumes = loop {
        match prepare_volumes(shared, namespace, name, spec, &pod_dir) {
            Ok(v) => break v,
            Err(message) => {
                if !warned {
                    event(
                        shared,
                        namespace,
                        stored,
                        "Warning",
                        "FailedMount",
                        &message,
                        "kubelet",
                    );
                    warned = true;
                }
                if pod_gone_or_deleting(shared, namespace, name, uid) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    kubelet_snapshot::refresh_downward_api(shared, namespace, name, uid, spec, &volumes);
    // /etc/hosts as the kubelet writes it: localhost, the pod's name, then hostAliases.
    let mut hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{name}\n");
    for alias in spec.host_aliases.iter().flatten() {
        hosts.push_str(&format!(
            "{}\t{}\n",
            alias.ip,
            alias.hostnames.clone().unwrap_or_default().join("\t")
        ));
    }
    let _ = std::fs::write(pod_dir.join("hosts"), hosts);
    // Init containers, in order.
    let init_names: Vec<String> = init_containers.iter().map(|c| c.name.clone()).collect();
    set_status(shared, namespace, name, uid, |p| {
        if !init_names.is_empty() {
            p["status"]["initContainerStatuses"] = json!(
                init_containers
                    .iter()
                    .map(|c| container_status(
                        &c.name,
                        c.image.as_deref().unwrap_or_default(),
                        json!({"waiting": {"reason": "PodInitializing"}})
                    ))
                    .collect::<Vec<_>>()
            );
        }
        p["status"]["containerStatuses"] = json!(containers.iter().map(|c| container_status(&c.name, c.image.as_deref().unwrap_or_default(), json!({"waiting": {"reason": if init_names.is_empty() {"ContainerCreating"} else {"PodInitializing"}}}))).collect::<Vec<_>>());
        p["status"]["startTime"] = json!(now());
    });
    for (index, container) in init_containers.iter().enumerate() {
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            return;
        }
        let snapshot = kubelet_snapshot::take(shared, namespace, name, &container.name).await;
        let run = start_container(
            shared, namespace, name, container, &images, &volumes, &pod_dir, &snapshot,
        );
        let exit_code = match run {
            Ok(child) => {
                supervise(
                    shared, namespace, name, uid, container, child, true, index, deadline, stop,
                    &pod_dir,
                )
                .await
            }
            Err(_) => 128,
        };
        if exit_code != 0 {
            let reason = shared
                .lock()
                .runtimes
                .get(uid)
                .and_then(|r| r.stopped.clone());
            finish_pod(shared, namespace, name, uid, reason);
            return;
        }
    }
    // Containers, together; the pod is Running once one of them runs.
    let mut tasks = Vec::new();
    for (index, container) in containers.iter().enumerate() {
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            break;
        }
        let snapshot = kubelet_snapshot::take(shared, namespace, name, &container.name).await;
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            break;
        }
        match start_container(
            shared, namespace, name, container, &images, &volumes, &pod_dir, &snapshot,
        ) {
            Ok(child) => {
                let shared = shared.clone();
                let (namespace, name, uid, container, stop, pod_dir) = (
                    namespace.to_owned(),
                    name.to_owned(),
                    uid.to_owned(),
                    container.clone(),
                    stop.clone(),
                    pod_dir.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    supervise(
                        &shared, &namespace, &name, &uid, &container, child, false, index,
                        deadline, &stop, &pod_dir,
                    )
                    .await
                }));
            }
            Err(message) => {
                let (cname, image) = (
                    container.name.clone(),
                    container.image.clone().unwrap_or_default(),
                );
                set_status(shared, namespace, name, uid, |p| {
                    p["status"]["containerStatuses"][index] = container_status(
                        &cname,
                        &image,
                        json!({"waiting": {"reason": "CreateContainerError", "message": message}}),
                    );
                });
                event(
                    shared,
                    namespace,
                    stored,
                    "Warning",
                    "Failed",
                    &format!("Error: {message}"),
                    "kubelet",
                );
            }
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let reason = shared
        .lock()
        .runtimes
        .get(uid)
        .and_then(|r| r.stopped.clone());
    finish_pod(shared, namespace, name, uid, reason);
}

/// Sets the pod's final phase from its container states.
pub(super) fn finish_pod(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    stopped: Option<(String, String)>,
) {
    set_status(shared, namespace, name, uid, |p| {
        let statuses = p["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let init = p["status"]["initContainerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let failed = statuses.iter().chain(init.iter()).any(|s| {
            s["state"]["terminated"]["exitCode"]
                .as_i64()
                .is_some_and(|c| c != 0)
                || s["state"].get("waiting").is_some()
        });
        p["status"]["phase"] = json!(if failed || stopped.is_some() {
            "Failed"
        } else {
            "Succeeded"
        });
        if let Some((reason, message)) = &stopped {
            p["status"]["reason"] = json!(reason);
            p["status"]["message"] = json!(message);
        }
    });
}

/// Host directories behind the pod's volumes, by volume name.
pub(super) fn prepare_volumes(
    shared: &Shared,
    namespace: &str,
    name: &str,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    pod_dir: &Path,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut volumes = HashMap::new();
    for volume in spec.volumes.iter().flatten() {
        let dir = pod_dir.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("volume {}: {e}", volume.name))?;
        if volume.empty_dir.is_some() {
            // Writable by any user, like the kubelet's emptyDir.
            let _ =
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777));
        } else if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.clone().unwrap_or_default();
            let secret = shared
                .lock()
                .objects
                .get(&(Kind::Secret, namespace.to_owned(), secret_name.clone()))
                .cloned();
            let Some(secret) = secret.and_then(|s| serde_json::from_value::<Secret>(s).ok()) else {
                return Err(format!(
                    "MountVolume.SetUp failed for volume \"{}\" : secret \"{secret_name}\" not found",
                    volume.name
                ));
            };
            let data = secret.data.unwrap_or_default();
            let items: Vec<(String, String)> = match &source.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            let mut files = Vec::new();
            for (key, path) in items {
                let Some(bytes) = data.get(&key) else {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume \"{}\" : references non-existent secret key: {key}",
                        volume.name
                    ));
                };
                std::fs::write(dir.join(&path), &bytes.0)
                    .map_err(|e| format!("volume {}: {e}", volume.name))?;
                files.push(dir.join(&path));
            }
            let mode = source.default_mode.unwrap_or(0o644) as u32;
            let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
            identity::own_secret_volume(&dir, &files, mode, fs_group)
                .map_err(|e| format!("volume {}: {e}", volume.name))?;
        } else if let Some(source) = &volume.downward_api {
            kubelet_snapshot::write_downward_api(
                shared,
                namespace,
                name,
                &volume.name,
                source,
                &dir,
            )?;
        } else {
            return Err(format!(
                "volume {}: the stand-in's kubelet mounts emptyDir, secret and downwardAPI volumes only",
                volume.name
            ));
        }
        volumes.insert(volume.name.clone(), dir);
    }
    Ok(volumes)
}

/// The downward API's value of `path` for `pod`: a missing label or annotation is empty.
pub(super) fn field_value(pod: &Value, path: &str) -> Option<String> {
    let metadata = &pod["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match path {
        "metadata.name" | "metadata.namespace" | "metadata.uid" => {
            Some(text(&metadata[path.trim_start_matches("metadata.")]))
        }
        _ => {
            let (map, key) = path
                .strip_prefix("metadata.labels['")
                .map(|rest| ("labels", rest))
                .or_else(|| {
                    path.strip_prefix("metadata.annotations['")
                        .map(|rest| ("annotations", rest))
                })?;
            let key = key.strip_suffix("']")?;
            Some(text(&metadata[map][key]))
        }
    }
}
