//! A container's process: bubblewrap with the image's root, volumes, `/etc/hosts`, the
//! termination-message file and the environment, then supervised to its exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{Image, Shared, container_status, field_value, identity, now, update_pod};

pub(super) fn log_path(shared: &Shared, namespace: &str, pod: &str, container: &str) -> PathBuf {
    shared
        .work_dir
        .join("logs")
        .join(format!("{namespace}_{pod}_{container}.log"))
}

pub(super) fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn start_container(
    shared: &Shared,
    namespace: &str,
    name: &str,
    container: &Container,
    images: &HashMap<String, Image>,
    volumes: &HashMap<String, PathBuf>,
    pod_dir: &Path,
    pod: &Value,
) -> Result<tokio::process::Child, String> {
    let image = images
        .get(container.image.as_deref().unwrap_or_default())
        .cloned()
        .ok_or("image vanished")?;
    let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
    argv.extend(container.args.clone().unwrap_or_default());
    if argv.is_empty() {
        return Err(format!(
            "container {}: no command specified (the stand-in's images have no entrypoint)",
            container.name
        ));
    }
    let mut command = identity::sandbox_for(shared, namespace, name, container);
    command.args([
        "--die-with-parent",
        "--unshare-pid",
        "--as-pid-1",
        "--unshare-ipc",
        "--unshare-uts",
    ]);
    // A pod's hostname is its name.
    command.args(["--hostname", name]);
    match &image {
        Image::HostRoot => {
            // A writable tmpfs root with the host's top-level entries bound read-only, so
            // mount points for volumes can be created anywhere at the top.
            command.args(["--tmpfs", "/"]);
            let entries = std::fs::read_dir("/").map_err(|e| format!("cannot list /: {e}"))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if matches!(name, "proc" | "dev" | "sys" | "tmp" | "run") {
                    continue;
                }
                let path = format!("/{name}");
                match std::fs::read_link(&path) {
                    Ok(target) => {
                        command.arg("--symlink").arg(target).arg(&path);
                    }
                    Err(_) => {
                        command.arg("--ro-bind").arg(&path).arg(&path);
                    }
                }
            }
            command.args(["--tmpfs", "/tmp"]);
        }
        Image::Files(files) => {
            command.args(["--tmpfs", "/"]);
            for (host, path) in files {
                command.arg("--ro-bind").arg(host).arg(path);
            }
            command.args(["--dir", "/tmp"]);
        }
        Image::PullFails(_) => return Err("image cannot be pulled".into()),
    }
    command.args(["--proc", "/proc", "--dev", "/dev"]);
    let hosts = pod_dir.join("hosts");
    if hosts.is_file() {
        command.arg("--ro-bind").arg(&hosts).arg("/etc/hosts");
    }
    for mount in container.volume_mounts.iter().flatten() {
        let Some(host) = volumes.get(&mount.name) else {
            return Err(format!(
                "container {}: volumeMount {} names no volume",
                container.name, mount.name
            ));
        };
        let flag = if mount.read_only == Some(true) {
            "--ro-bind"
        } else {
            "--bind"
        };
        command.arg(flag).arg(host).arg(&mount.mount_path);
    }
    let message_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    let message_file = pod_dir.join(format!("{}.termination-log", container.name));
    std::fs::write(&message_file, b"").map_err(|e| e.to_string())?;
    identity::termination_message_file(&message_file).map_err(|e| e.to_string())?;
    command.arg("--bind").arg(&message_file).arg(&message_path);
    if let Some(dir) = &container.working_dir {
        command.args(["--chdir", dir]);
    }
    command.arg("--").args(&argv);
    command.env_clear();
    command.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    command.env("HOSTNAME", name);
    command.env("KUBERNETES_SERVICE_HOST", "10.100.0.1");
    command.env("KUBERNETES_SERVICE_PORT", "443");
    // Like the kubelet, downward-API values are read once, from the pod as the kubelet had
    // it when it created the container (`kubelet_snapshot`).
    for var in container.env.iter().flatten() {
        match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let value = from
                    .field_ref
                    .as_ref()
                    .and_then(|field| field_value(pod, &field.field_path))
                    .ok_or_else(|| {
                        format!(
                            "container {}: env {}: the stand-in resolves only fieldRef to metadata.name, metadata.namespace, metadata.uid, metadata.labels['…'] and metadata.annotations['…']",
                            container.name, var.name
                        )
                    })?;
                command.env(&var.name, value);
            }
            (value, None) => {
                command.env(&var.name, value.clone().unwrap_or_default());
            }
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(shared, namespace, name, &container.name))
        .map_err(|e| e.to_string())?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    command
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    command.kill_on_drop(true);
    command
        .spawn()
        .map_err(|e| format!("cannot start bwrap: {e}"))
}

/// The host PID of bwrap's only child: the container's PID 1.
fn container_pid(bwrap: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{bwrap}/task/{bwrap}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn supervise(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &Container,
    mut child: tokio::process::Child,
    init: bool,
    index: usize,
    deadline: Option<tokio::time::Instant>,
    stop: &Arc<Notify>,
    pod_dir: &Path,
) -> i32 {
    let started_at = now();
    let image = container.image.clone().unwrap_or_default();
    let field = if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    // Wait until bwrap has started the container, so signals reach it.
    let bwrap = child.id().unwrap_or(0);
    let mut pid = None;
    for _ in 0..200 {
        pid = container_pid(bwrap);
        if pid.is_some() {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shared.lock().started.insert(
        (
            namespace.to_owned(),
            name.to_owned(),
            container.name.clone(),
        ),
        std::time::SystemTime::now(),
    );
    if let Some(pid) = pid {
        shared
            .lock()
            .runtimes
            .entry(uid.to_owned())
            .or_default()
            .pids
            .insert(container.name.clone(), pid);
    }
    let cname = container.name.clone();
    update_pod(shared, namespace, name, uid, |p| {
        p["status"][field][index] = container_status(
            &cname,
            &image,
            json!({"running": {"startedAt": started_at}}),
        );
        if !init {
            p["status"]["phase"] = json!("Running");
        }
    });
    let status = loop {
        let until_deadline =
            deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            status = child.wait() => break status.ok(),
            () = async { match until_deadline { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {
                {
                    let mut inner = shared.lock();
                    if let Some(runtime) = inner.runtimes.get_mut(uid) {
                        runtime.stopped.get_or_insert(("DeadlineExceeded".into(), "Pod was active on the node longer than the specified deadline".into()));
                        for pid in runtime.pids.values() {
                            signal(*pid, rustix::process::Signal::KILL);
                        }
                    }
                }
                break child.wait().await.ok();
            }
            () = stop.notified() => continue,
        }
    };
    let code = status.and_then(|s| s.code()).unwrap_or(137);
    let oom = {
        let mut inner = shared.lock();
        let runtime = inner.runtimes.entry(uid.to_owned()).or_default();
        runtime.pids.remove(&container.name);
        runtime.oom_killed.contains(&container.name)
    };
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let code = if oom { 137 } else { code };
    let mut message = std::fs::read(pod_dir.join(format!("{}.termination-log", container.name)))
        .unwrap_or_default();
    message.truncate(4096);
    let message = String::from_utf8_lossy(&message).into_owned();
    let finished_at = now();
    let cname = container.name.clone();
    update_pod(shared, namespace, name, uid, |p| {
        let mut terminated = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at});
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        p["status"][field][index] =
            container_status(&cname, &image, json!({"terminated": terminated}));
    });
    code
}
