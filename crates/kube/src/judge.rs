//! What a job pod's state says about its job: pure functions of the Pod (and of the Fargate
//! scheduler's events about it), table-tested.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use podrunner_agent::TerminationReport;

use crate::executor::Outcome;

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
                return Some(Outcome::Failed(format!(
                    "container {}: cannot pull image {image:?}: {message}",
                    container.name
                )));
            }
            Some("ErrImagePull") => {
                pulling = true;
                let since = pull_error_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= IMAGE_PULL_GRACE {
                    return Some(Outcome::Failed(format!(
                        "container {}: cannot pull image {image:?}: {message}",
                        container.name
                    )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    /// The verdict as text: `None`, `failed: …` or `ended: …`.
    fn verdict(pod: &Pod, fargate: &FargateSignals) -> String {
        match judge(pod, fargate, &mut None) {
            None => "none".into(),
            Some(Outcome::Failed(why)) => format!("failed: {why}"),
            Some(Outcome::BuildEnded { why, .. }) => format!("ended: {why}"),
            Some(Outcome::Stopped(stop)) => format!("stopped: {stop:?}"),
        }
    }

    #[test]
    fn verdicts() {
        let pending = json!({"phase": "Pending"});
        let none = FargateSignals::default();
        let unsupported = |m: &str| FargateSignals {
            unsupported: Some(m.to_owned()),
            capacity: None,
        };
        let privileged = "Pod not supported on Fargate: invalid SecurityContext fields: Privileged";
        let cases: Vec<(&str, serde_json::Value, FargateSignals, &str)> = vec![
            ("pending", pending.clone(), none.clone(), "none"),
            (
                "condition",
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                        "reason": "POD_UNSUPPORTED_ON_FARGATE", "message": privileged}]}),
                none.clone(),
                "failed: Fargate cannot run this pod: Pod not supported on Fargate: invalid SecurityContext fields: Privileged (Fargate runs no privileged containers, so docker-in-docker cannot work: build images with kaniko or buildah, or route the job to EC2 nodes)",
            ),
            (
                "event only, privileged",
                pending.clone(),
                unsupported(privileged),
                "failed: Fargate cannot run this pod: Pod not supported on Fargate: invalid SecurityContext fields: Privileged (Fargate runs no privileged containers, so docker-in-docker cannot work: build images with kaniko or buildah, or route the job to EC2 nodes)",
            ),
            (
                "event only, hostPath",
                pending.clone(),
                unsupported("Pod not supported on Fargate: volumes not supported: docker-sock"),
                "failed: Fargate cannot run this pod: Pod not supported on Fargate: volumes not supported: docker-sock",
            ),
            (
                "capacity waits",
                pending.clone(),
                FargateSignals {
                    unsupported: None,
                    capacity: Some("Capacity is unavailable at this time.".into()),
                },
                "none",
            ),
            (
                "config error",
                json!({"phase": "Pending", "containerStatuses": [{"name": "build", "image": "alpine", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"x\" not found"}}}]}),
                none.clone(),
                "failed: container build cannot be created: secret \"x\" not found",
            ),
            (
                "create error waits",
                json!({"phase": "Pending", "containerStatuses": [{"name": "build", "image": "alpine", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "CreateContainerError", "message": "context deadline exceeded"}}}]}),
                none.clone(),
                "none",
            ),
            (
                "oom",
                json!({"phase": "Failed", "containerStatuses": [{"name": "build", "image": "alpine", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}),
                none.clone(),
                "ended: the build container was killed for using more memory than its limit (OOMKilled, exit code 137)",
            ),
        ];
        let eviction = json!({"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True",
                "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]});
        let cases = cases.into_iter().chain([
            ("eviction elsewhere", eviction.clone(), none.clone(),
             "failed: pod /p was evicted through the Eviction API (a node drain or scale-down); retry the job"),
            ("preemption is not eviction",
             json!({"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True",
                     "reason": "PreemptionByScheduler"}]}),
             none.clone(), "none"),
        ]);
        for (name, status, fargate, expected) in cases {
            assert_eq!(verdict(&pod(status), &fargate), expected, "case {name}");
        }
    }

    #[test]
    fn a_fargate_eviction_is_patching() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ci"},
            "spec": {"schedulerName": "fargate-scheduler", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True",
                       "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]},
        }))
        .unwrap();
        assert_eq!(
            verdict(&pod, &FargateSignals::default()),
            "failed: pod ci/p was evicted by Fargate (patching); retry the job"
        );
    }

    #[test]
    fn only_the_fargate_schedulers_failed_scheduling_events_are_signals() {
        let read = FargateEvent::read;
        let unsupported = "Pod not supported on Fargate: fields not supported: HostNetwork";
        assert_eq!(
            read(
                Some("FailedScheduling"),
                Some("fargate-scheduler"),
                unsupported
            ),
            Some(FargateEvent::Unsupported(unsupported.into()))
        );
        assert_eq!(
            read(
                Some("FailedScheduling"),
                Some("default-scheduler"),
                unsupported
            ),
            None
        );
        assert_eq!(
            read(Some("Scheduled"), Some("fargate-scheduler"), unsupported),
            None
        );
        let capacity = "Capacity is unavailable at this time. Please try again later or in a different availability zone";
        assert_eq!(
            read(
                Some("FailedScheduling"),
                Some("fargate-scheduler"),
                capacity
            ),
            Some(FargateEvent::Capacity(capacity.into()))
        );
        let mut signals = FargateSignals::default();
        signals.apply(FargateEvent::Capacity(capacity.into()));
        let pending = pod(json!({"phase": "Pending"}));
        assert_eq!(
            scheduling_message(&pending, &signals).as_deref(),
            Some(format!("Fargate capacity shortage: {capacity}").as_str())
        );
        assert_eq!(
            scheduling_message(&pending, &FargateSignals::default()),
            None
        );
    }

    #[test]
    fn a_waiting_pod_says_what_it_waits_for() {
        let waiting = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "build", "image": "alpine", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerError", "message": "context deadline exceeded"}}}]}),
        );
        assert_eq!(
            waiting_message(&waiting).as_deref(),
            Some("container build: CreateContainerError: context deadline exceeded")
        );
        assert!(!has_run(&waiting));
        assert!(has_run(&pod(json!({"phase": "Running"}))));
        assert!(has_run(&pod(json!({"phase": "Failed"}))));
    }
}
