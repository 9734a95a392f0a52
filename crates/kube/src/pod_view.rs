//! What the manager keeps of a followed pod between two watch events.
//!
//! A job pod's follower needs the whole Pod only while the pod waits to start: the trace
//! prelude reads its spec (the Fargate prediction) and, on adoption, its prelude annotation.
//! Once the build container runs or ran ([`build_started`]), the follower reads only the
//! pod's status, its node and scheduler ([`crate::judge`]), its name and namespace, and the
//! `CapacityProvisioned` annotation (the Fargate cost). Keeping just that, instead of a
//! deserialized Pod with its containers, environment and volumes, is what lets a manager
//! follow a thousand running pods in little memory (`docs/benchmarks.md`, scale).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::prelude::build_started;

/// The annotation EKS writes on a Fargate pod with the size it got.
const CAPACITY_PROVISIONED: &str = "CapacityProvisioned";

/// `pod` as its follower keeps it: whole while it waits, its status and placement once the
/// build started.
pub(crate) fn followed(pod: Pod) -> Pod {
    if !build_started(&pod) {
        return pod;
    }
    let Pod {
        metadata,
        spec,
        status,
    } = pod;
    let annotations: BTreeMap<String, String> = metadata
        .annotations
        .into_iter()
        .flatten()
        .filter(|(key, _)| key == CAPACITY_PROVISIONED)
        .collect();
    Pod {
        metadata: ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            resource_version: metadata.resource_version,
            deletion_timestamp: metadata.deletion_timestamp,
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        },
        spec: spec.map(|spec| PodSpec {
            node_name: spec.node_name,
            scheduler_name: spec.scheduler_name,
            ..PodSpec::default()
        }),
        status: status.map(tight),
    }
}

/// `status` with its lists in no more room than they take (deserializing grows a list of two
/// container statuses to room for four, each status near a kilobyte).
fn tight(mut status: PodStatus) -> PodStatus {
    for list in [
        &mut status.container_statuses,
        &mut status.init_container_statuses,
        &mut status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    {
        list.shrink_to_fit();
    }
    if let Some(conditions) = &mut status.conditions {
        conditions.shrink_to_fit();
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Outcome;
    use crate::judge::{FargateSignals, judge};
    use serde_json::json;

    fn pod(phase: &str, build: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "labels": {"a": "b"},
                "annotations": {"CapacityProvisioned": "0.25vCPU 0.5GB", "big": "x".repeat(4096)}},
            "spec": {"nodeName": "fargate-ip-1", "schedulerName": "fargate-scheduler",
                "containers": [{"name": "build", "image": "alpine", "env": [{"name": "A", "value": "1"}]}]},
            "status": {"phase": phase, "containerStatuses": [{"name": "build", "image": "alpine",
                "imageID": "", "ready": false, "restartCount": 0, "state": build}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_followed_pods_status_lists_take_no_more_room_than_they_need() {
        // Deserializing grows a list past its length, as this does.
        let mut running = pod("Running", json!({"running": {}}));
        let status = running.status.as_mut().unwrap();
        status.container_statuses.as_mut().unwrap().reserve(8);
        let kept = followed(running);
        let statuses = kept.status.unwrap().container_statuses.unwrap();
        assert_eq!((statuses.len(), statuses.capacity()), (1, 1));
    }

    #[test]
    fn a_waiting_pod_is_kept_whole() {
        let waiting = pod(
            "Pending",
            json!({"waiting": {"reason": "ContainerCreating"}}),
        );
        assert_eq!(followed(waiting.clone()), waiting);
    }

    #[test]
    fn a_started_pod_keeps_what_its_follower_reads() {
        let running = pod("Running", json!({"running": {}}));
        let kept = followed(running.clone());
        assert_eq!(kept.status, running.status);
        assert_eq!(kept.metadata.name.as_deref(), Some("p"));
        assert_eq!(kept.metadata.namespace.as_deref(), Some("ns"));
        let annotations = kept.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["CapacityProvisioned"]
        );
        let spec = kept.spec.clone().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("fargate-ip-1"));
        assert_eq!(spec.scheduler_name.as_deref(), Some("fargate-scheduler"));
        assert!(spec.containers.is_empty() && kept.metadata.labels.is_none());
    }

    #[test]
    fn the_verdict_on_the_kept_pod_is_the_verdict_on_the_pod() {
        let report = r#"{"final_update_delivered":true,"state":"success","failure_reason":null,"exit_code":null,"trace_bytes_sent":1,"aborted":false}"#;
        let cases = [
            pod("Running", json!({"running": {}})),
            pod(
                "Succeeded",
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "message": report}}),
            ),
            pod(
                "Failed",
                json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
            ),
            // Eviction: the verdict names Fargate from the pod's scheduler.
            {
                let mut evicted = pod("Running", json!({"running": {}}));
                evicted.status.as_mut().unwrap().conditions = Some(vec![
                    serde_json::from_value(json!({"type": "DisruptionTarget", "status": "True",
                        "reason": "EvictionByEvictionAPI"}))
                    .unwrap(),
                ]);
                evicted
            },
        ];
        let verdict = |pod: &Pod| match judge(pod, &FargateSignals::default(), &mut None) {
            None => "none".to_owned(),
            Some(Outcome::BuildEnded { report, why }) => format!("ended {report:?} {why}"),
            Some(Outcome::Failed(why)) => format!("failed {why}"),
            Some(Outcome::PullFailed(failure)) => format!("pull failed {failure:?}"),
            Some(Outcome::Stopped(stop)) => format!("stopped {stop:?}"),
        };
        for pod in cases {
            assert_eq!(verdict(&followed(pod.clone())), verdict(&pod));
        }
    }
}
