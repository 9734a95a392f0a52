//! Namespaces: the `Namespace` object, the NamespaceLifecycle admission plugin and the
//! namespace controller's deletion.
//!
//! - Objects (`/api/v1/namespaces`, cluster-scoped): create, get, list and watch (through the
//!   common store), merge patch, and delete. A created namespace is `Active` with the
//!   `kubernetes` finalizer (`pkg/registry/core/namespace/strategy.go`, `PrepareForCreate`)
//!   and the immutable label `kubernetes.io/metadata.name: <name>` the API server sets on every
//!   namespace (`pkg/registry/core/namespace/strategy.go`, the `NamespaceDefaultLabelName`
//!   feature, on since 1.21). Its labels feed PodSecurity admission (module `admission`).
//! - Deletion (`pkg/registry/core/namespace/storage/storage.go`, `Delete`): the namespace gets
//!   a `deletionTimestamp` and phase `Terminating` and stays while anything is in it; the
//!   namespace controller (`pkg/controller/namespace/deletion/namespaced_resources_deleter.go`)
//!   deletes every object in it, pods with their grace period, and once none is left removes
//!   its finalizer and the namespace is gone.
//! - NamespaceLifecycle (`plugin/pkg/admission/namespace/lifecycle/admission.go`): creating an
//!   object in a namespace that does not exist is answered 404 `namespaces "x" not found`
//!   (`errors.NewNotFound(v1.Resource("namespaces"), ns)`); in a `Terminating` namespace it is
//!   403 `<resource> "<name>" is forbidden: unable to create new content in namespace x because
//!   it is being terminated`, with the `NamespaceTerminating` cause on `metadata.namespace`;
//!   `default`, `kube-system` and `kube-public` may not be deleted (`immortalNamespaces`:
//!   403 `this namespace may not be deleted`). The system namespaces (`default`,
//!   `kube-system`, `kube-public`, `kube-node-lease`) exist from the start, as the API server's
//!   system-namespaces controller makes them (`pkg/controlplane/controller/systemnamespaces`).
//!
//! The plugin is on once a test adds a namespace ([`super::KubernetesStandIn::add_namespace`])
//! or asks for it ([`super::KubernetesStandIn::enforce_namespaces`]); until then every
//! namespace is taken as existing, as on an API server started with
//! `--disable-admission-plugins=NamespaceLifecycle`, so tests that do not care about
//! namespaces are unaffected. Not modelled: the `default` ServiceAccount the serviceaccounts
//! controller adds to a new namespace (and ServiceAccount admission refusing pods until it
//! exists), namespace conditions during deletion, and finalizers other than `kubernetes`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Inner, Kind, Shared};

/// The namespaces the API server makes itself.
const SYSTEM: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];
/// The namespaces NamespaceLifecycle refuses to delete.
const IMMORTAL: [&str; 3] = ["default", "kube-system", "kube-public"];
/// The label the API server puts on every namespace.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether NamespaceLifecycle is on.
#[derive(Default)]
pub(super) struct Lifecycle {
    enforced: bool,
}

fn key(name: &str) -> (Kind, String, String) {
    (Kind::Namespace, String::new(), name.to_owned())
}

/// A new Namespace object as the API server stores it.
fn prepare(mut object: Value, name: &str) -> Value {
    object["apiVersion"] = json!("v1");
    object["kind"] = json!("Namespace");
    object["metadata"]["name"] = json!(name);
    object["metadata"]["labels"][NAME_LABEL] = json!(name);
    object["metadata"]["creationTimestamp"] = json!(super::now());
    object["spec"] = json!({"finalizers": ["kubernetes"]});
    object["status"] = json!({"phase": "Active"});
    object
}

/// Stores a namespace (the caller checked it is new) and copies its labels to PodSecurity
/// admission.
fn store(shared: &Shared, inner: &mut Inner, mut object: Value) -> Value {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    inner.uid_counter += 1;
    object["metadata"]["uid"] = json!(format!(
        "00000000-0000-4000-9000-{:012x}",
        inner.uid_counter
    ));
    sync_labels(inner, &name, &object);
    super::commit(shared, inner, Kind::Namespace, "", "ADDED", object)
}

