//! The schedulers: EC2 nodes by CPU requests (`default-scheduler`) and Fargate profiles,
//! sizes and refusals (the Fargate admission webhook and `fargate-scheduler`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::kubelet::kubelet;
use super::store::wait_until_gone;
use super::{
    FargateProfile, Kind, PodRuntime, Shared, event, fargate_capacity, now, pod_gone_or_deleting,
    remove, simulated_kubelet, update_pod,
};

fn wildcard(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// The profile (first by name) whose selector matches the pod, unless the pod asks for EC2.
pub(super) fn fargate_profile(
    profiles: &[FargateProfile],
    namespace: &str,
    pod: &Value,
) -> Option<String> {
    if pod["metadata"]["annotations"]["eks.amazonaws.com/compute-type"].as_str() == Some("ec2") {
        return None;
    }
    let labels = pod["metadata"]["labels"].as_object();
    let mut matching: Vec<&FargateProfile> = profiles
        .iter()
        .filter(|p| {
            wildcard(&p.namespace, namespace)
                && p.labels.iter().all(|(k, v)| {
                    labels.is_some_and(|l| {
                        l.iter().any(|(lk, lv)| {
                            wildcard(k, lk) && lv.as_str().is_some_and(|lv| wildcard(v, lv))
                        })
                    })
                })
        })
        .collect();
    matching.sort_by(|a, b| a.name.cmp(&b.name));
    matching.first().map(|p| p.name.clone())
}

/// Kubernetes quantities as floating point, enough for scheduling and sizing.
pub(super) fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0f64.powi(4)),
        ("Pi", 1024.0f64.powi(5)),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("Ei", 1024.0f64.powi(6)),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    text.parse().ok()
}

/// The pod's effective request of `resource` (max over init containers vs sum of containers).
fn pod_request(pod: &Pod, resource: &str) -> f64 {
    let get = |c: &Container| {
        c.resources
            .as_ref()
            .and_then(|r| {
                r.requests
                    .as_ref()
                    .and_then(|m| m.get(resource))
                    .or(r.limits.as_ref().and_then(|m| m.get(resource)))
            })
            .and_then(|q| quantity(&q.0))
            .unwrap_or(0.0)
    };
    let spec = pod.spec.as_ref();
    let sum: f64 = spec
        .map(|s| s.containers.iter().map(get).sum())
        .unwrap_or(0.0);
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|cs| cs.iter().map(get).fold(0.0, f64::max))
        .unwrap_or(0.0);
    sum.max(init)
}

/// Fargate's size for requests of `cpu` cores and `memory` bytes, as `CapacityProvisioned`.
fn fargate_size(cpu: f64, memory: f64) -> Option<String> {
    let memory_gb = memory / (1024.0 * 1024.0 * 1024.0) + 0.25;
    let sizes: [(f64, Vec<f64>); 7] = [
        (0.25, vec![0.5, 1.0, 2.0]),
        (0.5, vec![1.0, 2.0, 3.0, 4.0]),
        (1.0, (2..=8).map(f64::from).collect()),
        (2.0, (4..=16).map(f64::from).collect()),
        (4.0, (8..=30).map(f64::from).collect()),
        (8.0, (16..=60).step_by(4).map(f64::from).collect()),
        (16.0, (32..=120).step_by(8).map(f64::from).collect()),
    ];
    for (vcpu, memories) in sizes {
        if vcpu + 1e-9 < cpu {
            continue;
        }
        if let Some(gb) = memories.into_iter().find(|gb| *gb + 1e-9 >= memory_gb) {
            return Some(format!("{vcpu}vCPU {gb}GB"));
        }
    }
    None
}

