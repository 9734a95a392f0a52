//! The runner endpoints of `API::Ci::Runner` (gitlabhq/gitlabhq `lib/api/ci/runner.rb`,
//! `resource :runners`): `POST /runners` (register with a registration token), `DELETE
//! /runners`, `DELETE /runners/managers`, `POST /runners/verify` and `POST
//! /runners/reset_authentication_token`. Tokens are checked as `authenticate_runner!` does
//! (`lib/api/ci/helpers/runner.rb`): an unknown token is `403 Forbidden`.
//!
//! Not modelled (upstream has them, no podrunner path meets them): `410 Gone` when
//! registration with registration tokens is disallowed, `422` for an orphaned runner, token
//! expiry.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    Endpoint, Fault, Shared, forbidden, json_response, record, status_response, take_fault,
};

/// `POST /runners`: `Ci::Runners::RegisterRunnerService` with the registration token; `201`
/// with `Entities::Ci::RunnerRegistrationDetails` (`id`, `token`, `token_expires_at`), or
/// `403` for a token it does not know.
pub(super) async fn register(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    if let Some(Fault::Status(status, h)) = take_fault(&shared, Endpoint::Register).await {
        return status_response(status, &h);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let mut inner = shared.lock();
    if !inner.registration_tokens.contains(&token) {
        return forbidden();
    }
    let id = inner.next_runner_id;
    inner.next_runner_id += 1;
    let new_token = format!(
        "legacy{id:04}{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    );
    inner.runner_tokens.insert(new_token.clone(), id);
    json_response(
        StatusCode::CREATED,
        json!({"id": id, "token": new_token, "token_expires_at": null}),
    )
}

/// `POST /runners/verify`: `200` with `RunnerRegistrationDetails`; with a `system_id`,
/// `authenticate_runner!` (its `ensure_runner_manager`) records the runner manager, which is
/// how GitLab comes to list one manager per system ID.
pub(super) async fn verify(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    if let Some(Fault::Status(status, h)) = take_fault(&shared, Endpoint::Verify).await {
        return status_response(status, &h);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let system_id = body["system_id"].as_str().unwrap_or("").to_owned();
    let mut inner = shared.lock();
    let Some(id) = inner.runner_tokens.get(&token).copied() else {
        return forbidden();
    };
    if !system_id.is_empty() && !inner.managers.contains(&(token.clone(), system_id.clone())) {
        inner.managers.push((token.clone(), system_id));
    }
    json_response(
        StatusCode::OK,
        json!({"id": id, "token": token, "token_expires_at": null}),
    )
}

/// `DELETE /runners`: `Ci::Runners::UnregisterRunnerService`, the runner and its managers go;
/// `204`, or `403` for an unknown token.
pub(super) async fn unregister(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("");
    let mut inner = shared.lock();
    match inner.runner_tokens.remove(token) {
        Some(_) => {
            inner.managers.retain(|(t, _)| t != token);
            StatusCode::NO_CONTENT.into_response()
        }
        None => forbidden(),
    }
}

/// `DELETE /runners/managers`: only the manager `system_id` goes (`204`); `404 Runner manager
/// not found` when the runner has no such manager (`find_by_system_xid`, `not_found!`), `403`
/// for an unknown token; a missing `system_id` is Grape's `400` (`requires :system_id`).
pub(super) async fn unregister_manager(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Grape validates the declared parameters before the endpoint runs.
    let Some(system_id) = body["system_id"].as_str().map(str::to_owned) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "system_id is missing"}),
        );
    };
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let mut inner = shared.lock();
    if !inner.runner_tokens.contains_key(&token) {
        return forbidden();
    }
    let manager = (token, system_id);
    if !inner.managers.contains(&manager) {
        // `not_found!('Runner manager not found')` of `lib/api/helpers.rb`.
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"message": "404 Runner manager not found Not Found"}),
        );
    }
    inner.managers.retain(|m| m != &manager);
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /runners/reset_authentication_token`: `ResetAuthenticationTokenService`, then
/// `201` (Grape's default for a POST) with `Entities::Ci::ResetTokenResult`.
pub(super) async fn reset_token(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let mut inner = shared.lock();
    let Some(id) = inner.runner_tokens.remove(&token) else {
        return forbidden();
    };
    let new_token = format!("glrt-reset{:016x}", rand::random::<u64>());
    inner.runner_tokens.insert(new_token.clone(), id);
    json_response(
        StatusCode::CREATED,
        json!({"token": new_token, "token_expires_at": null}),
    )
}
