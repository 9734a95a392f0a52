//! A benchmark mode of the kubelet: it reports containers as the kubelet does, but runs no
//! process. Each init container completes at once (exit 0); each container runs for a set
//! time, then ends with exit 0 and the termination message its process would have written.
//! What the API server shows of the pod (container states, phase, events, the volumes it
//! waits for) is what the bubblewrap kubelet shows, so a client cannot tell; only nothing
//! runs, which lets one machine hold a thousand running job pods.
//!
//! Taken from the kubelet (kubernetes `pkg/kubelet`):
//! - the pod waits for its volumes: a Secret volume whose Secret does not exist yet is
//!   retried with one `FailedMount` warning (`pkg/kubelet/volumemanager`; the same code path
//!   as the process kubelet: `prepare_volumes`);
//! - init containers run in order before the containers (`computeInitContainerActions` in
//!   `pkg/kubelet/kuberuntime/kuberuntime_manager.go`), the phase is `Running` once a
//!   container runs and `Succeeded` once all ended with 0 (`getPhase` in
//!   `pkg/kubelet/kubelet_pods.go`);
//! - the termination message is what the process wrote to `terminationMessagePath`, at most
//!   `MaxContainerTerminationMessageLength` (4 KiB) read from the end of the file
//!   (`pkg/kubelet/kuberuntime/kuberuntime_container.go`, `getTerminationMessage` with
//!   `tail.ReadAtMost`; `pkg/kubelet/container/runtime.go`);
//! - a pod deleted while its containers run gets its grace period: the containers stop
//!   (SIGTERM, exit code 143 here, as a process that obeys it) and the pod goes once they
//!   have (`killPodWithSyncResult`); `activeDeadlineSeconds` stops the pod with
//!   `DeadlineExceeded` (`pkg/kubelet/active_deadline.go`).
//!
//! Not simulated: images (every image pulls), a container's own GitLab traffic (the job's
//! agent talks to GitLab; a manager does not need it), logs and exec.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{
    KubernetesStandIn, Shared, container_status, event, finish_pod, now, pod_gone_or_deleting,
    prepare_volumes, set_status,
};

/// The kubelet's `MaxContainerTerminationMessageLength`.
const MAX_TERMINATION_MESSAGE: usize = 4 * 1024;

/// What the simulated containers do.
#[derive(Clone, Debug, Default)]
pub struct SimulatedContainers {
    /// How long each (regular) container runs before it exits with 0, at most.
    pub run_for: Duration,
    /// What each container writes to its termination message path, by container name.
    pub termination_messages: BTreeMap<String, String>,
    /// Set (and `end` woken) when every running container is to exit now.
    ended: Arc<AtomicBool>,
    end: Arc<Notify>,
}

impl SimulatedContainers {
    /// Containers that run for `run_for` (or until ended) and leave these messages.
    pub fn new(run_for: Duration, termination_messages: BTreeMap<String, String>) -> Self {
        SimulatedContainers {
            run_for,
            termination_messages,
            ..SimulatedContainers::default()
        }
    }
}

impl KubernetesStandIn {
    /// From now on, the kubelet runs no process: pods' containers are reported as `containers`
    /// says (benchmark mode, module `simulated_kubelet`).
    pub fn simulate_containers(&self, containers: SimulatedContainers) {
        self.shared.lock().simulated = Some(containers);
    }

    /// Makes every simulated container exit now (with 0 and its message), and those started
    /// later exit at once.
    pub fn end_simulated_containers(&self) {
        if let Some(containers) = &self.shared.lock().simulated {
            containers.ended.store(true, Ordering::SeqCst);
            containers.end.notify_waiters();
        }
    }
}

