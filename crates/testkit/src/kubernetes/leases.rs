//! `coordination.k8s.io/v1` Leases: create, get, list (label selectors), update and delete in
//! a namespace, under `/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases`, so that
//! several managers can share one stand-in and decide who owns what.
//!
//! Behaviour, from `kubernetes/kubernetes`:
//! - The generic registry (`staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go`):
//!   `Create` of an existing name is 409 `AlreadyExists`; `Update` compares the object's
//!   `metadata.resourceVersion` with the stored one and answers 409 `Conflict` ("the object
//!   has been modified; please apply your changes to the latest version and try again",
//!   `storage.NewResourceVersionConflictsError`, `OptimisticLockErrorMsg`); `Delete` with a
//!   `preconditions.resourceVersion` that no longer matches is 409 `Conflict` too
//!   ("Precondition failed: ..."). Messages and details are those of
//!   `staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go` (`NewAlreadyExists`,
//!   `NewConflict`, `NewNotFound`, `NewInvalid`), with the group-qualified resource
//!   `leases.coordination.k8s.io`.
//! - The Lease strategy (`pkg/registry/coordination/lease/strategy.go`): no unconditional
//!   update (`AllowUnconditionalUpdate` false: an update without `resourceVersion` is 422
//!   `Invalid`, "must be specified for an update"), no create on update (a PUT of a missing
//!   Lease is 404). Validation (`pkg/apis/coordination/validation/validation.go`):
//!   `leaseDurationSeconds` must be greater than 0.
//! - `resourceVersion`s come from the one counter every object of the stand-in shares, as
//!   etcd's revision is shared.
//!
//! - Creation goes through NamespaceLifecycle admission like every other kind (module
//!   `namespaces`): 404 in a namespace that does not exist, 403 in one being terminated.
//! - The list is served per namespace and across all namespaces.
//!
//! Not modelled: the namespace controller deleting a terminating namespace's Leases (they
//! stay in the stand-in after their namespace is gone).
//! Not served: watch (podrunner does not watch Leases; a watch request is refused with 405 so
//! that a test relying on one fails loudly), patch, deletecollection.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{ListQuery, Shared, now, record, valid_name};

const GROUP: &str = "coordination.k8s.io";
const QUALIFIED: &str = "leases.coordination.k8s.io";

impl super::KubernetesStandIn {
    /// Deletes Lease `namespace/name` as `kubectl delete lease` does (an unconditional
    /// delete); whether it was there.
    pub fn delete_lease(&self, namespace: &str, name: &str) -> bool {
        let mut inner = self.shared.lock();
        inner.resource_version += 1;
        inner
            .leases
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
    }

    /// Every Lease stored, in all namespaces.
    pub fn leases(&self) -> Vec<Value> {
        self.shared.lock().leases.values().cloned().collect()
    }
}

/// The Lease routes, merged into the stand-in's router.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/apis/coordination.k8s.io/v1/leases", get(list_all))
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
            get(list).post(create),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
            get(read).put(update).delete(delete),
        )
}

/// A `Status` failure with `details` for Lease `name`.
fn failure(code: StatusCode, reason: &str, message: String, name: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason,
            "details": {"name": name, "group": GROUP, "kind": "leases"},
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

fn conflict(name: &str, why: &str) -> Response {
    failure(
        StatusCode::CONFLICT,
        "Conflict",
        format!("Operation cannot be fulfilled on {QUALIFIED} \"{name}\": {why}"),
        name,
    )
}

fn invalid(name: &str, field: &str, value: &str, why: &str) -> Response {
    failure(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("Lease.{GROUP} \"{name}\" is invalid: {field}: Invalid value: {value}: {why}"),
        name,
    )
}

/// The body as a Lease (the typed model is the schema), or the API server's refusal.
fn parse(body: &[u8], name_in_path: Option<&str>) -> Result<Value, Box<Response>> {
    let object: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(super::status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("invalid JSON: {e}"),
        ))
    })?;
    if let Err(e) =
        serde_json::from_value::<k8s_openapi::api::coordination::v1::Lease>(object.clone())
    {
        return Err(Box::new(super::status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Lease is invalid: {e}"),
        )));
    }
    let name = object["metadata"]["name"]
        .as_str()
        .or(name_in_path)
        .unwrap_or_default()
        .to_owned();
    if !valid_name(&name) {
        return Err(Box::new(invalid(
            &name,
            "metadata.name",
            &format!("{name:?}"),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
        )));
    }
    if let Some(seconds) = object["spec"]["leaseDurationSeconds"].as_i64()
        && seconds <= 0
    {
        return Err(Box::new(invalid(
            &name,
            "spec.leaseDurationSeconds",
            &seconds.to_string(),
            "must be greater than 0",
        )));
    }
    Ok(object)
}

