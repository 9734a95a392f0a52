//! List and watch: label and field selectors, resourceVersions, bookmarks, watch lists and
//! `timeoutSeconds`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::api::accept;
use super::{Shared, status, watch_history};

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    pub(super) watch: Option<String>,
    #[serde(rename = "resourceVersion")]
    pub(super) resource_version: Option<String>,
    #[serde(rename = "labelSelector")]
    pub(super) label_selector: Option<String>,
    #[serde(rename = "fieldSelector")]
    pub(super) field_selector: Option<String>,
    #[serde(rename = "allowWatchBookmarks")]
    pub(super) allow_watch_bookmarks: Option<String>,
    #[serde(rename = "timeoutSeconds")]
    pub(super) timeout_seconds: Option<u64>,
    #[serde(rename = "sendInitialEvents")]
    pub(super) send_initial_events: Option<String>,
}

pub(super) async fn list_or_watch_all(
    state: State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath(resource): UrlPath<String>,
    query: Query<ListQuery>,
) -> Response {
    list_or_watch_in(state, method, uri, None, resource, query).await
}

pub(super) async fn list_or_watch_all_namespaces(
    state: State<Shared>,
    method: Method,
    uri: Uri,
    query: Query<ListQuery>,
) -> Response {
    list_or_watch_in(state, method, uri, None, "namespaces".into(), query).await
}

pub(super) async fn list_or_watch(
    state: State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource)): UrlPath<(String, String)>,
    query: Query<ListQuery>,
) -> Response {
    list_or_watch_in(state, method, uri, Some(namespace), resource, query).await
}

/// A parsed label or field selector: every requirement must hold.
pub(super) struct Selector(Vec<(String, Requirement)>);

enum Requirement {
    Equals(String),
    NotEquals(String),
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
}

impl Selector {
    pub(super) fn parse(text: Option<&str>) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        let text = text.unwrap_or_default();
        // Split on commas outside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let rest = rest.trim();
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("unable to parse requirement: {part}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
            };
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                (
                    k.trim().to_owned(),
                    Requirement::NotEquals(v.trim().to_owned()),
                )
            } else if let Some((k, v)) = part.split_once("==") {
                (
                    k.trim().to_owned(),
                    Requirement::Equals(v.trim().to_owned()),
                )
            } else if let Some((k, v)) = part.split_once('=') {
                (
                    k.trim().to_owned(),
                    Requirement::Equals(v.trim().to_owned()),
                )
            } else if let Some((k, v)) = part.split_once(" notin ") {
                (k.trim().to_owned(), Requirement::NotIn(set(v)?))
            } else if let Some((k, v)) = part.split_once(" in ") {
                (k.trim().to_owned(), Requirement::In(set(v)?))
            } else if let Some(k) = part.strip_prefix('!') {
                (k.trim().to_owned(), Requirement::NotExists)
            } else {
                (part.to_owned(), Requirement::Exists)
            };
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    pub(super) fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|(key, requirement)| {
            let value = lookup(key);
            match requirement {
                Requirement::Equals(v) => value.as_deref() == Some(v.as_str()),
                Requirement::NotEquals(v) => value.as_deref() != Some(v.as_str()),
                Requirement::Exists => value.is_some(),
                Requirement::NotExists => value.is_none(),
                Requirement::In(set) => value.is_some_and(|v| set.contains(&v)),
                Requirement::NotIn(set) => value.is_none_or(|v| !set.contains(&v)),
            }
        })
    }
}

struct Filter {
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn matches(&self, namespace: &str, object: &Value) -> bool {
        if self.namespace.as_deref().is_some_and(|n| n != namespace) {
            return false;
        }
        self.labels.matches(|key| {
            object["metadata"]["labels"][key]
                .as_str()
                .map(str::to_owned)
        }) && self.fields.matches(|path| {
            let mut value = object;
            for part in path.split('.') {
                value = &value[part];
            }
            match value {
                Value::String(s) => Some(s.clone()),
                Value::Null => Some(String::new()),
                other => Some(other.to_string()),
            }
        })
    }
}

