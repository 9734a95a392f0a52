//! The Eviction API (`POST .../pods/{name}/eviction`), which EKS uses to evict Fargate pods
//! before patching their nodes (`awsdocs/amazon-eks-user-guide` `fargate-pod-patching.adoc`).
//!
//! From `pkg/registry/core/pod/storage/eviction.go`: a pod already terminal is just deleted;
//! otherwise the pod first gets the condition `DisruptionTarget` (status `True`, reason
//! `EvictionByEvictionAPI`, message "Eviction API: evicting"; `addConditionAndDeletePod`) and
//! is then deleted with the eviction's `deleteOptions` (the pod's own grace period when none
//! is given). The answer is 201 with a `Success` Status. Before that, unless the pod is
//! terminal, being deleted, or pending unscheduled (`canIgnorePDB`), the PodDisruptionBudget
//! that selects it is checked (`checkAndDecrement`): one that allows no disruption refuses
//! the eviction with 429 `TooManyRequests` (module `pdb`).

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{DeleteQuery, Kind, Shared};

/// Evicts pod `namespace/name`.
pub(super) async fn evict(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let eviction: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    {
        let mut inner = shared.lock();
        let key = (Kind::Pod, namespace.clone(), name.clone());
        let Some(mut pod) = inner.objects.get(&key).cloned() else {
            drop(inner);
            super::record(&shared, &method, &uri);
            return super::not_found(Kind::Pod, &name);
        };
        let terminal = matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        let unscheduled = pod["status"]["phase"] == "Pending" && pod["spec"]["nodeName"].is_null();
        if !terminal
            && !unscheduled
            && pod["metadata"]["deletionTimestamp"].is_null()
            && let Some(refused) = super::pdb::refusal(&inner, &namespace, &pod)
        {
            drop(inner);
            super::record(&shared, &method, &uri);
            return refused;
        }
        if !terminal && pod["metadata"]["deletionTimestamp"].is_null() {
            let mut conditions: Vec<Value> = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c["type"] != "DisruptionTarget")
                .collect();
            conditions.push(json!({
                "type": "DisruptionTarget", "status": "True",
                "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting",
                "lastTransitionTime": super::now(),
            }));
            pod["status"]["conditions"] = json!(conditions);
            super::commit(&shared, &mut inner, Kind::Pod, &namespace, "MODIFIED", pod);
        }
    }
    let options = serde_json::to_vec(&eviction["deleteOptions"]).unwrap_or_default();
    // The deletion is recorded once, as this POST.
    let deleted = super::delete(
        State(shared),
        method,
        uri,
        UrlPath((namespace, "pods".to_owned(), name)),
        Query(DeleteQuery::default()),
        Bytes::from(options),
    )
    .await;
    if !deleted.status().is_success() {
        return deleted;
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201,
        })),
    )
        .into_response()
}
