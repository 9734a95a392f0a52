//! A job's state machine as GitLab runs it: picking (one- or two-phase), dropping, canceling
//! and the expiry of an unacknowledged pick.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Job, forbidden, json_response};

/// How long GitLab waits for a two-phase runner's `state=pending` keep-alive or
/// `state=running` acknowledgement: `RUNNER_ACK_QUEUE_EXPIRY_TIME` (gitlabhq/gitlabhq
/// `lib/gitlab/ci/build/runner_ack_queue.rb`).
pub const RUNNER_ACK_QUEUE_EXPIRY_TIME: Duration = Duration::from_secs(120);

/// `CANCELABLE_STATUSES` (`app/models/concerns/ci/has_status.rb`) plus `manual`, the
/// statuses the `cancel` event moves to `canceled`.
const CANCELABLE: &[&str] = &[
    "created",
    "waiting_for_resource",
    "preparing",
    "waiting_for_callback",
    "pending",
    "running",
    "scheduled",
    "manual",
];

/// Gives a queued job to a runner (`Ci::RegisterJobService#assign_runner!`): `run!` at once,
/// or, for a runner announcing `two_phase_job_commit`, the job stays `pending` for that
/// runner until it acknowledges (`docs/development/cicd/two_phase_commit.md`; the request spec
/// `spec/requests/api/ci/runner/jobs_request_post_two_phase_commit_spec.rb`). A runner
/// announcing `cancel_gracefully` has it recorded on the build (`persist_runtime_features`).
pub fn pick(job: &mut Job, features: &Value, two_phase_enabled: bool, ack_timeout: Duration) {
    job.cancel_gracefully = truthy(&features["cancel_gracefully"]);
    job.runner_features = features.clone();
    if two_phase_enabled && truthy(&features["two_phase_job_commit"]) {
        job.ack_deadline = Some(Instant::now() + ack_timeout);
    } else {
        job.status = "running".to_owned();
    }
}

/// Whether the job is assigned to a runner that has not acknowledged it yet
/// (`runner_ack_wait_status == :waiting`).
pub fn waiting_for_ack(job: &Job) -> bool {
    job.status == "pending" && job.ack_deadline.is_some()
}

/// `state=pending` while waiting: `heartbeat_runner_ack_wait` renews the wait.
pub fn keep_alive(job: &mut Job, ack_timeout: Duration) {
    job.ack_deadline = Some(Instant::now() + ack_timeout);
}

/// `state=running` while waiting: `build.run!`.
pub fn acknowledge(job: &mut Job) {
    job.ack_deadline = None;
    job.status = "running".to_owned();
}

/// Drops the jobs whose acknowledgement did not come in time: `Ci::RetryStuckWaitingJobWorker`
/// runs `Ci::RetryWaitingJobService` (`app/services/ci/retry_waiting_job_service.rb`), which
/// drops the build as `runner_provisioning_timeout`. (GitLab may then retry it as a new job;
/// the stand-in does not model automatic retries.)
pub fn expire_ack_waits<'a>(jobs: impl Iterator<Item = &'a mut Job>) {
    let now = Instant::now();
    for job in jobs {
        if waiting_for_ack(job) && job.ack_deadline.is_some_and(|d| d <= now) {
            job.ack_deadline = None;
            drop_job(job, "runner_provisioning_timeout", None);
        }
    }
}

/// The `drop` event (`app/models/commit_status.rb` state machine): `canceling` becomes
/// `canceled` ("runner returns success/failed"); an active job becomes `failed` with the
/// reason (`drop_with_exit_code!` defaults it to `unknown_failure`).
pub fn drop_job(job: &mut Job, reason: &str, exit_code: Option<i64>) {
    match job.status.as_str() {
        "canceling" => job.status = "canceled".to_owned(),
        "created"
        | "waiting_for_resource"
        | "preparing"
        | "waiting_for_callback"
        | "pending"
        | "running"
        | "manual"
        | "scheduled" => {
            job.status = "failed".to_owned();
            job.failure_reason = Some(reason.to_owned());
            job.exit_code = exit_code;
        }
        _ => {}
    }
}

/// The `success` event: `canceling` becomes `canceled`.
pub fn succeed(job: &mut Job) {
    match job.status.as_str() {
        "canceling" => job.status = "canceled".to_owned(),
        "created"
        | "waiting_for_resource"
        | "preparing"
        | "waiting_for_callback"
        | "pending"
        | "running" => job.status = "success".to_owned(),
        _ => {}
    }
}

/// The `cancel` event, as a user's cancel does: a running job of a runner that announced
/// `cancel_gracefully` (`Ci::Build#supports_canceling?`) becomes `canceling`; any cancelable
/// job becomes `canceled`.
pub fn cancel(job: &mut Job) {
    if job.status == "running" && job.cancel_gracefully {
        job.status = "canceling".to_owned();
    } else if CANCELABLE.contains(&job.status.as_str()) {
        job.status = "canceled".to_owned();
        job.ack_deadline = None;
    }
}

/// The `force_cancel` event: `canceling` becomes `canceled` (`supports_force_cancel?` is
/// not modelled: always allowed).
pub fn force_cancel(job: &mut Job) {
    if job.status == "canceling" {
        job.status = "canceled".to_owned();
    }
}

/// Ruby truthiness of a JSON value as Grape hands it over.
pub fn truthy(value: &Value) -> bool {
    !matches!(value, Value::Null | Value::Bool(false))
}

/// The refusal of `authenticate_job!` (`lib/api/ci/helpers/runner.rb`), if any: an unknown
/// job or a wrong token is a bare 403; a job not processing on a runner (`running?` or
/// `canceling?`; for `PUT`, also one waiting for its two-phase acknowledgement: the request
/// spec accepts `state=pending` and `state=running` then) is a 403 carrying its
/// `Job-Status`. Whether a trace PATCH is accepted while the acknowledgement is awaited is
/// not in the sources read (`Ci::AuthJobFinder` is not in the index): the stand-in refuses
/// it, as for any job not processing on a runner.
pub fn refuse_job(job: &Job, token: Option<&str>, waiting_allowed: bool) -> Option<Response> {
    if token != Some(job.token.as_str()) {
        return Some(forbidden());
    }
    let processing = matches!(job.status.as_str(), "running" | "canceling")
        || (waiting_allowed && waiting_for_ack(job));
    if !processing {
        let mut response = json_response(
            StatusCode::FORBIDDEN,
            json!({"message": "403 Forbidden - Job is not processing on runner"}),
        );
        response.headers_mut().insert(
            "job-status",
            HeaderValue::from_str(&job.status).expect("a status word"),
        );
        return Some(response);
    }
    None
}
