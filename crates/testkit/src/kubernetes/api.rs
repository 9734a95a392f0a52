//! HTTP routing, request records, `Status` answers and injected connection faults.

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::exec::{pod_exec, pod_log};
use super::objects::{create, delete, patch, read, replace};
use super::watch::{list_or_watch, list_or_watch_all, list_or_watch_all_namespaces};
use super::{
    ApiRequest, ConnectionFault, Kind, Shared, discovery, eviction, leases, namespaces, pdb, rbac,
};

/// A queued connection fault for the next request with this method and path part.
#[derive(Clone, Debug)]
pub(super) struct QueuedFault {
    pub(super) method: String,
    pub(super) path_contains: String,
    pub(super) fault: ConnectionFault,
}

pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(discovery::api))
        .route("/apis", get(discovery::apis))
        .route("/api/v1", get(discovery::core_v1))
        .route("/apis/{group}/{version}", get(discovery::group_version))
        .route("/api/v1/{resource}", get(list_or_watch_all))
        .route(
            "/api/v1/namespaces",
            get(list_or_watch_all_namespaces).post(namespaces::create),
        )
        .route(
            "/api/v1/namespaces/{name}",
            get(namespaces::read)
                .delete(namespaces::delete)
                .patch(namespaces::patch),
        )
        .route(
            "/api/v1/namespaces/{namespace}/{resource}",
            get(list_or_watch).post(create),
        )
        .route(
            "/api/v1/namespaces/{namespace}/{resource}/{name}",
            get(read).delete(delete).patch(patch).put(replace),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            get(pod_log),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            get(pod_exec),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/eviction",
            axum::routing::post(eviction::evict),
        )
        .merge(leases::routes())
        .merge(pdb::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            rbac::filter,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            connection_faults,
        ))
        .with_state(shared)
}

/// Carries out queued [`ConnectionFault`]s (the connection's task unwinds, so the client sees
/// the connection close without an answer), after the answer delay of every request but
/// watches ([`super::KubernetesStandIn::set_answer_delay`]).
async fn connection_faults(
    State(shared): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let delay = shared.lock().answer_delay;
    let watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    if !delay.is_zero() && !watch {
        tokio::time::sleep(delay).await;
    }
    let fault = {
        let mut inner = shared.lock();
        let method = request.method().as_str();
        let path = request.uri().path();
        let found = inner
            .faults
            .iter()
            .position(|f| f.method == method && path.contains(&f.path_contains));
        found.map(|i| inner.faults.remove(i).fault)
    };
    let drop_connection =
        || -> ! { std::panic::resume_unwind(Box::new("injected connection fault")) };
    match fault {
        Some(ConnectionFault::DropBeforeHandling) => drop_connection(),
        Some(ConnectionFault::DropAfterHandling) => {
            let _ = next.run(request).await;
            drop_connection()
        }
        Some(ConnectionFault::EtcdTimeout) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcdserver: request timed out",
        ),
        None => next.run(request).await,
    }
}

pub(super) fn record(shared: &Shared, method: &Method, uri: &Uri) {
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    shared.lock().requests.push(ApiRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        watch,
    });
}

pub(super) fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// Records the request and resolves the resource it names, or answers 404.
pub(super) fn accept(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    resource: &str,
) -> Result<Kind, Box<Response>> {
    record(shared, method, uri);
    // Namespaces are cluster-scoped: `/api/v1/namespaces/{ns}/namespaces` does not exist.
    let namespaced_path = uri.path().starts_with("/api/v1/namespaces/");
    Kind::from_resource(resource)
        .filter(|kind| !(namespaced_path && *kind == Kind::Namespace))
        .ok_or_else(|| {
            Box::new(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ))
        })
}

/// A JSON request body, or a 400 answer.
pub(super) fn json_body(body: &[u8]) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("invalid JSON: {e}"),
        ))
    })
}

pub(super) fn not_found(kind: Kind, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", kind.name().to_lowercase()),
    )
}

pub(super) async fn version(State(shared): State<Shared>, method: Method, uri: Uri) -> Response {
    record(&shared, &method, &uri);
    axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-eks-stand-in", "platform": "linux/amd64"})).into_response()
}