/// Why Fargate refuses this pod, if it does.
fn fargate_unsupported(pod: &Pod) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return problems;
    };
    if spec.host_network == Some(true) {
        problems.push("fields not supported: HostNetwork".to_owned());
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            problems.push(format!("volumes not supported: {}", volume.name));
        }
    }
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for container in all {
        let Some(security) = container.security_context.as_ref() else {
            continue;
        };
        if security.privileged == Some(true) {
            problems.push("invalid SecurityContext fields: Privileged".to_owned());
        }
        if let Some(added) = security.capabilities.as_ref().and_then(|c| c.add.as_ref())
            && !added.is_empty()
        {
            problems.push(format!(
                "invalid SecurityContext fields: Capabilities added: {}",
                added
                    .iter()
                    .map(|c| format!("CAP_{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    problems
}

/// Leaves the pod Pending: `PodScheduled` false with `reason`, and a FailedScheduling event
/// from the scheduler `source`.
fn failed_scheduling(
    shared: &Shared,
    (namespace, name, uid): (&str, &str, &str),
    stored: &Value,
    reason: &str,
    message: &str,
    source: &str,
) {
    update_pod(shared, namespace, name, uid, |p| {
        p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": reason, "message": message, "lastTransitionTime": now()}]);
    });
    event(
        shared,
        namespace,
        stored,
        "Warning",
        "FailedScheduling",
        message,
        source,
    );
}

/// Scheduler and kubelet for one pod, from creation to its end.
pub(super) async fn run_pod(shared: Shared, namespace: String, name: String, uid: String) {
    let stop = Arc::new(Notify::new());
    shared.lock().runtimes.insert(
        uid.clone(),
        PodRuntime {
            stop: stop.clone(),
            ..PodRuntime::default()
        },
    );
    schedule_and_run(&shared, &namespace, &name, &uid, &stop).await;
    // A pod being deleted disappears once its containers are gone.
    let mut inner = shared.lock();
    inner.runtimes.remove(&uid);
    inner.ec2_used.remove(&uid);
    if let Some(pod) = inner
        .objects
        .get(&(Kind::Pod, namespace.clone(), name.clone()))
        .cloned()
        && pod["metadata"]["uid"].as_str() == Some(uid.as_str())
        && !pod["metadata"]["deletionTimestamp"].is_null()
    {
        remove(&shared, &mut inner, Kind::Pod, &namespace, pod);
    }
}

async fn schedule_and_run(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    stop: &Arc<Notify>,
) {
    let Some(stored) = shared
        .lock()
        .objects
        .get(&(Kind::Pod, namespace.to_owned(), name.to_owned()))
        .cloned()
    else {
        return;
    };
    let Ok(pod) = serde_json::from_value::<Pod>(stored.clone()) else {
        return;
    };
    let cpu = pod_request(&pod, "cpu");
    let memory = pod_request(&pod, "memory");
    let on_fargate = stored["spec"]["schedulerName"].as_str() == Some("fargate-scheduler");
    // Scheduling.
    if on_fargate {
        let mut problems = fargate_unsupported(&pod);
        let size = fargate_size(cpu, memory);
        if size.is_none() {
            problems.push(format!(
                "the pod's requests ({cpu} vCPU, {memory} bytes) exceed the largest Fargate size"
            ));
        }
        if !problems.is_empty() {
            let message = format!("Pod not supported on Fargate: {}", problems.join(", "));
            failed_scheduling(
                shared,
                (namespace, name, uid),
                &stored,
                "POD_UNSUPPORTED_ON_FARGATE",
                &message,
                "fargate-scheduler",
            );
            wait_until_gone(shared, namespace, name, uid, stop).await;
            return;
        }
        if !fargate_capacity::wait_for_capacity(shared, (namespace, name, uid), &stored, stop).await
        {
            return;
        }
        let ip = {
            let mut inner = shared.lock();
            inner.next_ip += 1;
            format!(
                "192-168-{}-{}",
                inner.next_ip / 250,
                inner.next_ip % 250 + 2
            )
        };
        let node = format!("fargate-ip-{ip}.us-east-1.compute.internal");
        let size = size.unwrap_or_default();
        update_pod(shared, namespace, name, uid, |p| {
            p["metadata"]["annotations"]["CapacityProvisioned"] = json!(size);
            p["spec"]["nodeName"] = json!(node);
            p["status"]["podIP"] = json!(ip.replace('-', "."));
            p["status"]["hostIP"] = json!(ip.replace('-', "."));
            p["status"]["conditions"] =
                json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]);
        });
        event(
            shared,
            namespace,
            &stored,
            "Normal",
            "Scheduled",
            &format!("Successfully assigned {namespace}/{name} to {node}"),
            "fargate-scheduler",
        );
        // The micro-VM boots before its kubelet runs anything.
        let boot = shared.lock().fargate_boot;
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(boot) => {}
        }
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            return;
        }
    } else {
        let mut warned = false;
        loop {
            let chosen = {
                let mut inner = shared.lock();
                let per_node = inner.ec2_cpu_millis;
                let mut used = vec![0.0; inner.ec2_nodes];
                for (index, millis) in inner.ec2_used.values() {
                    if let Some(slot) = used.get_mut(*index) {
                        *slot += millis;
                    }
                }
                let index = used
                    .iter()
                    .position(|u| u + cpu * 1000.0 <= per_node + 1e-6);
                if let Some(index) = index {
                    inner.ec2_used.insert(uid.to_owned(), (index, cpu * 1000.0));
                }
                index
            };
            if let Some(index) = chosen {
                let node = format!("ip-10-0-0-{}.ec2.internal", index + 10);
                update_pod(shared, namespace, name, uid, |p| {
                    p["spec"]["nodeName"] = json!(node);
                    p["status"]["podIP"] = json!(format!("10.0.1.{}", index + 10));
                    p["status"]["hostIP"] = json!(format!("10.0.0.{}", index + 10));
                    p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]);
                });
                event(
                    shared,
                    namespace,
                    &stored,
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {namespace}/{name} to {node}"),
                    "default-scheduler",
                );
                break;
            }
            if !warned {
                let nodes = shared.lock().ec2_nodes;
                let message = format!(
                    "0/{nodes} nodes are available: {nodes} Insufficient cpu. preemption: 0/{nodes} nodes are available: {nodes} No preemption victims found for incoming pod."
                );
                failed_scheduling(
                    shared,
                    (namespace, name, uid),
                    &stored,
                    "Unschedulable",
                    &message,
                    "default-scheduler",
                );
                warned = true;
            }
            tokio::select! {
                () = stop.notified() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if pod_gone_or_deleting(shared, namespace, name, uid) {
                return;
            }
        }
    };
    let simulated = shared.lock().simulated.clone();
    match simulated {
        Some(containers) => {
            simulated_kubelet::run(
                shared, namespace, name, uid, &pod, &stored, stop, containers,
            )
            .await
        }
        None => kubelet(shared, namespace, name, uid, &pod, &stored, stop).await,
    }
}
