//! Job artifacts: the runner's upload and download endpoints of `API::Ci::Runner`
//! (gitlabhq/gitlabhq `lib/api/ci/runner.rb`) and the object storage GitLab redirects
//! downloads to.

use std::collections::BTreeMap;

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{
    Endpoint, Fault, Shared, forbidden, json_response, lifecycle, record, status_response,
    take_fault,
};

/// `POST jobs/:id/artifacts` (`lib/api/ci/runner.rb`): `authenticate_job!` (a wrong token,
/// or a job not processing on a runner, is refused as [`lifecycle::refuse_job`] says), the
/// `file` part required (Grape's `requires :file`), then `201` with the body `201`. The
/// query (`artifact_type`, `artifact_format`, `expire_in`) is kept for the tests to read.
/// Not modelled: `413` above the project's maximum artifact size, `405` with artifacts
/// disabled, the `authorize` pre-flight (Workhorse's; runners do not call it).
pub(super) async fn upload(
    State(shared): State<Shared>,
    Path(id): Path<i64>,
    Query(query): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    record(&shared, &method, &uri, &headers, &[]);
    // Read the whole upload first, so an early answer never races the client's body.
    let mut stored = None;
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() == Some("file") {
            let name = field.file_name().unwrap_or("").to_owned();
            match field.bytes().await {
                Ok(bytes) => stored = Some((name, bytes.to_vec())),
                Err(_) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"message": "unreadable file part"}),
                    );
                }
            }
        }
    }
    match take_fault(&shared, Endpoint::UploadArtifact).await {
        Some(Fault::Status(status, h)) => return status_response(status, &h),
        Some(Fault::RedirectToSecondAddress) => {
            let target = format!("{}/somewhere/else?ignored=1", shared.lock().second_address);
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            response
                .headers_mut()
                .insert("location", HeaderValue::from_str(&target).expect("url"));
            return response;
        }
        _ => {}
    }
    let mut inner = shared.lock();
    let Some(job) = inner.jobs.get_mut(&id) else {
        return forbidden();
    };
    let token = headers.get("job-token").and_then(|v| v.to_str().ok());
    if let Some(refused) = lifecycle::refuse_job(job, token, false) {
        return refused;
    }
    let Some((name, bytes)) = stored else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": "400 Bad request - file is missing"}),
        );
    };
    job.artifacts.push((query, name, bytes));
    (StatusCode::CREATED, "201").into_response()
}

/// `GET jobs/:id/artifacts` (`lib/api/ci/runner.rb`, `present_artifacts_file!`): the job's
/// `archive` artifact, as a `302` to object storage (GitLab with remote object storage and
/// `direct_download`, the usual set-up), or `404`. The token checked is the job's own, the
/// one a dependency carries in the payload (`dependencies[].token`), which is what
/// gitlab-runner sends; GitLab's other path (`authenticate_job_via_dependent_job!`, a running
/// dependent job's token) is not modelled.
pub(super) async fn download(
    State(shared): State<Shared>,
    Path(id): Path<i64>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&shared, &method, &uri, &headers, &[]);
    if let Some(Fault::Status(status, h)) = take_fault(&shared, Endpoint::DownloadArtifact).await {
        return status_response(status, &h);
    }
    let mut inner = shared.lock();
    let Some(job) = inner.jobs.get(&id) else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
    };
    if headers.get("job-token").and_then(|v| v.to_str().ok()) != Some(job.token.as_str()) {
        return forbidden();
    }
    let Some((_, _, bytes)) = job
        .artifacts
        .iter()
        .find(|(q, _, _)| q.get("artifact_type").is_none_or(|t| t == "archive"))
        .cloned()
    else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
    };
    let key = format!("job-{id}-{:08x}", rand::random::<u32>());
    inner.object_store.insert(key.clone(), bytes);
    let mut response = StatusCode::FOUND.into_response();
    let location = format!("/object-storage/{key}?X-Amz-Signature=signed");
    response
        .headers_mut()
        .insert("location", HeaderValue::from_str(&location).expect("path"));
    response
}

/// The object storage a download redirects to: the archive under its key, or S3's
/// `NoSuchKey`. A request carrying `JOB-TOKEN` is answered `400`: a check of the runner (a
/// job token must never leave for object storage), not a rule of S3, which would ignore it.
pub(super) async fn object_storage(
    State(shared): State<Shared>,
    Path(key): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&shared, &method, &uri, &headers, &[]);
    if headers.contains_key("job-token") {
        // Object storage must never see a job token.
        return (StatusCode::BAD_REQUEST, "job token sent to object storage").into_response();
    }
    match shared.lock().object_store.get(&key) {
        Some(bytes) => (StatusCode::OK, bytes.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response(),
    }
}
