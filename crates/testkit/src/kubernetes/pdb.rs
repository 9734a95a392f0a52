//! `policy/v1` PodDisruptionBudgets: create, get, list (label selectors) and delete in a
//! namespace, under `/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets`, and the
//! budget the Eviction API checks (module `eviction`).
//!
//! Behaviour, from `kubernetes/kubernetes`:
//! - The generic registry (`staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go`):
//!   `Create` of an existing name is 409 `AlreadyExists`, a missing name is 404 `NotFound`
//!   (messages of `staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go`, resource
//!   `poddisruptionbudgets.policy`). A budget is stored beside pods and Secrets, so the
//!   ownerReference garbage collection of the stand-in (Background) deletes a budget owned by
//!   a pod with the pod (`pkg/controller/garbagecollector/garbagecollector.go`).
//! - The strategy (`pkg/registry/policy/poddisruptionbudget/strategy.go`) drops a client's
//!   `status` on create; validation (`pkg/apis/policy/validation/validation.go`) refuses a
//!   spec that sets both `minAvailable` and `maxUnavailable` ("minAvailable and
//!   maxUnavailable cannot be both set").
//! - The status the disruption controller would write (`pkg/controller/disruption/disruption.go`,
//!   `getExpectedPodCount` and `countHealthyPods`) is computed when the Eviction API asks:
//!   for an integer `minAvailable`, `desiredHealthy` is that number and `currentHealthy` the
//!   matching pods that are healthy; `disruptionsAllowed` is their difference, at least 0.
//!   Upstream counts pods whose `Ready` condition is true; the stand-in's kubelet writes no
//!   `Ready` condition, so a `Running` pod not being deleted counts as healthy. A percentage or
//!   `maxUnavailable` needs the pods' controller (a scale), which a bare job pod has not:
//!   upstream then fails the sync and allows no disruption, and so does the stand-in.
//!
//! Not served: watch, patch, update, the `status` subresource, deletecollection (podrunner
//! uses none of them).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Inner, Kind, ListQuery, Shared, commit, now, record, valid_name};

const QUALIFIED: &str = "poddisruptionbudgets.policy";

impl super::KubernetesStandIn {
    /// Every PodDisruptionBudget stored, in all namespaces.
    pub fn disruption_budgets(&self) -> Vec<Value> {
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|((kind, _, _), _)| *kind == Kind::PodDisruptionBudget)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The PodDisruptionBudget routes, merged into the stand-in's router.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
            get(list).post(create),
        )
        .route(
            "/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}",
            get(read).delete(delete),
        )
}

fn failure(code: StatusCode, reason: &str, message: String, name: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason,
            "details": {"name": name, "group": "policy", "kind": "poddisruptionbudgets"},
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn not_found(name: &str) -> Response {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{QUALIFIED} \"{name}\" not found"),
        name,
    )
}

fn invalid(name: &str, field: &str, value: &str, why: &str) -> Response {
    failure(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!(
            "PodDisruptionBudget.policy \"{name}\" is invalid: {field}: Invalid value: {value}: {why}"
        ),
        name,
    )
}

fn key(namespace: &str, name: &str) -> (Kind, String, String) {
    (
        Kind::PodDisruptionBudget,
        namespace.to_owned(),
        name.to_owned(),
    )
}

async fn create(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath(namespace): UrlPath<String>,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri);
    let mut object: Value = match serde_json::from_slice(&body) {
        Ok(object) => object,
        Err(e) => {
            return super::status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("invalid JSON: {e}"),
            );
        }
    };
    // The typed model is the schema.
    if let Err(e) =
        serde_json::from_value::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(object.clone())
    {
        return super::status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("PodDisruptionBudget is invalid: {e}"),
        );
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !valid_name(&name) {
        return invalid(
            &name,
            "metadata.name",
            &format!("{name:?}"),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
        );
    }
    let spec = &object["spec"];
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        return invalid(
            &name,
            "spec",
            &spec.to_string(),
            "minAvailable and maxUnavailable cannot be both set",
        );
    }
    let mut inner = shared.lock();
    if inner.objects.contains_key(&key(&namespace, &name)) {
        return failure(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{QUALIFIED} \"{name}\" already exists"),
            &name,
        );
    }
    inner.uid_counter += 1;
    let uid = format!("00000000-0000-4000-8000-{:012x}", inner.uid_counter);
    object["apiVersion"] = json!("policy/v1");
    object["kind"] = json!("PodDisruptionBudget");
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(uid);
    object["metadata"]["generation"] = json!(1);
    object["metadata"]["creationTimestamp"] = json!(now());
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    let stored = commit(
        &shared,
        &mut inner,
        Kind::PodDisruptionBudget,
        &namespace,
        "ADDED",
        object,
    );
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

