//! The judgements, case by case.

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
        Some(Outcome::PullFailed(failure)) => format!("pull failed: {}", failure.reason()),
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
            "image pull back-off",
            json!({"phase": "Pending", "containerStatuses": [{"name": "build", "image": "ruby:3",
                    "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"ruby:3\""}}}]}),
            none.clone(),
            "pull failed: container build: cannot pull image \"ruby:3\": Back-off pulling image \"ruby:3\"",
        ),
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

fn full(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

#[test]
fn where_fargate_placed_the_pod() {
    let cases = [
        ("nothing", json!({"metadata": {"name": "p"}}), false, None),
        (
            "annotated",
            json!({"metadata": {"name": "p", "annotations": {"CapacityProvisioned": "0.25vCPU 0.5GB"}}}),
            true,
            Some("0.25vCPU 0.5GB"),
        ),
        (
            "fargate node",
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "fargate-ip-10-0-1-2.ec2.internal", "containers": []}}),
            true,
            None,
        ),
        (
            "ec2 node",
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "ip-10-0-1-2.ec2.internal", "containers": []}}),
            false,
            None,
        ),
        (
            "other annotations",
            json!({"metadata": {"name": "p", "annotations": {"a": "b"}}}),
            false,
            None,
        ),
    ];
    for (name, value, fargate, capacity) in cases {
        let pod = full(value);
        assert_eq!(on_fargate(&pod), fargate, "case {name}");
        assert_eq!(capacity_provisioned(&pod), capacity, "case {name}");
    }
}

#[test]
fn why_a_pod_did_not_run_within_poll_timeout() {
    let capacity = FargateSignals {
        unsupported: None,
        capacity: Some("Capacity is unavailable at this time.".into()),
    };
    let none = FargateSignals::default();
    let unschedulable = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]});
    let creating = json!({"phase": "Pending", "containerStatuses": [{"name": "build", "image": "alpine", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]});
    let node = json!({"nodeName": "n1", "containers": []});
    let cases = [
        (
            "not scheduled, no reason",
            json!({"metadata": {"name": "p"}, "status": {"phase": "Pending"}}),
            none.clone(),
            "pod ci/p was not scheduled within poll_timeout (180s)",
        ),
        (
            "not scheduled, condition",
            json!({"metadata": {"name": "p"}, "status": unschedulable.clone()}),
            none.clone(),
            "pod ci/p was not scheduled within poll_timeout (180s): 0/3 nodes are available: 3 Insufficient cpu.",
        ),
        (
            "not scheduled, capacity shortage first",
            json!({"metadata": {"name": "p"}, "status": unschedulable}),
            capacity.clone(),
            "pod ci/p was not scheduled within poll_timeout (180s): Fargate capacity shortage: Capacity is unavailable at this time.",
        ),
        (
            "scheduled, waiting container",
            json!({"metadata": {"name": "p"}, "spec": node.clone(), "status": creating}),
            capacity,
            "pod ci/p was scheduled but not running within poll_timeout (180s): container build: ContainerCreating",
        ),
        (
            "scheduled, nothing said",
            json!({"metadata": {"name": "p"}, "spec": node, "status": {"phase": "Pending"}}),
            none,
            "pod ci/p was scheduled but not running within poll_timeout (180s)",
        ),
    ];
    for (name, value, fargate, expected) in cases {
        assert_eq!(
            not_running(&full(value), &fargate, "ci", "p", 180),
            expected,
            "case {name}"
        );
    }
}

#[test]
fn what_a_warning_event_says() {
    let event = |value: serde_json::Value| -> Event { serde_json::from_value(value).unwrap() };
    let unsupported = "Pod not supported on Fargate: fields not supported: HostNetwork";
    let cases = [
        (
            "kubelet warning",
            json!({"metadata": {}, "involvedObject": {"kind": "Pod", "name": "p"}, "type": "Warning",
                   "reason": "Failed", "message": "Back-off pulling image", "source": {"component": "kubelet"}}),
            PodWarning {
                pod: "p".into(),
                fargate: None,
                message: Some("Back-off pulling image".into()),
            },
        ),
        (
            "the pod's own spec Secret, not yet made",
            json!({"metadata": {}, "involvedObject": {"kind": "Pod", "name": "p"}, "type": "Warning",
                   "reason": "FailedMount", "message": "MountVolume.SetUp failed for volume \"spec\" : secret \"p-spec\" not found"}),
            PodWarning {
                pod: "p".into(),
                fargate: None,
                message: None,
            },
        ),
        (
            "another Secret missing is news",
            json!({"metadata": {}, "involvedObject": {"kind": "Pod", "name": "p"}, "type": "Warning",
                   "reason": "FailedMount", "message": "secret \"other\" not found"}),
            PodWarning {
                pod: "p".into(),
                fargate: None,
                message: Some("secret \"other\" not found".into()),
            },
        ),
        (
            "fargate scheduler by reportingComponent",
            json!({"metadata": {}, "involvedObject": {"kind": "Pod", "name": "p"}, "type": "Warning",
                   "reason": "FailedScheduling", "message": unsupported, "reportingComponent": "fargate-scheduler"}),
            PodWarning {
                pod: "p".into(),
                fargate: Some(FargateEvent::Unsupported(unsupported.into())),
                message: Some(unsupported.into()),
            },
        ),
        (
            "fargate scheduler by source, reportingComponent empty",
            json!({"metadata": {}, "involvedObject": {"kind": "Pod", "name": "p"}, "type": "Warning",
                   "reason": "FailedScheduling", "message": unsupported, "reportingComponent": "",
                   "source": {"component": "fargate-scheduler"}}),
            PodWarning {
                pod: "p".into(),
                fargate: Some(FargateEvent::Unsupported(unsupported.into())),
                message: Some(unsupported.into()),
            },
        ),
        (
            "no message",
            json!({"metadata": {}, "involvedObject": {"kind": "Pod", "name": "p"}, "type": "Warning", "reason": "X"}),
            PodWarning {
                pod: "p".into(),
                fargate: None,
                message: None,
            },
        ),
    ];
    for (name, value, expected) in cases {
        assert_eq!(read_warning(&event(value)), expected, "case {name}");
    }
}
