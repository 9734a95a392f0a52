//! `PATCH jobs/:id/trace`: `API::Ci::Runner` (gitlabhq/gitlabhq `lib/api/ci/runner.rb`) and
//! `Ci::AppendBuildTraceService` (`app/services/ci/append_build_trace_service.rb`).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Fault, Job, json_response, lifecycle, status_response};

/// What GitLab's settings say about traces.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceSettings {
    /// `ci_jobs_trace_size_limit` in MiB (plan limits; 100 by default, 0 for none).
    pub size_limit_mib: u64,
    /// `job.trace.update_interval`: 60 s (`UPDATE_FREQUENCY_DEFAULT`, `lib/gitlab/ci/trace.rb`),
    /// or 3 s while someone watches the job's log (`UPDATE_FREQUENCY_WHEN_BEING_WATCHED`).
    pub update_interval: u64,
}

/// GitLab's default `ci_jobs_trace_size_limit` (MiB): `plan_limits` column default.
pub const DEFAULT_TRACE_SIZE_LIMIT_MIB: u64 = 100;

/// `UPDATE_FREQUENCY_WHEN_BEING_WATCHED`: the stand-in's log is always being watched, so that
/// runners poll it at the short interval (`set_trace_update_interval(60)` for the other case).
pub const UPDATE_FREQUENCY_WHEN_BEING_WATCHED: u64 = 3;

/// Ruby's `String#to_i`: the leading decimal digits, 0 when there are none. GitLab reads only
/// the start of `Content-Range` this way; the end is ignored (the service computes it from
/// the body's size, gitlab-runner issue 3275).
fn ruby_to_i(text: &str) -> usize {
    let digits: String = text
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(0)
}

/// Appends a PATCH to an authenticated job's trace.
pub fn append(
    job: &mut Job,
    settings: TraceSettings,
    content_range: Option<&str>,
    body: &[u8],
    fault: Option<Fault>,
) -> Response {
    let Some(range) = content_range else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": "400 Missing header Content-Range"}),
        );
    };
    let start = ruby_to_i(range.split('-').next().unwrap_or(""));
    let body_end = start + body.len();
    // `trace_size_exceeded?`: `exceeded?(:ci_jobs_trace_size_limit, size / 1.megabyte)`, which
    // is `subject >= limit` (`app/models/plan_limits.rb`); the build is dropped and the API
    // answers a bare 403 (no `Job-Status`).
    let mib = (body_end / (1024 * 1024)) as u64;
    if settings.size_limit_mib > 0 && mib >= settings.size_limit_mib {
        lifecycle::drop_job(job, "trace_size_exceeded", None);
        return json_response(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"}));
    }
    // `Ci::Trace#append` (`lib/gitlab/ci/trace.rb`) writes only when the offset is the
    // current size and returns the size; anything else is a 416 carrying only `Range`.
    let have = job.trace.len();
    if start != have {
        let mut response = json_response(
            StatusCode::RANGE_NOT_SATISFIABLE,
            json!({"message": "416 Range Not Satisfiable"}),
        );
        response.headers_mut().insert(
            "range",
            HeaderValue::from_str(&format!("0-{have}")).expect("digits"),
        );
        return response;
    }
    job.trace.extend_from_slice(body);
    job.patches += 1;
    if let Some(Fault::ApplyThenStatus(status)) = fault {
        return status_response(status, &[]);
    }
    let mut response = StatusCode::ACCEPTED.into_response();
    let headers = response.headers_mut();
    headers.insert(
        "job-status",
        HeaderValue::from_str(&job.status).expect("a status word"),
    );
    headers.insert(
        "range",
        HeaderValue::from_str(&format!("0-{}", job.trace.len())).expect("digits"),
    );
    headers.insert(
        "x-gitlab-trace-update-interval",
        HeaderValue::from(settings.update_interval),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::ruby_to_i;

    #[test]
    fn content_range_start_as_ruby_reads_it() {
        assert_eq!(ruby_to_i("12"), 12);
        assert_eq!(ruby_to_i(" 7x"), 7);
        assert_eq!(ruby_to_i("bytes 5"), 0);
        assert_eq!(ruby_to_i(""), 0);
    }
}
