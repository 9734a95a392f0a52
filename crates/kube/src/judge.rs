//! What a job pod's state says about its job: pure functions of the Pod (and of the Fargate
//! scheduler's events about it), table-tested.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use podrunner_agent::TerminationReport;

use crate::executor::Outcome;
use crate::pull_policy::PullFailure;

/// How long a pod may report `ErrImagePull` before the job fails (the kubelet retries once
/// quickly; `ImagePullBackOff` fails at once).
const IMAGE_PULL_GRACE: Duration = Duration::from_secs(10);

/// The component EKS's Fargate scheduler writes its events as (fargate.md; the EKS user
/// guide's troubleshooting pages show `fargate-scheduler` events).
const FARGATE_SCHEDULER: &str = "fargate-scheduler";

/// What the Fargate scheduler's Warning events said about a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FargateSignals {
    /// The `FailedScheduling` message "Pod not supported on Fargate: …".
    pub(crate) unsupported: Option<String>,
    /// A capacity shortage ("Capacity is unavailable at this time…").
    pub(crate) capacity: Option<String>,
}

/// One Fargate scheduler event that matters to a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FargateEvent {
    /// Fargate cannot run the pod: it stays Pending forever.
    Unsupported(String),
    /// No capacity now: the pod waits, until `poll_timeout`.
    Capacity(String),
}

impl FargateEvent {
    /// Reads a Warning event's reason, reporting component and message.
    pub(crate) fn read(
        reason: Option<&str>,
        component: Option<&str>,
        message: &str,
    ) -> Option<Self> {
        if reason != Some("FailedScheduling") || component != Some(FARGATE_SCHEDULER) {
            return None;
        }
        if message.starts_with("Pod not supported on Fargate:") {
            Some(FargateEvent::Unsupported(message.to_owned()))
        } else if message
            .to_ascii_lowercase()
            .contains("capacity is unavailable")
        {
            Some(FargateEvent::Capacity(message.to_owned()))
        } else {
            None
        }
    }
}

impl FargateSignals {
    /// Takes in one event.
    pub(crate) fn apply(&mut self, event: FargateEvent) {
        match event {
            FargateEvent::Unsupported(message) => self.unsupported = Some(message),
            FargateEvent::Capacity(message) => self.capacity = Some(message),
        }
    }
}

/// Whether the Eviction API is deleting the pod (kubernetes
/// `pkg/registry/core/pod/storage/eviction.go` sets `DisruptionTarget`, reason
/// `EvictionByEvictionAPI`, before deleting it). On Fargate that is EKS patching the pod's
/// node (`awsdocs/amazon-eks-user-guide` `fargate-pod-patching.adoc`).
fn evicted(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status.conditions.iter().flatten().find(|c| {
        c.type_ == "DisruptionTarget"
            && c.status == "True"
            && c.reason.as_deref() == Some("EvictionByEvictionAPI")
    })?;
    let spec = pod.spec.as_ref();
    let on_fargate = spec.and_then(|s| s.scheduler_name.as_deref()) == Some(FARGATE_SCHEDULER)
        || spec
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| n.starts_with("fargate-"));
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    Some(if on_fargate {
        format!("pod {namespace}/{name} was evicted by Fargate (patching); retry the job")
    } else {
        format!(
            "pod {namespace}/{name} was evicted through the Eviction API (a node drain or scale-down); retry the job"
        )
    })
}

/// The failure for a pod Fargate cannot run, with the way out where there is one.
fn unsupported_on_fargate(message: &str) -> String {
    let hint = if message.contains("Privileged") {
        " (Fargate runs no privileged containers, so docker-in-docker cannot work: build images with kaniko or buildah, or route the job to EC2 nodes)"
    } else {
        ""
    };
    format!("Fargate cannot run this pod: {message}{hint}")
}

