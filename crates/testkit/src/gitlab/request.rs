//! `POST jobs/request`: `API::Ci::Runner` (gitlabhq/gitlabhq `lib/api/ci/runner.rb`), the
//! acquisition flow of `lib/api/ci/helpers/job_request.rb`, and `Ci::RegisterJobService`
//! (`app/services/ci/register_job_service.rb`); Workhorse's long polling in front of it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    Endpoint, Fault, Inner, Shared, features, forbidden, json_response, lifecycle, record,
    status_response, take_fault,
};

/// Answers a job request.
pub(super) async fn request_job(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    if let Some(Fault::Status(status, h)) = take_fault(&shared, Endpoint::RequestJob).await {
        return status_response(status, &h);
    }
    {
        let mut inner = shared.lock();
        if inner.rate_limited.0 > 0 {
            inner.rate_limited.0 -= 1;
            let mut response = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"message": {"error": "This endpoint has been requested too many times. Try again later."}}),
            );
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(inner.rate_limited.1));
            return response;
        }
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["token"].as_str().unwrap_or("").to_owned();
    let header_token = headers
        .get("runner-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if header_token != token || !shared.lock().runner_tokens.contains_key(&token) {
        return forbidden();
    }
    let last_update = body["last_update"].as_str().map(str::to_owned);
    let announced = body["info"]["features"].clone();
    let long_poll = shared.lock().long_poll;
    let deadline = tokio::time::Instant::now() + long_poll;
    loop {
        let notified = shared.queued.notified();
        {
            let mut inner = shared.lock();
            lifecycle::expire_ack_waits(inner.jobs.values_mut());
            if inner.conflicts > 0 {
                inner.conflicts -= 1;
                return json_response(StatusCode::CONFLICT, json!({"message": "409 Conflict"}));
            }
            if let Some(id) = pick_next(&mut inner, &announced) {
                inner.queue_version += 1;
                let version = inner.queue_version.to_string();
                let job = inner.jobs.get(&id).expect("picked jobs exist");
                let mut response = json_response(StatusCode::CREATED, job.payload.clone());
                response.headers_mut().insert(
                    "x-gitlab-last-update",
                    HeaderValue::from_str(&version).expect("digits"),
                );
                return response;
            }
            let version = inner.queue_version.to_string();
            // Workhorse holds the request only when the runner is up to date.
            if last_update.as_deref() != Some(version.as_str())
                || tokio::time::Instant::now() >= deadline
            {
                let mut response = StatusCode::NO_CONTENT.into_response();
                response.headers_mut().insert(
                    "x-gitlab-last-update",
                    HeaderValue::from_str(&version).expect("digits"),
                );
                return response;
            }
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `Ci::RegisterJobService#process_queue`: walks the queue; a job the runner's features cannot
/// run is dropped as `runner_unsupported` (and leaves the queue) and the next one is tried.
fn pick_next(inner: &mut Inner, announced: &Value) -> Option<i64> {
    let (two_phase, ack_timeout) = (inner.two_phase_commit, inner.ack_timeout);
    while let Some(id) = inner.queue.pop_front() {
        let supported = {
            let job = inner.jobs.get(&id)?;
            // A job leaving `pending` (canceled, say) leaves `ci_pending_builds` with it
            // (`Ci::UpdateBuildQueueService`, called from the build's state transitions).
            if job.status != "pending" {
                continue;
            }
            features::supported(&features::required(&job.payload, &job.options), announced)
        };
        if !supported {
            let job = inner.jobs.get_mut(&id).expect("queued jobs exist");
            lifecycle::drop_job(job, "runner_unsupported", None);
            continue;
        }
        // Like GitLab, dependencies are resolved when the job is picked.
        let depends_on = inner
            .jobs
            .get(&id)
            .map(|j| j.depends_on.clone())
            .unwrap_or_default();
        let dependencies: Vec<Value> = depends_on
            .iter()
            .filter_map(|dep| inner.jobs.get(dep))
            .map(|dep| {
                let archive = dep
                    .artifacts
                    .iter()
                    .find(|(q, _, _)| q.get("artifact_type").is_none_or(|t| t == "archive"));
                json!({
                    "id": dep.id,
                    "token": dep.token,
                    "name": dep.payload["job_info"]["name"],
                    "artifacts_file": archive.map(|(_, name, bytes)| json!({"filename": name, "size": bytes.len()})),
                })
            })
            .collect();
        let job = inner.jobs.get_mut(&id).expect("queued jobs exist");
        if !dependencies.is_empty() {
            job.payload["dependencies"] = Value::Array(dependencies);
        }
        lifecycle::pick(job, announced, two_phase, ack_timeout);
        return Some(id);
    }
    None
}
