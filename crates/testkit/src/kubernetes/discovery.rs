//! API discovery, so that clients written by others (kubectl) find the stand-in's resources.
//!
//! - `GET /api`: the legacy core group's `APIVersions` (`v1`), as
//!   `staging/src/k8s.io/apiserver/pkg/endpoints/discovery/legacy.go` serves it.
//! - `GET /apis`: the `APIGroupList` of named groups
//!   (`staging/src/k8s.io/apiserver/pkg/endpoints/discovery/root.go`); the stand-in serves no
//!   named group, so it is empty, and `/apis/<group>/<version>` is 404.
//! - `GET /api/v1`: the `APIResourceList` of what the stand-in serves under `/api/v1`, each
//!   resource with the fields `staging/src/k8s.io/apiserver/pkg/endpoints/installer.go` fills
//!   (`name`, `singularName`, `namespaced`, `kind`, `verbs`, `shortNames`, `categories`), and
//!   verbs limited to the handlers the stand-in has (no `deletecollection`).
//!
//! Not served: aggregated discovery (`application/json;g=apidiscovery.k8s.io;v=v2`, which
//! clients fall back from when the answer is plain `application/json`, as
//! `staging/src/k8s.io/client-go/discovery/discovery_client.go` does) and OpenAPI
//! (`/openapi/v2`, `/openapi/v3` are 404): `kubectl apply` and `kubectl create` need
//! `--validate=false` (see docs/testing.md).

use axum::extract::{Path as UrlPath, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;

/// `GET /api`.
pub(super) async fn api(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    super::record(&shared, &method, &uri);
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    axum::Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    }))
    .into_response()
}

/// `GET /apis`.
pub(super) async fn apis(State(shared): State<Shared>, method: Method, uri: Uri) -> Response {
    super::record(&shared, &method, &uri);
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})).into_response()
}

/// `GET /apis/{group}/{version}`: no named group is served.
pub(super) async fn group_version(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((_group, _version)): UrlPath<(String, String)>,
) -> Response {
    super::record(&shared, &method, &uri);
    super::status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn resource(
    name: &str,
    singular: &str,
    namespaced: bool,
    kind: &str,
    verbs: &[&str],
    short: &[&str],
) -> Value {
    let mut value = json!({
        "name": name, "singularName": singular, "namespaced": namespaced, "kind": kind,
        "verbs": verbs,
    });
    if !short.is_empty() {
        value["shortNames"] = json!(short);
    }
    value
}

/// `GET /api/v1`.
pub(super) async fn core_v1(State(shared): State<Shared>, method: Method, uri: Uri) -> Response {
    super::record(&shared, &method, &uri);
    let object = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    let mut pods = resource("pods", "pod", true, "Pod", &object, &["po"]);
    pods["categories"] = json!(["all"]);
    let mut eviction = resource("pods/eviction", "", true, "Eviction", &["create"], &[]);
    eviction["group"] = json!("policy");
    eviction["version"] = json!("v1");
    axum::Json(json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource("events", "event", true, "Event", &object, &["ev"]),
            resource(
                "namespaces",
                "namespace",
                false,
                "Namespace",
                &["create", "delete", "get", "list", "patch", "watch"],
                &["ns"],
            ),
            pods,
            eviction,
            resource("pods/exec", "", true, "PodExecOptions", &["create", "get"], &[]),
            resource("pods/log", "", true, "Pod", &["get"], &[]),
            resource("secrets", "secret", true, "Secret", &object, &[]),
        ],
    }))
    .into_response()
}