/// What the pod's state says about the job, if it says it is over.
pub(crate) fn judge(
    pod: &Pod,
    fargate: &FargateSignals,
    pull_error_since: &mut Option<tokio::time::Instant>,
) -> Option<Outcome> {
    let status = pod.status.as_ref()?;
    for condition in status.conditions.iter().flatten() {
        if condition.type_ == "PodScheduled"
            && condition.status == "False"
            && condition.reason.as_deref() == Some("POD_UNSUPPORTED_ON_FARGATE")
        {
            let message = condition
                .message
                .as_deref()
                .unwrap_or("POD_UNSUPPORTED_ON_FARGATE");
            return Some(Outcome::Failed(unsupported_on_fargate(message)));
        }
    }
    if let Some(message) = &fargate.unsupported {
        return Some(Outcome::Failed(unsupported_on_fargate(message)));
    }
    if let Some(why) = evicted(pod) {
        return Some(Outcome::Failed(why));
    }
    let statuses: Vec<&ContainerStatus> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    let mut pulling = false;
    for container in &statuses {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let message = waiting.message.clone().unwrap_or_default();
        let image = &container.image;
        match waiting.reason.as_deref() {
            Some("InvalidImageName") => {
                return Some(Outcome::Failed(format!(
                    "container {}: invalid image name {image:?}: {message}",
                    container.name
                )));
            }
            // Final: the pod's configuration names something missing. CreateContainerError
            // is the runtime's, and the kubelet retries it: the pod waits, up to poll_timeout.
            Some("CreateContainerConfigError") => {
                return Some(Outcome::Failed(format!(
                    "container {} cannot be created: {message}",
                    container.name
                )));
            }
            Some("ImagePullBackOff") => {
                return Some(Outcome::PullFailed(PullFailure {
                    container: container.name.clone(),
                    image: image.clone(),
                    message,
                }));
            }
            Some("ErrImagePull") => {
                pulling = true;
                let since = pull_error_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= IMAGE_PULL_GRACE {
                    return Some(Outcome::PullFailed(PullFailure {
                        container: container.name.clone(),
                        image: image.clone(),
                        message,
                    }));
                }
            }
            _ => {}
        }
    }
    if !pulling {
        *pull_error_since = None;
    }
    // The build container is the first container.
    let build = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "build");
    if let Some(terminated) = build.and_then(|b| b.state.as_ref()?.terminated.as_ref()) {
        let report: Option<TerminationReport> = terminated
            .message
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok());
        let reason = terminated.reason.clone().unwrap_or_default();
        let pod_reason = status
            .reason
            .as_deref()
            .map(|r| {
                format!(
                    "; pod {r}: {}",
                    status.message.as_deref().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let why = if reason == "OOMKilled" {
            format!(
                "the build container was killed for using more memory than its limit (OOMKilled, exit code {}){pod_reason}",
                terminated.exit_code
            )
        } else {
            format!(
                "the build container ended ({reason}, exit code {}) before the job reached a final state{pod_reason}",
                terminated.exit_code
            )
        };
        return Some(Outcome::BuildEnded { report, why });
    }
    // Init container failures and pod-level endings (eviction, deadline) before the build ends.
    for init in status.init_container_statuses.iter().flatten() {
        if let Some(terminated) = init.state.as_ref().and_then(|s| s.terminated.as_ref())
            && terminated.exit_code != 0
        {
            return Some(Outcome::Failed(format!(
                "init container {} failed (exit code {}): the agent could not be installed from {:?}",
                init.name, terminated.exit_code, init.image
            )));
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        return Some(Outcome::Failed(format!(
            "the pod failed: {} {}",
            status.reason.as_deref().unwrap_or_default(),
            status.message.as_deref().unwrap_or_default()
        )));
    }
    None
}

/// What the first waiting container waits for ("container build: ContainerCreating: …"), for
/// the `poll_timeout` failure of a scheduled pod that does not run.
pub(crate) fn waiting_message(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref().unwrap_or("Waiting");
            Some(match waiting.message.as_deref().filter(|m| !m.is_empty()) {
                Some(message) => format!("container {}: {reason}: {message}", c.name),
                None => format!("container {}: {reason}", c.name),
            })
        })
}

/// Whether the pod got past Pending (gitlab-runner's `waitForPodRunning` waits for that,
/// `executors/kubernetes/util.go` `isRunning`: Running, or already Succeeded/Failed).
pub(crate) fn has_run(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase != "Pending")
}

/// Why the pod is not scheduled yet, for the `poll_timeout` failure: a Fargate capacity
/// shortage first, else the `PodScheduled` condition's message.
pub(crate) fn scheduling_message(pod: &Pod, fargate: &FargateSignals) -> Option<String> {
    if let Some(shortage) = &fargate.capacity {
        return Some(format!("Fargate capacity shortage: {shortage}"));
    }
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone())
}

/// Fargate placed the pod: it carries `CapacityProvisioned`, or its node is a `fargate-` node
/// (awsdocs/amazon-eks-user-guide, "Fargate pod configuration").
pub(crate) fn on_fargate(pod: &Pod) -> bool {
    capacity_provisioned(pod).is_some()
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| n.starts_with("fargate-"))
}

/// The size Fargate gave the pod, from its `CapacityProvisioned` annotation ("0.25vCPU
/// 0.5GB"; awsdocs/amazon-eks-user-guide, "Fargate pod configuration"), as written.
pub(crate) fn capacity_provisioned(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get("CapacityProvisioned")
        .map(String::as_str)
}

/// Why pod `namespace/name` failed to run within `poll_timeout` (`seconds`): what its
/// containers wait for once it is scheduled, else why it is not scheduled yet.
pub(crate) fn not_running(
    pod: &Pod,
    fargate: &FargateSignals,
    namespace: &str,
    name: &str,
    seconds: u64,
) -> String {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    if scheduled {
        let why = waiting_message(pod)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        format!(
            "pod {namespace}/{name} was scheduled but not running within poll_timeout ({seconds}s){why}"
        )
    } else {
        let why = scheduling_message(pod, fargate)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        format!("pod {namespace}/{name} was not scheduled within poll_timeout ({seconds}s){why}")
    }
}

/// What one Warning event says about the pod it involves.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PodWarning {
    /// The pod's name (empty when the event names none).
    pub(crate) pod: String,
    /// What it tells of Fargate's scheduling of the pod, if anything.
    pub(crate) fargate: Option<FargateEvent>,
    /// The message for the job log while the pod waits, if it is news.
    pub(crate) message: Option<String>,
}

/// Reads a Warning event about a pod. The reporting component is `reportingComponent`, else
/// the older `source.component` (kubernetes `pkg/apis/core/types.go`, `Event`).
pub(crate) fn read_warning(event: &Event) -> PodWarning {
    let pod = event.involved_object.name.clone().unwrap_or_default();
    let message = event.message.clone().unwrap_or_default();
    let component = event
        .reporting_component
        .as_deref()
        .filter(|c| !c.is_empty())
        .or_else(|| event.source.as_ref().and_then(|s| s.component.as_deref()));
    let fargate = FargateEvent::read(event.reason.as_deref(), component, &message);
    // The spec Secret is created just after its pod: a kubelet that looked before then
    // retries; that is not news for the job log.
    let own_spec = format!("secret \"{pod}-spec\" not found");
    let message = (!message.is_empty() && !message.contains(&own_spec)).then_some(message);
    PodWarning {
        pod,
        fargate,
        message,
    }
}

#[cfg(test)]
mod tests;