fn sync_labels(inner: &mut Inner, name: &str, object: &Value) {
    let labels: BTreeMap<String, String> = object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    inner.namespace_labels.insert(name.to_owned(), labels);
}

/// Turns NamespaceLifecycle on and makes the system namespaces.
fn enforce(shared: &Shared, inner: &mut Inner) {
    if inner.namespace_lifecycle.enforced {
        return;
    }
    inner.namespace_lifecycle.enforced = true;
    for name in SYSTEM {
        if !inner.objects.contains_key(&key(name)) {
            store(shared, inner, prepare(json!({"metadata": {}}), name));
        }
    }
}

fn terminating_status(resource: &str, name: &str, namespace: &str) -> Response {
    let message = if name.is_empty() {
        format!(
            "{resource} is forbidden: unable to create new content in namespace {namespace} because it is being terminated"
        )
    } else {
        format!(
            "{resource} {name:?} is forbidden: unable to create new content in namespace {namespace} because it is being terminated"
        )
    };
    (
        StatusCode::FORBIDDEN,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Forbidden",
            "details": {"name": name, "kind": resource, "causes": [{
                "reason": "NamespaceTerminating",
                "message": format!("namespace {namespace} is being terminated"),
                "field": "metadata.namespace",
            }]},
            "code": 403,
        })),
    )
        .into_response()
}

fn namespace_not_found(namespace: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("namespaces {namespace:?} not found"), "reason": "NotFound",
            "details": {"name": namespace, "kind": "namespaces"}, "code": 404,
        })),
    )
        .into_response()
}

/// NamespaceLifecycle for the creation of `name` of `resource` in `namespace`: the refusal,
/// if there is one.
pub(super) fn admit(
    inner: &Inner,
    namespace: &str,
    resource: &str,
    name: &str,
) -> Option<Response> {
    if !inner.namespace_lifecycle.enforced {
        return None;
    }
    match inner.objects.get(&key(namespace)) {
        None => Some(namespace_not_found(namespace)),
        Some(object) if object["status"]["phase"] == "Terminating" => {
            Some(terminating_status(resource, name, namespace))
        }
        Some(_) => None,
    }
}

/// `POST /api/v1/namespaces`.
pub(super) async fn create(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    super::record(&shared, &method, &uri);
    let object = match super::json_body(&body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    if let Err(e) = serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(object.clone())
    {
        return super::status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Namespace is invalid: {e}"),
        );
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // ValidateNamespace: the name is a DNS-1123 label (`ValidateNamespaceName`).
    if let Err(why) = super::validation::dns1123_label(&name) {
        return super::status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "Namespace {name:?} is invalid: metadata.name: Invalid value: {name:?}: {why}"
            ),
        );
    }
    let mut inner = shared.lock();
    enforce(&shared, &mut inner);
    if inner.objects.contains_key(&key(&name)) {
        return super::status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("namespaces {name:?} already exists"),
        );
    }
    let stored = store(&shared, &mut inner, prepare(object, &name));
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

/// `GET /api/v1/namespaces/{name}`.
pub(super) async fn read(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath(name): UrlPath<String>,
) -> Response {
    super::record(&shared, &method, &uri);
    match shared.lock().objects.get(&key(&name)) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => namespace_not_found(&name),
    }
}

/// `PATCH /api/v1/namespaces/{name}` (merge patches): labels and annotations.
pub(super) async fn patch(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    super::record(&shared, &method, &uri);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !matches!(
        content_type,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return super::status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the stand-in accepts merge patches only, not {content_type:?}"),
        );
    }
    let patch = match super::json_body(&body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    let mut inner = shared.lock();
    let Some(mut object) = inner.objects.get(&key(&name)).cloned() else {
        return namespace_not_found(&name);
    };
    let kept = (
        object["metadata"]["uid"].clone(),
        object["status"].clone(),
        object["spec"].clone(),
    );
    super::merge_patch(&mut object, &patch);
    object["metadata"]["uid"] = kept.0;
    object["metadata"]["name"] = json!(name);
    object["metadata"]["labels"][NAME_LABEL] = json!(name);
    object["status"] = kept.1;
    object["spec"] = kept.2;
    sync_labels(&mut inner, &name, &object);
    let stored = super::commit(&shared, &mut inner, Kind::Namespace, "", "MODIFIED", object);
    axum::Json(stored).into_response()
}

