//! The job's Secrets: the spec the agent reads, the registry credentials the kubelet pulls
//! with, making the pod their owner, and deleting those it does not own.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use podrunner_agent::AgentSpec;
use podrunner_manager::{AcceptedJob, Event};

use super::{KubernetesExecutor, api_error, gone};
use crate::calls::ApiCalls;
use crate::plan::{JOB_LABEL, MANAGER_LABEL};

/// How the Secrets of one job are made: where, and marked as whose.
pub(super) struct JobSecrets {
    namespace: String,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
}

impl JobSecrets {
    /// Secrets in `namespace`, labelled as this manager's (`system_id`) for job `job_id`, with
    /// the ownership `annotations` ([`super::ownership::Ownership::annotations`]).
    pub(super) fn new(
        namespace: &str,
        system_id: &str,
        job_id: i64,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Self {
        JobSecrets {
            namespace: namespace.to_owned(),
            labels: [
                (MANAGER_LABEL.to_owned(), system_id.to_owned()),
                (JOB_LABEL.to_owned(), job_id.to_string()),
            ]
            .into(),
            annotations,
        }
    }

    fn metadata(&self, name: &str, owner: Option<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels.clone()),
            annotations: self.annotations.clone(),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        }
    }

    /// The spec Secret `name` (`job.json`, what the agent runs), born owned by its pod.
    pub(super) fn spec(&self, name: &str, json: Vec<u8>, owner: OwnerReference) -> Secret {
        Secret {
            metadata: self.metadata(name, Some(owner)),
            data: Some([("job.json".to_owned(), ByteString(json))].into()),
            type_: Some("Opaque".into()),
            ..Default::default()
        }
    }

    /// The registry Secret `name` the pod pulls its images with; made before the pod, so
    /// not owned by it yet.
    pub(super) fn registry(&self, name: &str, job: &AcceptedJob) -> Secret {
        Secret {
            metadata: self.metadata(name, None),
            data: Some(
                [(
                    ".dockerconfigjson".to_owned(),
                    ByteString(docker_config(job)),
                )]
                .into(),
            ),
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            ..Default::default()
        }
    }
}

/// The pod a job Secret belongs to, by its name: `<pod>-spec` or `<pod>-registry`
/// ([`crate::plan::PodPlan`] names them); any other name is taken as the pod's own.
pub(super) fn pod_of(secret: &str) -> &str {
    secret
        .strip_suffix("-spec")
        .or_else(|| secret.strip_suffix("-registry"))
        .unwrap_or(secret)
}

/// `.dockerconfigjson` of the job's pull Secret ([`crate::registry_auth`]).
fn docker_config(job: &AcceptedJob) -> Vec<u8> {
    crate::registry_auth::resolve(&job.payload, &job.runner.environment)
        .docker_config_json()
        .unwrap_or_default()
}

/// `spec` as the spec Secret's `job.json`.
pub(super) fn spec_json(spec: &AgentSpec) -> Vec<u8> {
    serde_json::to_vec(spec).unwrap_or_default()
}

impl KubernetesExecutor {
    /// Makes the pod (`owner`) the owner of `secrets`; returns those it could not.
    pub(super) async fn own_secrets(
        &self,
        calls: &ApiCalls,
        api: &Api<Secret>,
        owner: &OwnerReference,
        secrets: Vec<Secret>,
    ) -> Vec<Secret> {
        let owner = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        let owner = Patch::Merge(&owner);
        let patch = PatchParams::default();
        let mut still_unowned = Vec::new();
        for secret in secrets {
            let name = secret.metadata.name.clone().unwrap_or_default();
            if calls
                .run("make the Pod own its Secret", || {
                    api.patch(&name, &patch, &owner)
                })
                .await
                .is_err()
            {
                still_unowned.push(secret);
            }
        }
        still_unowned
    }

    /// Deletes `secrets`; a failure is said, and left to the sweep.
    pub(super) async fn delete_secrets(
        &self,
        calls: &ApiCalls,
        api: &Api<Secret>,
        secrets: &[Secret],
    ) {
        let params = DeleteParams::default();
        for secret in secrets {
            let name = secret.metadata.name.as_deref().unwrap_or_default();
            let deleted = calls
                .run("delete Secret", || api.delete(name, &params))
                .await;
            // Said, not dropped: the sweep retries it (it carries the manager's label).
            if let Err(e) = deleted.map(|_| ()).or_else(gone) {
                Event::KubernetesProblem {
                    doing: format!("deleting Secret {name} (the sweep tries again)"),
                    error: api_error(&e),
                }
                .emit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pod_of;

    #[test]
    fn a_secret_belongs_to_the_pod_its_name_starts_with() {
        for (secret, pod) in [
            (
                "runner-abc-project-1-concurrent-0-x1-spec",
                "runner-abc-project-1-concurrent-0-x1",
            ),
            ("runner-abc-1-registry", "runner-abc-1"),
            ("runner-abc-1-registry-spec", "runner-abc-1-registry"),
            ("something-else", "something-else"),
        ] {
            assert_eq!(pod_of(secret), pod, "secret {secret}");
        }
    }
}