/// Stamps `object` with the next resourceVersion and stores it.
fn store(shared: &Shared, namespace: &str, name: &str, mut object: Value) -> Value {
    let mut inner = shared.lock();
    inner.resource_version += 1;
    object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
    inner
        .leases
        .insert((namespace.to_owned(), name.to_owned()), object.clone());
    object
}

async fn create(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath(namespace): UrlPath<String>,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri);
    let mut object = match parse(&body, None) {
        Ok(object) => object,
        Err(refused) => return *refused,
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let uid = {
        let mut inner = shared.lock();
        if let Some(refused) = super::namespaces::admit(&inner, &namespace, QUALIFIED, &name) {
            return refused;
        }
        if inner
            .leases
            .contains_key(&(namespace.clone(), name.clone()))
        {
            return failure(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{QUALIFIED} \"{name}\" already exists"),
                &name,
            );
        }
        inner.uid_counter += 1;
        format!("00000000-0000-4000-8000-{:012x}", inner.uid_counter)
    };
    object["apiVersion"] = json!("coordination.k8s.io/v1");
    object["kind"] = json!("Lease");
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(uid);
    object["metadata"]["creationTimestamp"] = json!(now());
    let stored = store(&shared, &namespace, &name, object);
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

async fn read(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    record(&shared, &method, &uri);
    match shared.lock().leases.get(&(namespace, name.clone())) {
        Some(lease) => axum::Json(lease.clone()).into_response(),
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
    answer_list(&shared, &method, &uri, Some(&namespace), &query)
}

/// The cluster-scoped list, `GET /apis/coordination.k8s.io/v1/leases`: every namespace's,
/// as for any namespaced resource (`staging/src/k8s.io/apiserver/pkg/endpoints/installer.go`
/// registers the list without a namespace for namespace-scoped kinds).
async fn list_all(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<ListQuery>,
) -> Response {
    answer_list(&shared, &method, &uri, None, &query)
}

fn answer_list(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    namespace: Option<&str>,
    query: &ListQuery,
) -> Response {
    record(shared, method, uri);
    let inner = shared.lock();
    let objects = inner
        .leases
        .iter()
        .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
        .map(|(_, lease)| lease);
    super::plain_list::answer(
        query,
        "leases",
        ("LeaseList", "coordination.k8s.io/v1"),
        inner.resource_version,
        objects,
    )
}

async fn update(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri);
    let mut object = match parse(&body, Some(&name)) {
        Ok(object) => object,
        Err(refused) => return *refused,
    };
    // Checked and written under one lock: two updates from one read cannot both win.
    let mut inner = shared.lock();
    let Some(current) = inner
        .leases
        .get(&(namespace.clone(), name.clone()))
        .cloned()
    else {
        return not_found(&name);
    };
    let Some(version) = object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
    else {
        return invalid(
            &name,
            "metadata.resourceVersion",
            "0x0",
            "must be specified for an update",
        );
    };
    if Some(version) != current["metadata"]["resourceVersion"].as_str() {
        return conflict(
            &name,
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    for key in ["uid", "name", "namespace", "creationTimestamp"] {
        object["metadata"][key] = current["metadata"][key].clone();
    }
    object["apiVersion"] = json!("coordination.k8s.io/v1");
    object["kind"] = json!("Lease");
    inner.resource_version += 1;
    object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
    inner.leases.insert((namespace, name), object.clone());
    axum::Json(object).into_response()
}

async fn delete(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri);
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut inner = shared.lock();
    let key = (namespace, name.clone());
    let Some(current) = inner.leases.get(&key).cloned() else {
        return not_found(&name);
    };
    let stored = current["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    if let Some(wanted) = options["preconditions"]["resourceVersion"].as_str()
        && wanted != stored
    {
        return conflict(
            &name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {wanted}, ResourceVersion in object meta: {stored}"
            ),
        );
    }
    inner.resource_version += 1;
    inner.leases.remove(&key);
    axum::Json(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": GROUP, "kind": "leases", "uid": current["metadata"]["uid"]},
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use crate::KubernetesStandIn;
    use serde_json::{Value, json};

    async fn call(
        kube: &KubernetesStandIn,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(
                method,
                format!(
                    "{}/apis/coordination.k8s.io/v1/namespaces/ns/leases{path}",
                    kube.url()
                ),
            )
            .bearer_auth("stand-in-token");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.json().await.unwrap_or(Value::Null))
    }

    fn lease(name: &str, holder: &str, version: Option<&str>) -> Value {
        let mut lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "podrunner"}},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10}});
        if let Some(version) = version {
            lease["metadata"]["resourceVersion"] = json!(version);
        }
        lease
    }

    /// Two writers from one read: the first wins, the second gets the API server's 409
    /// Conflict `Status`; a second create is 409 AlreadyExists; an update needs a version.
    #[tokio::test]
    async fn one_writer_wins_a_compare_and_swap() {
        use reqwest::Method;
        let kube = KubernetesStandIn::start(1, 1.0).await;
        let (code, created) = call(&kube, Method::POST, "", Some(lease("l", "a", None))).await;
        assert_eq!(code, 201, "{created}");
        let (code, again) = call(&kube, Method::POST, "", Some(lease("l", "a", None))).await;
        assert_eq!(
            (code, again["reason"].as_str()),
            (409, Some("AlreadyExists"))
        );
        assert_eq!(
            again["message"],
            "leases.coordination.k8s.io \"l\" already exists"
        );
        let version = created["metadata"]["resourceVersion"].as_str().unwrap();
        let (first, _) = call(
            &kube,
            Method::PUT,
            "/l",
            Some(lease("l", "b", Some(version))),
        )
        .await;
        let (second, lost) = call(
            &kube,
            Method::PUT,
            "/l",
            Some(lease("l", "c", Some(version))),
        )
        .await;
        assert_eq!((first, second), (200, 409));
        assert_eq!(lost["reason"], "Conflict");
        assert_eq!(
            lost["message"],
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"l\": the object has been modified; please apply your changes to the latest version and try again"
        );
        let (code, read) = call(&kube, Method::GET, "/l", None).await;
        assert_eq!((code, &read["spec"]["holderIdentity"]), (200, &json!("b")));
        let (code, _) = call(&kube, Method::PUT, "/l", Some(lease("l", "d", None))).await;
        assert_eq!(code, 422);
        let (code, list) = call(
            &kube,
            Method::GET,
            "?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dpodrunner",
            None,
        )
        .await;
        assert_eq!((code, list["items"].as_array().unwrap().len()), (200, 1));
        // A delete on a stale version is refused; on the current one it goes through.
        let stale = json!({"preconditions": {"resourceVersion": version}});
        let (code, _) = call(&kube, Method::DELETE, "/l", Some(stale)).await;
        assert_eq!(code, 409);
        let current =
            json!({"preconditions": {"resourceVersion": read["metadata"]["resourceVersion"]}});
        let (code, _) = call(&kube, Method::DELETE, "/l", Some(current)).await;
        assert_eq!(code, 200);
        let (code, gone) = call(&kube, Method::GET, "/l", None).await;
        assert_eq!((code, gone["reason"].as_str()), (404, Some("NotFound")));
    }
}
