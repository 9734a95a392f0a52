//! The list answer of a kind the stand-in keeps but does not watch (Leases,
//! PodDisruptionBudgets): the objects of one namespace matching `labelSelector`, as a
//! `<Kind>List` carrying the store's resourceVersion (`k8s.io/apimachinery`
//! `pkg/apis/meta/v1/types.go`, `ListMeta`). Watching these kinds is not served: the stand-in
//! answers 405 rather than pretend (upstream serves it; no podrunner code watches them).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ListQuery, Selector};

/// `objects` filtered by the query's label selector, as a list of `kind` (`LeaseList`) in
/// `api_version`; `resource` names the kind in the refusal of a watch.
pub(super) fn answer<'a>(
    query: &ListQuery,
    resource: &str,
    (kind, api_version): (&str, &str),
    resource_version: u64,
    objects: impl Iterator<Item = &'a Value>,
) -> Response {
    if matches!(query.watch.as_deref(), Some("true" | "1")) {
        return super::status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the stand-in does not serve watches of {resource}"),
        );
    }
    let labels = match Selector::parse(query.label_selector.as_deref()) {
        Ok(labels) => labels,
        Err(e) => return super::status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let items: Vec<Value> = objects
        .filter(|o| labels.matches(|key| o["metadata"]["labels"][key].as_str().map(str::to_owned)))
        .cloned()
        .collect();
    axum::Json(json!({
        "kind": kind, "apiVersion": api_version,
        "metadata": {"resourceVersion": resource_version.to_string()},
        "items": items,
    }))
    .into_response()
}