async fn read(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    record(&shared, &method, &uri);
    match shared.lock().objects.get(&key(&namespace, &name)) {
        Some(budget) => axum::Json(budget.clone()).into_response(),
        None => not_found(&name),
    }
}

async fn list(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath(namespace): UrlPath<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    record(&shared, &method, &uri);
    let inner = shared.lock();
    super::plain_list::answer(
        &query,
        "poddisruptionbudgets",
        ("PodDisruptionBudgetList", "policy/v1"),
        inner.resource_version,
        budgets_in(&inner, &namespace),
    )
}

async fn delete(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    record(&shared, &method, &uri);
    let mut inner = shared.lock();
    let Some(object) = inner.objects.get(&key(&namespace, &name)).cloned() else {
        return not_found(&name);
    };
    super::remove(
        &shared,
        &mut inner,
        Kind::PodDisruptionBudget,
        &namespace,
        object,
    );
    axum::Json(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": "policy", "kind": "poddisruptionbudgets"},
    }))
    .into_response()
}

fn budgets_in<'a>(inner: &'a Inner, namespace: &'a str) -> impl Iterator<Item = &'a Value> {
    inner
        .objects
        .iter()
        .filter(move |((kind, ns, _), _)| *kind == Kind::PodDisruptionBudget && ns == namespace)
        .map(|(_, v)| v)
}

/// Whether the budget's `spec.selector` (matchLabels and matchExpressions, as
/// `staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/helpers.go` `LabelSelectorAsSelector`)
/// selects a pod with `labels`. An empty selector selects every pod of the namespace in
/// `policy/v1` (`pkg/controller/disruption/disruption.go`, `getPodsForPdb`); a missing one
/// selects none.
fn selects(budget: &Value, labels: &Value) -> bool {
    let selector = &budget["spec"]["selector"];
    if selector.is_null() {
        return false;
    }
    let label = |key: &str| labels[key].as_str();
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

/// Healthy for the budget: see the module comment.
fn healthy(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && pod["metadata"]["deletionTimestamp"].is_null()
}

/// Why evicting `pod` would violate a budget: the 429 `Status` of `checkAndDecrement` in
/// `pkg/registry/core/pod/storage/eviction.go` (`errors.NewTooManyRequests` with a
/// `DisruptionBudget` cause), or the 500 it answers when more than one budget selects the pod.
/// None when no budget selects the pod or the budget allows a disruption.
pub(super) fn refusal(inner: &Inner, namespace: &str, pod: &Value) -> Option<Response> {
    let labels = &pod["metadata"]["labels"];
    let budgets: Vec<&Value> = budgets_in(inner, namespace)
        .filter(|b| selects(b, labels))
        .collect();
    let budget = match budgets.as_slice() {
        [] => return None,
        [one] => *one,
        _ => {
            return Some(super::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let selected: Vec<&Value> = inner
        .objects
        .iter()
        .filter(|((kind, ns, _), v)| {
            *kind == Kind::Pod && ns == namespace && selects(budget, &v["metadata"]["labels"])
        })
        .map(|(_, v)| v)
        .collect();
    let current = selected.iter().filter(|p| healthy(p)).count() as i64;
    let desired = budget["spec"]["minAvailable"].as_i64();
    let pod_healthy = healthy(pod);
    if let Some(desired) = desired {
        // An unhealthy pod may go while the budget holds (`IfHealthyBudget`, the default
        // `unhealthyPodEvictionPolicy`).
        if !pod_healthy && current >= desired && desired > 0 {
            return None;
        }
        if current - desired > 0 {
            return None;
        }
    }
    let name = budget["metadata"]["name"].as_str().unwrap_or_default();
    let desired = desired.unwrap_or(0);
    Some(
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                "reason": "TooManyRequests",
                "details": {"causes": [{"reason": "DisruptionBudget",
                    "message": format!("The disruption budget {name} needs {desired} healthy pods and has {current} currently")}]},
                "code": 429,
            })),
        )
            .into_response(),
    )
}
