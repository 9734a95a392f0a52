//! Create, read, merge patch, replace and delete of stored objects, with the defaults and
//! admission a pod gets on creation.

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde_json::{Value, json};
use std::time::Duration;

use super::api::accept;
use super::scheduler::{fargate_profile, run_pod};
use super::{
    Kind, Shared, admission, commit, images, json_body, namespaces, not_found, now, remove, signal,
    status, validation,
};

pub(super) async fn create(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let mut object = match json_body(&body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    // The typed model is the schema.
    let typed = match kind {
        Kind::Pod => serde_json::from_value::<Pod>(object.clone()).map(|_| ()),
        Kind::Secret => serde_json::from_value::<Secret>(object.clone()).map(|_| ()),
        Kind::Event => {
            serde_json::from_value::<k8s_openapi::api::core::v1::Event>(object.clone()).map(|_| ())
        }
        Kind::Namespace => {
            serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(object.clone())
                .map(|_| ())
        }
        Kind::PodDisruptionBudget => serde_json::from_value::<
            k8s_openapi::api::policy::v1::PodDisruptionBudget,
        >(object.clone())
        .map(|_| ()),
    };
    if let Err(e) = typed {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("{} is invalid: {e}", kind.name()),
        );
    }
    if object["metadata"]["namespace"]
        .as_str()
        .is_some_and(|n| n != namespace)
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the object does not match the namespace of the request",
        );
    }
    let mut inner = shared.lock();
    let name = match object["metadata"]["name"].as_str() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                inner.uid_counter += 1;
                format!("{prefix}{:05x}", inner.uid_counter * 7919 % 0xfffff)
            }
            None => {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    &format!("{}: metadata.name: Required value", kind.name()),
                );
            }
        },
    };
    // Mutating admission (NamespaceLifecycle among it) runs before validation.
    if let Some(refused) = namespaces::admit(&inner, &namespace, &resource, &name) {
        return refused;
    }
    if !valid_name(&name) {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "{} \"{name}\" is invalid: metadata.name: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                kind.name()
            ),
        );
    }
    if let Err(rejection) = validation::admit(kind.name(), &name, &object) {
        return (rejection.code, axum::Json(rejection.body)).into_response();
    }
    if kind == Kind::Pod
        && let Some(refused) = admission::admit(&inner, &namespace, &name, &object)
    {
        return refused;
    }
    if inner
        .objects
        .contains_key(&(kind, namespace.clone(), name.clone()))
    {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", kind.name().to_lowercase()),
        );
    }
    inner.uid_counter += 1;
    let uid = format!("00000000-0000-4000-8000-{:012x}", inner.uid_counter);
    object["apiVersion"] = json!("v1");
    object["kind"] = json!(kind.name());
    object["metadata"]["name"] = json!(name);
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(uid);
    object["metadata"]["creationTimestamp"] = json!(now());
    if kind == Kind::Pod {
        if object["spec"]["restartPolicy"].is_null() {
            object["spec"]["restartPolicy"] = json!("Always");
        }
        if object["spec"]["schedulerName"].is_null() {
            object["spec"]["schedulerName"] = json!("default-scheduler");
        }
        images::default_pod_pull_policies(&mut object);
        object["status"] = json!({"phase": "Pending", "qosClass": qos_class(&object)});
        // The Fargate admission webhook.
        if let Some(profile) = fargate_profile(&inner.profiles, &namespace, &object) {
            object["spec"]["schedulerName"] = json!("fargate-scheduler");
            object["metadata"]["labels"]["eks.amazonaws.com/fargate-profile"] = json!(profile);
        }
    }
    let stored = commit(&shared, &mut inner, kind, &namespace, "ADDED", object);
    drop(inner);
    if kind == Kind::Pod {
        tokio::spawn(run_pod(
            shared.clone(),
            namespace.clone(),
            name.clone(),
            uid,
        ));
    }
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn qos_class(pod: &Value) -> &'static str {
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let any = containers
        .iter()
        .any(|c| !c["resources"]["requests"].is_null() || !c["resources"]["limits"].is_null());
    if any { "Burstable" } else { "BestEffort" }
}

