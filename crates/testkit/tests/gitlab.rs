//! The GitLab stand-in's rules, one test each, over raw HTTP: what GitLab's Rails code answers
//! (the module docs of `podrunner_testkit::gitlab` name the upstream files).

use std::time::Duration;

use podrunner_testkit::{GitlabStandIn, JobSpec};
use serde_json::{Value, json};

const RUNNER: &str = "glrt-stand-in";

struct Api {
    gitlab: GitlabStandIn,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

impl Api {
    async fn start() -> Self {
        let gitlab = GitlabStandIn::start().await;
        gitlab.add_runner_token(RUNNER);
        gitlab.set_long_poll(Duration::from_millis(100));
        Api {
            gitlab,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v4/{path}", self.gitlab.url())
    }

    async fn request(&self, token: &str, features: Value) -> Answer {
        let body = json!({"token": token, "info": {"features": features}});
        answer(
            self.http
                .post(self.url("jobs/request"))
                .header("Runner-Token", token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Requests a job as a runner with `features`; returns its ID and token.
    async fn take(&self, features: Value) -> (i64, String) {
        let got = self.request(RUNNER, features).await;
        assert_eq!(got.status, 201, "{}", got.body);
        let job: Value = serde_json::from_str(&got.body).unwrap();
        (
            job["id"].as_i64().unwrap(),
            job["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn put(&self, id: i64, body: Value) -> Answer {
        answer(
            self.http
                .put(self.url(&format!("jobs/{id}")))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn patch(&self, id: i64, token: &str, range: Option<&str>, bytes: &[u8]) -> Answer {
        let mut request = self
            .http
            .patch(self.url(&format!("jobs/{id}/trace")))
            .header("JOB-TOKEN", token)
            .body(bytes.to_vec());
        if let Some(range) = range {
            request = request.header("Content-Range", range);
        }
        answer(request.send().await.unwrap()).await
    }
}

/// A legacy runner: the job runs at once.
fn legacy() -> Value {
    json!({"cancel_gracefully": true})
}

fn range_of(start: usize, bytes: &[u8]) -> String {
    format!("{start}-{}", start + bytes.len() - 1)
}

/// Mutation checked: appending at any start (the truncate-then-append before 9a92c83), and
/// reading the end of `Content-Range` (the removed 400), each fail this test.
#[tokio::test]
async fn trace_is_appended_only_at_its_exact_end() {
    let api = Api::start().await;
    api.gitlab.enqueue(JobSpec::new("t", &["true"]));
    let (id, token) = api.take(legacy()).await;

    let first = api.patch(id, &token, Some("0-5"), b"hello ").await;
    assert_eq!(first.status, 202);
    assert_eq!(first.header("range"), Some("0-6"));
    assert_eq!(first.header("job-status"), Some("running"));
    assert_eq!(first.header("x-gitlab-trace-update-interval"), Some("3"));

    // A start before the end writes nothing: 416 with how much GitLab has, no Job-Status.
    let early = api.patch(id, &token, Some("2-6"), b"llo w").await;
    assert_eq!(early.status, 416);
    assert_eq!(early.header("range"), Some("0-6"));
    assert_eq!(early.header("job-status"), None);
    let late = api.patch(id, &token, Some("9-10"), b"ld").await;
    assert_eq!((late.status, late.header("range")), (416, Some("0-6")));

    // Only the start of Content-Range counts; GitLab computes the end from the body.
    let odd = api.patch(id, &token, Some("6-0"), b"world").await;
    assert_eq!((odd.status, odd.header("range")), (202, Some("0-11")));
    assert_eq!(api.gitlab.job(id).unwrap().trace, b"hello world");

    let missing = api.patch(id, &token, None, b"!").await;
    assert_eq!(missing.status, 400);
    api.gitlab.set_trace_update_interval(60);
    let watched_no_more = api.patch(id, &token, Some("11-11"), b"!").await;
    assert_eq!(
        watched_no_more.header("x-gitlab-trace-update-interval"),
        Some("60")
    );
    let wrong = api.patch(id, "glcbt-wrong", Some("12-12"), b"x").await;
    assert_eq!((wrong.status, wrong.header("job-status")), (403, None));
    let unknown = api.patch(999_999, &token, Some("0-0"), b"x").await;
    assert_eq!(
        unknown.status, 403,
        "GitLab answers 403, not 404, for an unknown job"
    );
}

/// Mutation checked: `>` instead of `>=` against the limit, and not dropping the job, each
/// fail this test.
#[tokio::test]
async fn trace_past_the_size_limit_is_refused_and_the_job_dropped() {
    let api = Api::start().await;
    api.gitlab.set_trace_size_limit_mib(1);
    api.gitlab.enqueue(JobSpec::new("t", &["true"]));
    let (id, token) = api.take(legacy()).await;
    let below = vec![b'x'; 1024 * 1024 - 1];
    assert_eq!(
        api.patch(id, &token, Some(&range_of(0, &below)), &below)
            .await
            .status,
        202
    );
    let over = api.patch(id, &token, Some("1048575-1048575"), b"y").await;
    assert_eq!((over.status, over.header("job-status")), (403, None));
    let job = api.gitlab.job(id).unwrap();
    assert_eq!(
        (
            job.status.as_str(),
            job.failure_reason.as_deref(),
            job.trace.len()
        ),
        ("failed", Some("trace_size_exceeded"), 1024 * 1024 - 1)
    );
    let after = api.patch(id, &token, Some("1048575-1048575"), b"y").await;
    assert_eq!(
        (after.status, after.header("job-status")),
        (403, Some("failed"))
    );
}

/// Mutation checked: answering 412 on a checksum mismatch (the removed rule), and leaving
/// `Job-Status` off the 200, each fail this test.
#[tokio::test]
async fn final_update_is_applied_and_answered_with_the_new_status() {
    let api = Api::start().await;
    api.gitlab.enqueue(JobSpec::new("t", &["false"]));
    let (id, token) = api.take(legacy()).await;
    assert_eq!(
        api.patch(id, &token, Some("0-3"), b"log\n").await.status,
        202
    );
    let running = api
        .put(id, json!({"token": token, "state": "running"}))
        .await;
    assert_eq!(
        (running.status, running.header("job-status")),
        (200, Some("running"))
    );
    assert_eq!(running.header("x-gitlab-trace-update-interval"), None);
    // A checksum that does not match is only counted by GitLab: the state is applied.
    let failed = api
        .put(
            id,
            json!({"token": token, "state": "failed", "failure_reason": "script_failure", "exit_code": 1,
                   "output": {"checksum": "crc32:00000000", "bytesize": 4}}),
        )
        .await;
    assert_eq!((failed.status, failed.body.as_str()), (200, "200"));
    assert_eq!(failed.header("job-status"), Some("failed"));
    assert_eq!(failed.header("x-gitlab-trace-update-interval"), None);
    let job = api.gitlab.job(id).unwrap();
    assert_eq!(
        (
            job.status.as_str(),
            job.failure_reason.as_deref(),
            job.exit_code
        ),
        ("failed", Some("script_failure"), Some(1))
    );
    let again = api
        .put(id, json!({"token": token, "state": "failed"}))
        .await;
    assert_eq!(
        (again.status, again.header("job-status")),
        (403, Some("failed"))
    );
    let tokenless = api.put(id, json!({"state": "failed"})).await;
    assert_eq!(tokenless.status, 400, "`token` is a required parameter");
}

/// Mutation checked: applying the state while chunks are pending, or a fixed interval
/// instead of the back-off, each fail this test.
#[tokio::test]
async fn final_update_is_accepted_with_a_backoff_while_live_chunks_are_pending() {
    let api = Api::start().await;
    api.gitlab.set_live_chunks_pending(true);
    api.gitlab.enqueue(JobSpec::new("t", &["true"]));
    let (id, token) = api.take(legacy()).await;
    let final_update = json!({"token": token, "state": "success", "output": {"checksum": "crc32:00000000", "bytesize": 0}});
    for _ in 0..2 {
        let accepted = api.put(id, final_update.clone()).await;
        assert_eq!((accepted.status, accepted.body.as_str()), (202, "202"));
        assert_eq!(accepted.header("x-gitlab-trace-update-interval"), Some("1"));
        assert_eq!(accepted.header("job-status"), Some("running"));
    }
    assert_eq!(api.gitlab.job(id).unwrap().status, "running");
    api.gitlab.set_live_chunks_pending(false);
    let done = api.put(id, final_update).await;
    assert_eq!(
        (done.status, done.header("job-status")),
        (200, Some("success"))
    );

    // Without a checksum there is nothing to wait for: applied at once.
    api.gitlab.set_live_chunks_pending(true);
    api.gitlab.enqueue(JobSpec::new("t", &["true"]));
    let (id, token) = api.take(legacy()).await;
    let plain = api
        .put(id, json!({"token": token, "state": "success"}))
        .await;
    assert_eq!(
        (plain.status, plain.header("job-status")),
        (200, Some("success"))
    );
}

/// Mutation checked: removing any row of the RUNNER_FEATURES table, or handing the job out
/// anyway, fails this test.
#[tokio::test]
async fn jobs_needing_unannounced_features_are_dropped_as_runner_unsupported() {
    let api = Api::start().await;
    let cases: Vec<(&str, JobSpec)> = vec![
        (
            "upload_multiple_artifacts",
            JobSpec::new("reports", &["true"]).payload_field(
                "artifacts",
                json!([{"name": "junit", "paths": ["r.xml"], "when": "always", "artifact_type": "junit", "artifact_format": "gzip"}]),
            ),
        ),
        (
            "artifacts_exclude",
            JobSpec::new("exclude", &["true"]).payload_field(
                "artifacts",
                json!([{"name": "a", "paths": ["out/"], "exclude": ["out/*.tmp"], "artifact_type": "archive", "artifact_format": "zip"}]),
            ),
        ),
        (
            "fallback_cache_keys",
            JobSpec::new("fallback", &["true"]).payload_field(
                "cache",
                json!([{"key": "feature", "paths": ["c/"], "policy": "pull-push", "when": "on_success", "fallback_keys": ["main"]}]),
            ),
        ),
        (
            "multi_build_steps",
            JobSpec::new("release", &["true"]).payload_field(
                "steps",
                json!([{"name": "script", "script": ["true"], "timeout": 60, "when": "on_success", "allow_failure": false},
                       {"name": "release", "script": ["release-cli create"], "timeout": 60, "when": "on_success", "allow_failure": false}]),
            ),
        ),
        (
            "return_exit_code",
            JobSpec::new("exit-codes", &["exit 3"]).allow_failure_exit_codes(&[3]),
        ),
        ("refspecs", JobSpec::new("mr", &["true"]).merge_request_ref(7)),
        (
            "vault_secrets",
            JobSpec::new("secrets", &["true"]).payload_field(
                "secrets",
                json!({"DB_PASSWORD": {"vault": {"engine": {"name": "kv-v2", "path": "kv"}, "path": "db", "field": "password"}, "file": false}}),
            ),
        ),
    ];
    let every: serde_json::Map<String, Value> = cases
        .iter()
        .map(|(feature, _)| (feature.to_string(), json!(true)))
        .collect();
    for (feature, spec) in cases {
        let id = api.gitlab.enqueue(spec);
        let mut without = every.clone();
        without.insert(feature.to_owned(), json!(false));
        let refused = api.request(RUNNER, Value::Object(without)).await;
        assert_eq!(refused.status, 204, "{feature}: not handed out");
        let job = api.gitlab.job(id).unwrap();
        assert_eq!(
            (job.status.as_str(), job.failure_reason.as_deref()),
            ("failed", Some("runner_unsupported")),
            "{feature}"
        );
    }
    // A dropped job is never handed out later, even to a runner that could run it.
    let next = api.gitlab.enqueue(JobSpec::new("next", &["true"]));
    let got = api.request(RUNNER, Value::Object(every.clone())).await;
    assert_eq!(got.status, 201);
    assert_eq!(
        serde_json::from_str::<Value>(&got.body).unwrap()["id"],
        next
    );
    assert_eq!(
        api.request(RUNNER, Value::Object(every.clone()))
            .await
            .status,
        204
    );
    // With the feature announced, such a job is handed out.
    let mr = api
        .gitlab
        .enqueue(JobSpec::new("mr", &["true"]).merge_request_ref(9));
    let got = api.request(RUNNER, Value::Object(every.clone())).await;
    let payload: Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!((got.status, payload["id"].as_i64()), (201, Some(mr)));
    assert_eq!(
        payload["git_info"]["refspecs"],
        json!(["+refs/merge-requests/9/head:refs/merge-requests/9/head"])
    );
    // A job behind an unsupported one is still reached by the same request.
    let blocked = api
        .gitlab
        .enqueue(JobSpec::new("mr", &["true"]).merge_request_ref(8));
    let plain = api.gitlab.enqueue(JobSpec::new("plain", &["true"]));
    let got = api.request(RUNNER, json!({})).await;
    assert_eq!(got.status, 201);
    assert_eq!(
        serde_json::from_str::<Value>(&got.body).unwrap()["id"],
        plain
    );
    assert_eq!(
        api.gitlab.job(blocked).unwrap().failure_reason.as_deref(),
        Some("runner_unsupported")
    );
    assert_eq!(
        api.gitlab.job(plain).unwrap().runner_features,
        json!({}),
        "the features the runner announced are kept"
    );
}

/// Mutation checked: `run!` at pick time for a two-phase runner, accepting a trace before the
/// acknowledgement, or never expiring the wait, each fail this test.
#[tokio::test]
async fn two_phase_pick_waits_for_the_running_acknowledgement() {
    let api = Api::start().await;
    let two_phase = json!({"two_phase_job_commit": true, "cancel_gracefully": true});
    api.gitlab.enqueue(JobSpec::new("t", &["true"]));
    let (id, token) = api.take(two_phase.clone()).await;
    assert_eq!(api.gitlab.job(id).unwrap().status, "pending");
    api.gitlab.add_runner_token("glrt-other");
    assert_eq!(
        api.request("glrt-other", two_phase.clone()).await.status,
        204,
        "assigned"
    );
    let early = api.patch(id, &token, Some("0-1"), b"x\n").await;
    assert_eq!(
        (early.status, early.header("job-status")),
        (403, Some("pending"))
    );
    let keep_alive = api
        .put(id, json!({"token": token, "state": "pending"}))
        .await;
    assert_eq!(
        (keep_alive.status, keep_alive.header("job-status")),
        (200, Some("pending"))
    );
    let bad = api
        .put(id, json!({"token": token, "state": "success"}))
        .await;
    assert_eq!(bad.status, 400, "only pending or running while waiting");
    let ack = api
        .put(id, json!({"token": token, "state": "running"}))
        .await;
    assert_eq!(
        (ack.status, ack.header("job-status")),
        (200, Some("running"))
    );
    assert_eq!(api.patch(id, &token, Some("0-1"), b"x\n").await.status, 202);

    // A legacy runner's job runs at once, and a keep-alive makes no sense for it.
    api.gitlab.enqueue(JobSpec::new("t", &["true"]));
    let (id, token) = api.take(legacy()).await;
    assert_eq!(api.gitlab.job(id).unwrap().status, "running");
    let pending = api
        .put(id, json!({"token": token, "state": "pending"}))
        .await;
    assert_eq!(pending.status, 400);

    // No acknowledgement in time: dropped as runner_provisioning_timeout.
    api.gitlab.set_ack_timeout(Duration::from_millis(200));
    api.gitlab.enqueue(JobSpec::new("t", &["true"]));
    let (id, token) = api.take(two_phase.clone()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = api
        .put(id, json!({"token": token, "state": "running"}))
        .await;
    assert_eq!(
        (late.status, late.header("job-status")),
        (403, Some("failed"))
    );
    assert_eq!(
        api.gitlab.job(id).unwrap().failure_reason.as_deref(),
        Some("runner_provisioning_timeout")
    );
}

/// Mutation checked: `canceling` for a runner without `cancel_gracefully`, or a final update
/// of a canceling job ending `failed`, each fail this test.
#[tokio::test]
async fn cancel_is_graceful_only_for_runners_that_announce_it() {
    let api = Api::start().await;
    api.gitlab.enqueue(JobSpec::new("t", &["sleep 60"]));
    let (id, token) = api.take(json!({"cancel_gracefully": true})).await;
    api.gitlab.cancel(id);
    assert_eq!(api.gitlab.job(id).unwrap().status, "canceling");
    let patch = api.patch(id, &token, Some("0-2"), b"ok\n").await;
    assert_eq!(
        (patch.status, patch.header("job-status")),
        (202, Some("canceling"))
    );
    let end = api
        .put(
            id,
            json!({"token": token, "state": "failed", "failure_reason": "script_failure"}),
        )
        .await;
    assert_eq!(
        (end.status, end.header("job-status")),
        (200, Some("canceled"))
    );

    api.gitlab.enqueue(JobSpec::new("t", &["sleep 60"]));
    let (id, token) = api.take(json!({})).await;
    api.gitlab.cancel(id);
    assert_eq!(api.gitlab.job(id).unwrap().status, "canceled");
    let refused = api.patch(id, &token, Some("0-2"), b"ok\n").await;
    assert_eq!(
        (refused.status, refused.header("job-status")),
        (403, Some("canceled"))
    );

    // A queued job is canceled outright and never handed out.
    let queued = api.gitlab.enqueue(JobSpec::new("t", &["true"]));
    api.gitlab.cancel(queued);
    assert_eq!(api.gitlab.job(queued).unwrap().status, "canceled");
    assert_eq!(api.request(RUNNER, json!({})).await.status, 204);

    // force_cancel ends a canceling job.
    api.gitlab.enqueue(JobSpec::new("t", &["sleep 60"]));
    let (id, _) = api.take(json!({"cancel_gracefully": true})).await;
    api.gitlab.cancel(id);
    api.gitlab.force_cancel(id);
    assert_eq!(api.gitlab.job(id).unwrap().status, "canceled");
}

/// Mutation checked: authenticating before the rate limit, or no `Retry-After`, each fail.
#[tokio::test]
async fn job_requests_answer_409_and_429() {
    let api = Api::start().await;
    api.gitlab.inject_conflicts(1);
    api.gitlab.enqueue(JobSpec::new("t", &["true"]));
    let conflict = api.request(RUNNER, json!({})).await;
    assert_eq!(conflict.status, 409);
    api.gitlab
        .rate_limit_job_requests(1, Duration::from_secs(60));
    let limited = api.request("glrt-unknown", json!({})).await;
    assert_eq!(
        (limited.status, limited.header("retry-after")),
        (429, Some("60"))
    );
    assert_eq!(api.request("glrt-unknown", json!({})).await.status, 403);
    assert_eq!(
        api.request(RUNNER, json!({})).await.status,
        201,
        "the job waited"
    );
}