/// The end of the file the process wrote, as the kubelet reads it.
fn termination_message(written: &str) -> String {
    let bytes = written.as_bytes();
    let start = bytes.len().saturating_sub(MAX_TERMINATION_MESSAGE);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Runs the pod's containers in simulation, from volume set-up to the pod's final phase.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    pod: &Pod,
    stored: &Value,
    stop: &Arc<Notify>,
    settings: SimulatedContainers,
) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let started = tokio::time::Instant::now();
    let deadline = spec
        .active_deadline_seconds
        .map(|s| started + Duration::from_secs(s.max(0) as u64));
    let pod_dir = shared.work_dir.join("pods").join(uid);
    let _ = std::fs::create_dir_all(&pod_dir);
    let mut warned = false;
    while let Err(message) = prepare_volumes(shared, namespace, name, spec, &pod_dir) {
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
    let init: Vec<Container> = spec.init_containers.clone().unwrap_or_default();
    let containers = spec.containers.clone();
    let status = |c: &Container, state: Value| {
        container_status(&c.name, c.image.as_deref().unwrap_or_default(), state)
    };
    let waiting = if init.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    set_status(shared, namespace, name, uid, |p| {
        if !init.is_empty() {
            p["status"]["initContainerStatuses"] = json!(
                init.iter()
                    .map(|c| status(c, json!({"waiting": {"reason": "PodInitializing"}})))
                    .collect::<Vec<_>>()
            );
        }
        p["status"]["containerStatuses"] = json!(
            containers
                .iter()
                .map(|c| status(c, json!({"waiting": {"reason": waiting}})))
                .collect::<Vec<_>>()
        );
        p["status"]["startTime"] = json!(now());
    });
    for (index, container) in init.iter().enumerate() {
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            return;
        }
        let at = now();
        set_status(shared, namespace, name, uid, |p| {
            p["status"]["initContainerStatuses"][index] =
                status(container, json!({"running": {"startedAt": at}}));
        });
        let message = settings
            .termination_messages
            .get(&container.name)
            .map(|m| termination_message(m));
        let mut terminated =
            json!({"exitCode": 0, "reason": "Completed", "startedAt": at, "finishedAt": now()});
        if let Some(message) = message.filter(|m| !m.is_empty()) {
            terminated["message"] = json!(message);
        }
        set_status(shared, namespace, name, uid, |p| {
            p["status"]["initContainerStatuses"][index] =
                status(container, json!({"terminated": terminated}));
        });
    }
    if pod_gone_or_deleting(shared, namespace, name, uid) {
        return;
    }
    // The containers run together; the pod is Running once they do.
    let at = now();
    {
        let mut inner = shared.lock();
        for container in &containers {
            inner.started.insert(
                (
                    namespace.to_owned(),
                    name.to_owned(),
                    container.name.clone(),
                ),
                std::time::SystemTime::now(),
            );
        }
        if let Some(runtime) = inner.runtimes.get_mut(uid) {
            runtime.simulated_running = containers.len();
        }
    }
    set_status(shared, namespace, name, uid, |p| {
        for (index, container) in containers.iter().enumerate() {
            p["status"]["containerStatuses"][index] =
                status(container, json!({"running": {"startedAt": at}}));
        }
        p["status"]["phase"] = json!("Running");
    });
    let until = tokio::time::Instant::now() + settings.run_for;
    let until = deadline.map_or(until, |d| d.min(until));
    let mut exit_code = 0;
    while tokio::time::Instant::now() < until {
        let ended = settings.end.notified();
        if settings.ended.load(Ordering::SeqCst) {
            break;
        }
        tokio::select! {
            () = stop.notified() => {}
            () = ended => break,
            () = tokio::time::sleep_until(until) => {}
        }
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            // The processes obey the SIGTERM of the deletion.
            exit_code = 143;
            break;
        }
    }
    let past_deadline = deadline.is_some_and(|d| d <= tokio::time::Instant::now());
    let stopped = (exit_code == 0 && past_deadline).then(|| {
        exit_code = 137;
        (
            "DeadlineExceeded".to_owned(),
            "Pod was active on the node longer than the specified deadline".to_owned(),
        )
    });
    if let Some(runtime) = shared.lock().runtimes.get_mut(uid) {
        runtime.simulated_running = 0;
        runtime.stopped = stopped.clone();
    }
    let finished = now();
    set_status(shared, namespace, name, uid, |p| {
        for (index, container) in containers.iter().enumerate() {
            let mut terminated = json!({
                "exitCode": exit_code,
                "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "startedAt": at,
                "finishedAt": finished,
            });
            // A process stopped early wrote no report.
            if exit_code == 0
                && let Some(message) = settings.termination_messages.get(&container.name)
                && !message.is_empty()
            {
                terminated["message"] = json!(termination_message(message));
            }
            p["status"]["containerStatuses"][index] =
                status(container, json!({"terminated": terminated}));
        }
    });
    finish_pod(shared, namespace, name, uid, stopped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_the_end_of_what_was_written() {
        assert_eq!(termination_message("short"), "short");
        let long = format!("{}{}", "a".repeat(10), "b".repeat(MAX_TERMINATION_MESSAGE));
        assert_eq!(
            termination_message(&long),
            "b".repeat(MAX_TERMINATION_MESSAGE)
        );
    }
}