/// `DELETE /api/v1/namespaces/{name}`: `Terminating` now, gone once it is empty.
pub(super) async fn delete(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath(name): UrlPath<String>,
) -> Response {
    super::record(&shared, &method, &uri);
    let mut inner = shared.lock();
    let Some(mut object) = inner.objects.get(&key(&name)).cloned() else {
        return namespace_not_found(&name);
    };
    if inner.namespace_lifecycle.enforced && IMMORTAL.contains(&name.as_str()) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("namespaces {name:?} is forbidden: this namespace may not be deleted"),
                "reason": "Forbidden", "details": {"name": name, "kind": "namespaces"}, "code": 403,
            })),
        )
            .into_response();
    }
    if !object["metadata"]["deletionTimestamp"].is_null() {
        return axum::Json(object).into_response();
    }
    object["metadata"]["deletionTimestamp"] = json!(super::now());
    object["status"]["phase"] = json!("Terminating");
    let stored = super::commit(&shared, &mut inner, Kind::Namespace, "", "MODIFIED", object);
    drop(inner);
    tokio::spawn(controller(shared.clone(), name));
    axum::Json(stored).into_response()
}

/// The namespace controller: deletes what is in the namespace, waits until nothing is, then
/// removes the namespace.
async fn controller(shared: Shared, namespace: String) {
    let mut asked: std::collections::HashSet<(Kind, String)> = Default::default();
    loop {
        let contents: Vec<(Kind, String, Value)> = shared
            .lock()
            .objects
            .iter()
            .filter(|((kind, ns, _), _)| *kind != Kind::Namespace && *ns == namespace)
            .map(|((kind, _, name), v)| (*kind, name.clone(), v.clone()))
            .collect();
        if contents.is_empty() {
            break;
        }
        for (kind, name, object) in contents {
            if !asked.insert((kind, name.clone())) {
                continue;
            }
            if kind == Kind::Pod {
                // Through the API, as the controller does: a running pod gets its grace period.
                let uri: Uri = format!("/api/v1/namespaces/{namespace}/pods/{name}")
                    .parse()
                    .unwrap_or_default();
                let _ = super::delete(
                    State(shared.clone()),
                    Method::DELETE,
                    uri,
                    UrlPath((namespace.clone(), "pods".into(), name)),
                    axum::extract::Query(super::DeleteQuery::default()),
                    Bytes::new(),
                )
                .await;
            } else {
                let mut inner = shared.lock();
                if inner
                    .objects
                    .contains_key(&(kind, namespace.clone(), name.clone()))
                {
                    super::remove(&shared, &mut inner, kind, &namespace, object);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut inner = shared.lock();
    if let Some(object) = inner.objects.get(&key(&namespace)).cloned() {
        inner.namespace_labels.remove(&namespace);
        super::commit(&shared, &mut inner, Kind::Namespace, "", "DELETED", object);
    }
}

impl super::KubernetesStandIn {
    /// Creates namespace `name` with `labels` (as an administrator would) and turns
    /// NamespaceLifecycle on: from now on objects can only be created in namespaces that
    /// exist and are not being deleted.
    pub fn add_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let mut inner = self.shared.lock();
        enforce(&self.shared, &mut inner);
        if inner.objects.contains_key(&key(name)) {
            return;
        }
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        store(
            &self.shared,
            &mut inner,
            prepare(json!({"metadata": {"labels": labels}}), name),
        );
    }

    /// Turns NamespaceLifecycle on with only the system namespaces.
    pub fn enforce_namespaces(&self) {
        let mut inner = self.shared.lock();
        enforce(&self.shared, &mut inner);
    }

    /// The names of the namespaces that exist (being deleted or not).
    pub fn namespaces(&self) -> Vec<String> {
        self.shared
            .lock()
            .objects
            .keys()
            .filter(|(kind, _, _)| *kind == Kind::Namespace)
            .map(|(_, _, name)| name.clone())
            .collect()
    }
}
