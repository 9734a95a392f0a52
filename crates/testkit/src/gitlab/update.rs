//! `PUT jobs/:id`: `API::Ci::Runner` (gitlabhq/gitlabhq `lib/api/ci/runner.rb`) and
//! `Ci::UpdateBuildStateService` (`app/services/ci/update_build_state_service.rb`).
//!
//! GitLab has no "trace validation failed" answer: a checksum that does not match the chunks
//! it holds is only counted in metrics (`validate_build_trace!`) and the state is applied.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::time::Instant;

use super::{Job, lifecycle};

/// `ACCEPT_TIMEOUT`: after this long in the 202 "accepted" state, the pending state is
/// discarded and the update applied whatever the live chunks.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(300);

/// GitLab's side of the final update.
#[derive(Debug, Clone, Copy)]
pub struct UpdateSettings {
    /// Live trace chunks are still waiting to be persisted (`live_chunks_pending?`): a final
    /// update with a checksum is answered 202 with a back-off until they are.
    pub live_chunks_pending: bool,
    /// `RUNNER_ACK_QUEUE_EXPIRY_TIME`, renewed by a `state=pending` keep-alive.
    pub ack_timeout: Duration,
}

/// `Gitlab::Ci::Runner::Backoff#to_seconds` (`lib/gitlab/ci/runner/backoff.rb`) for a pending
/// state created `elapsed` ago: `2 ** min(slot, 6)`, slot 0 up to 1 s, else
/// `floor(log2(duration)) - 1` (never below 0 here: Ruby would give a fraction for 1–2 s).
pub fn backoff_seconds(elapsed: Duration) -> u64 {
    let duration = elapsed.as_secs_f64();
    let slot = if duration <= 1.0 {
        0
    } else {
        (duration.log2().floor() as i64 - 1).max(0)
    };
    1u64 << slot.min(6)
}

/// Applies an authenticated `PUT jobs/:id` body to the job.
pub fn update(job: &mut Job, body: &Value, settings: UpdateSettings) -> Response {
    let state = body["state"].as_str().unwrap_or("");
    // `handle_runner_ack_workflow`.
    if lifecycle::waiting_for_ack(job) {
        match state {
            "pending" => {
                lifecycle::keep_alive(job, settings.ack_timeout);
                return answer(job, StatusCode::OK, None);
            }
            "running" => lifecycle::acknowledge(job),
            _ => return answer(job, StatusCode::BAD_REQUEST, None),
        }
    }
    let checksum = body["output"]["checksum"]
        .as_str()
        .or_else(|| body["checksum"].as_str());
    // `accept_available?`: not `running`, a checksum sent, live traces on (always here).
    if state != "running" && checksum.is_some() {
        let since = *job.pending_state_since.get_or_insert_with(Instant::now);
        if settings.live_chunks_pending {
            let elapsed = since.elapsed();
            if elapsed <= ACCEPT_TIMEOUT {
                // `accept_build_state!`.
                return answer(job, StatusCode::ACCEPTED, Some(backoff_seconds(elapsed)));
            }
            // `pending_state_outdated?`: `discard_build_trace!`, then the update.
        }
    }
    // `update_build_state!`.
    let status = match state {
        "running" => StatusCode::OK,
        "success" => {
            lifecycle::succeed(job);
            StatusCode::OK
        }
        "failed" => {
            let reason = body["failure_reason"].as_str().unwrap_or("unknown_failure");
            lifecycle::drop_job(job, reason, body["exit_code"].as_i64());
            StatusCode::OK
        }
        _ => StatusCode::BAD_REQUEST,
    };
    answer(job, status, None)
}

/// The API's answer: `Job-Status` always, `X-GitLab-Trace-Update-Interval` only with a
/// back-off (Grape drops a header set to `nil`), and the status code as the body.
fn answer(job: &Job, status: StatusCode, backoff: Option<u64>) -> Response {
    let mut response = (status, status.as_u16().to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        "job-status",
        HeaderValue::from_str(&job.status).expect("a status word"),
    );
    if let Some(seconds) = backoff {
        headers.insert("x-gitlab-trace-update-interval", HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn running_job(pending_state_age: Duration) -> Job {
        Job {
            id: 1,
            token: "glcbt-t".to_owned(),
            payload: Value::Null,
            options: Default::default(),
            status: "running".to_owned(),
            trace: Vec::new(),
            failure_reason: None,
            exit_code: None,
            updates: Vec::new(),
            patches: 0,
            artifacts: Vec::new(),
            depends_on: Vec::new(),
            runner_features: Value::Null,
            cancel_gracefully: false,
            ack_deadline: None,
            pending_state_since: Some(
                Instant::now()
                    .checked_sub(pending_state_age)
                    .expect("the monotonic clock has run longer than the age"),
            ),
        }
    }

    /// Mutation checked: answering 202 for as long as chunks are pending (no
    /// `pending_state_outdated?`) fails this test.
    #[test]
    fn an_outdated_pending_state_is_discarded_and_the_update_applied() {
        let settings = UpdateSettings {
            live_chunks_pending: true,
            ack_timeout: Duration::from_secs(120),
        };
        let body = json!({"state": "success", "output": {"checksum": "crc32:0", "bytesize": 0}});
        let mut recent = running_job(Duration::from_secs(10));
        let answer = update(&mut recent, &body, settings);
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        assert_eq!(answer.headers()["x-gitlab-trace-update-interval"], "4");
        assert_eq!(recent.status, "running");
        let mut outdated = running_job(ACCEPT_TIMEOUT + Duration::from_secs(1));
        let answer = update(&mut outdated, &body, settings);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(outdated.status, "success");
    }

    #[test]
    fn backoff_doubles_per_slot_up_to_64_seconds() {
        let at = |s: u64| backoff_seconds(Duration::from_secs(s));
        assert_eq!(
            [
                at(0),
                at(1),
                at(3),
                at(4),
                at(7),
                at(8),
                at(16),
                at(64),
                at(128),
                at(1000)
            ],
            [1, 1, 1, 2, 2, 4, 8, 32, 64, 64]
        );
    }
}