async fn list_or_watch_in(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    namespace: Option<String>,
    resource: String,
    Query(query): Query<ListQuery>,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let filter = match (
        Selector::parse(query.label_selector.as_deref()),
        Selector::parse(query.field_selector.as_deref()),
    ) {
        (Ok(labels), Ok(fields)) => Filter {
            namespace,
            labels,
            fields,
        },
        (Err(e), _) | (_, Err(e)) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let watch = matches!(query.watch.as_deref(), Some("true" | "1"));
    if !watch {
        let inner = shared.lock();
        let items: Vec<Value> = inner
            .objects
            .iter()
            .filter(|((k, ns, _), v)| *k == kind && filter.matches(ns, v))
            .map(|(_, v)| v.clone())
            .collect();
        return axum::Json(json!({
            "kind": format!("{}List", kind.name()), "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.resource_version.to_string()},
            "items": items,
        }))
        .into_response();
    }
    let bookmarks = matches!(query.allow_watch_bookmarks.as_deref(), Some("true" | "1"));
    let timeout = Duration::from_secs(query.timeout_seconds.unwrap_or(1800));
    // A watch list (`sendInitialEvents=true`, KEP-3157, `staging/src/k8s.io/apiserver/pkg/
    // storage/cacher/cacher.go`): the current objects as ADDED, then a bookmark annotated
    // `k8s.io/initial-events-end`, then the changes; the resource version is a lower bound
    // (`resourceVersionMatch=NotOlderThan`) and the stand-in's state is always the newest.
    let initial_events = matches!(query.send_initial_events.as_deref(), Some("true"));
    let since: Option<u64> = query
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0" && !initial_events)
        .and_then(|rv| rv.parse().ok());
    if let Some(refused) = watch_history::refuse(&shared, since) {
        return refused;
    }
    let mut ended = watch_history::ended(&shared);
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(256);
    let (mut changes, backlog, current) = {
        let inner = shared.lock();
        let changes = shared.changes.subscribe();
        let backlog: Vec<Value> = match since {
            Some(since) => inner
                .history
                .iter()
                .filter(|c| {
                    c.resource_version > since
                        && c.kind == kind
                        && filter.matches(&c.namespace, &c.object)
                })
                .map(|c| json!({"type": c.kind_of_change, "object": c.object}))
                .collect(),
            None => inner
                .objects
                .iter()
                .filter(|((k, ns, _), v)| *k == kind && filter.matches(ns, v))
                .map(|(_, v)| json!({"type": "ADDED", "object": v}))
                .collect(),
        };
        let mut backlog = backlog;
        if initial_events {
            backlog.push(json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": "v1", "metadata": {
                "resourceVersion": inner.resource_version.to_string(),
                "annotations": {"k8s.io/initial-events-end": "true"}}}}));
        }
        (changes, backlog, inner.resource_version)
    };
    let shared_for_task = shared.clone();
    tokio::spawn(async move {
        let line = |value: &Value| {
            let mut bytes = serde_json::to_vec(value).unwrap_or_default();
            bytes.push(b'\n');
            Bytes::from(bytes)
        };
        for event in backlog {
            if sender.send(line(&event)).await.is_err() {
                return;
            }
        }
        let mut last = current.max(since.unwrap_or(0));
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        loop {
            tokio::select! {
                () = &mut deadline => return,
                _ = ended.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = shared_for_task.lock().resource_version.max(last);
                    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}});
                    if sender.send(line(&bookmark)).await.is_err() { return; }
                }
                change = changes.recv() => match change {
                    Ok(change) => {
                        if change.resource_version <= last { continue; }
                        last = change.resource_version;
                        if change.kind == kind && filter.matches(&change.namespace, &change.object) {
                            let event = json!({"type": change.kind_of_change, "object": change.object});
                            if sender.send(line(&event)).await.is_err() { return; }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version"}});
                        let _ = sender.send(line(&gone)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|item| item.map(Ok::<Bytes, std::convert::Infallible>))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