pub(super) async fn read(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource, name)): UrlPath<(String, String, String)>,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    match shared.lock().objects.get(&(kind, namespace, name.clone())) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => not_found(kind, &name),
    }
}

pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    if let Some(map) = target.as_object_mut() {
                        map.remove(key);
                    }
                } else {
                    merge_patch(&mut target[key], value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

pub(super) async fn patch(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    UrlPath((namespace, resource, name)): UrlPath<(String, String, String)>,
    body: Bytes,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !matches!(
        content_type,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the stand-in accepts merge patches only, not {content_type:?}"),
        );
    }
    let patch = match json_body(&body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    let mut inner = shared.lock();
    let Some(mut object) = inner
        .objects
        .get(&(kind, namespace.clone(), name.clone()))
        .cloned()
    else {
        return not_found(kind, &name);
    };
    let identity = (
        object["metadata"]["uid"].clone(),
        object["metadata"]["name"].clone(),
    );
    merge_patch(&mut object, &patch);
    object["metadata"]["uid"] = identity.0;
    object["metadata"]["name"] = identity.1;
    let stored = commit(&shared, &mut inner, kind, &namespace, "MODIFIED", object);
    axum::Json(stored).into_response()
}

pub(super) async fn replace(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource, name)): UrlPath<(String, String, String)>,
    body: Bytes,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let mut object = match json_body(&body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    let mut inner = shared.lock();
    let Some(current) = inner
        .objects
        .get(&(kind, namespace.clone(), name.clone()))
        .cloned()
    else {
        return not_found(kind, &name);
    };
    if let Some(rv) = object["metadata"]["resourceVersion"].as_str()
        && Some(rv) != current["metadata"]["resourceVersion"].as_str()
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    for key in ["uid", "name", "namespace", "creationTimestamp"] {
        object["metadata"][key] = current["metadata"][key].clone();
    }
    object["apiVersion"] = json!("v1");
    object["kind"] = json!(kind.name());
    if kind == Kind::Pod {
        object["spec"] = current["spec"].clone();
        object["status"] = current["status"].clone();
    }
    let stored = commit(&shared, &mut inner, kind, &namespace, "MODIFIED", object);
    axum::Json(stored).into_response()
}

#[derive(serde::Deserialize, Default)]
pub(super) struct DeleteQuery {
    #[serde(rename = "gracePeriodSeconds")]
    pub(super) grace_period_seconds: Option<i64>,
}

pub(super) async fn delete(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource, name)): UrlPath<(String, String, String)>,
    Query(query): Query<DeleteQuery>,
    body: Bytes,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let grace = options["gracePeriodSeconds"]
        .as_i64()
        .or(query.grace_period_seconds);
    let mut inner = shared.lock();
    let Some(mut object) = inner
        .objects
        .get(&(kind, namespace.clone(), name.clone()))
        .cloned()
    else {
        return not_found(kind, &name);
    };
    let uid = object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let running = kind == Kind::Pod
        && inner
            .runtimes
            .get(&uid)
            .is_some_and(|r| !r.pids.is_empty() || r.simulated_running > 0);
    if running {
        let grace = grace
            .or(object["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0);
        if object["metadata"]["deletionTimestamp"].is_null() {
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let stored = commit(&shared, &mut inner, kind, &namespace, "MODIFIED", object);
            if let Some(runtime) = inner.runtimes.get(&uid) {
                runtime.stop.notify_waiters();
                let pids: Vec<u32> = runtime.pids.values().copied().collect();
                tokio::spawn(async move {
                    for pid in &pids {
                        signal(*pid, rustix::process::Signal::TERM);
                    }
                    tokio::time::sleep(Duration::from_secs(grace as u64)).await;
                    for pid in &pids {
                        signal(*pid, rustix::process::Signal::KILL);
                    }
                });
            }
            return axum::Json(stored).into_response();
        }
        return axum::Json(object).into_response();
    }
    remove(&shared, &mut inner, kind, &namespace, object.clone());
    axum::Json(object).into_response()
}
