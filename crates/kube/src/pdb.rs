//! The PodDisruptionBudget of a job pod (`pod_disruption_budget = true`), as gitlab-runner's
//! `createPodDisruptionBudget` (`executors/kubernetes/kubernetes.go`): created right after the
//! pod, named `<pod>-pdb`, `minAvailable: 1`, selecting the pod by its
//! `job.runner.gitlab.com/pod` label, owned by the pod. Nothing deletes it by name: the
//! garbage collector deletes it with the pod, on every path that deletes the pod (the job's
//! end, a discarded pod, the sweep), as gitlab-runner documents
//! (`docs/executors/kubernetes/_index.md`, "deleted when the job pod is deleted through
//! Kubernetes owner references"). A voluntary eviction (a node drain, Fargate's patching)
//! of the running job is then refused by the Eviction API; the manager's own delete is not.
//! A failure to create it fails the job, as gitlab-runner's "error creating
//! PodDisruptionBudget" does.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use podrunner_config::RunnerConfig;

use crate::calls::ApiCalls;

/// The label every job pod carries with its own (sanitized) name.
const POD_LABEL: &str = "job.runner.gitlab.com/pod";

/// The budget of `pod` (as created), owned by it.
fn budget(pod: &Pod, owner: &OwnerReference) -> PodDisruptionBudget {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let selected = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_LABEL))
        .cloned()
        .unwrap_or_else(|| name.clone());
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(format!("{name}-pdb")),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.as_ref().map(|labels| {
                [crate::plan::MANAGER_LABEL, crate::plan::JOB_LABEL]
                    .into_iter()
                    .filter_map(|k| labels.get(k).map(|v| (k.to_owned(), v.clone())))
                    .collect()
            }),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some([(POD_LABEL.to_owned(), selected)].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// Creates the budget of `pod` when the runner asks for one; the error says what failed.
pub(crate) async fn create(
    runner: &RunnerConfig,
    writer: &crate::executor::JobWriter,
    calls: &ApiCalls,
    pod: &Pod,
    owner: &OwnerReference,
) -> Result<(), String> {
    if !runner.kubernetes_or_default().pod_disruption_budget() {
        return Ok(());
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let budget = budget(pod, owner);
    let api: Api<PodDisruptionBudget> = Api::namespaced(writer.client.clone(), &namespace);
    let post = PostParams::default();
    let created = calls
        .run("create PodDisruptionBudget", || api.create(&post, &budget))
        .await;
    // 409 after a retry: the lost answer's create went through (names are per pod).
    created
        .map(|_| ())
        .or_else(crate::executor::already_exists)
        .map_err(|e| {
            format!(
                "cannot create PodDisruptionBudget {namespace}/{}: {}",
                budget.metadata.name.as_deref().unwrap_or_default(),
                writer.error(&e)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_selects_only_its_pod_and_is_owned_by_it() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("runner-abc-project-1-concurrent-0-job-7".into()),
                namespace: Some("ci".into()),
                labels: Some(
                    [
                        (
                            POD_LABEL.to_owned(),
                            "runner-abc-project-1-concurrent-0-job-7".to_owned(),
                        ),
                        (crate::plan::JOB_LABEL.to_owned(), "7".to_owned()),
                        ("project.runner.gitlab.com/id".to_owned(), "1".to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: "runner-abc-project-1-concurrent-0-job-7".into(),
            uid: "u-1".into(),
            block_owner_deletion: Some(true),
            controller: None,
        };
        let budget = serde_json::to_value(budget(&pod, &owner)).unwrap();
        assert_eq!(
            budget,
            serde_json::json!({
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {
                    "name": "runner-abc-project-1-concurrent-0-job-7-pdb",
                    "namespace": "ci",
                    "labels": {"podrunner.io/job-id": "7"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
                        "name": "runner-abc-project-1-concurrent-0-job-7", "uid": "u-1",
                        "blockOwnerDeletion": true}],
                },
                "spec": {
                    "minAvailable": 1,
                    "selector": {"matchLabels": {POD_LABEL: "runner-abc-project-1-concurrent-0-job-7"}},
                },
            })
        );
    }
}
