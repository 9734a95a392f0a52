//! The client against the testkit GitLab: every status row of the runner API's request,
//! update and trace calls, the trace uploader's resync rules, and artifacts.

use std::sync::Arc;
use std::time::Duration;

use podrunner_gitlab::api::{RegisterRequest, RemoteJobStatus};
use podrunner_gitlab::client::{ArtifactUpload, DownloadOutcome, UploadOutcome};
use podrunner_gitlab::log::{LogSettings, Stream, SystemClock, Trace};
use podrunner_gitlab::*;
use podrunner_testkit::{Endpoint, Fault, GitlabStandIn, JobSpec};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "glrt-test-token";
const SYSTEM_ID: &str = "s_0123456789ab";

fn info() -> RunnerInfo {
    RunnerInfo::new(COMPAT, "shell", Features::network())
}

const COMPAT: &str = podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION;

fn client(gitlab: &GitlabStandIn) -> GitlabClient {
    GitlabClient::new(&ClientOptions {
        url: gitlab.url().to_owned(),
        podrunner_version: "0.1.0".into(),
        ..Default::default()
    })
    .unwrap()
}

fn retry_now() -> Vec<(String, String)> {
    vec![("Retry-After".into(), "0".into())]
}

async fn started() -> (GitlabStandIn, GitlabClient) {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab.set_long_poll(Duration::from_millis(300));
    let client = client(&gitlab);
    (gitlab, client)
}

/// Takes a job and acknowledges it (`two_phase_job_commit`: it runs only from then on).
async fn take_job(gitlab: &GitlabStandIn, client: &GitlabClient) -> (i64, Secret) {
    let id = gitlab.enqueue(JobSpec::new("test", &["echo hi"]));
    let result = client
        .request_job(&Secret::new(TOKEN), SYSTEM_ID, &info(), None)
        .await;
    let token = match result.outcome {
        JobRequestOutcome::Job(job) => {
            assert_eq!(job.job.id, id);
            job.job.token.clone()
        }
        other => panic!("expected a job, got {other:?}"),
    };
    assert_eq!(gitlab.job(id).unwrap().status, "pending", "two-phase pick");
    let (outcome, signals) = client
        .update_job(id, &update(&token, JobState::Running, b""))
        .await;
    assert_eq!(outcome, UpdateOutcome::Succeeded);
    assert_eq!(signals.job_status, Some(RemoteJobStatus::Running));
    (id, token)
}

// --- registration ------------------------------------------------------------------

#[tokio::test]
async fn register_verify_unregister_and_reset() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_registration_token("GR1348941legacy");
    let client = client(&gitlab);
    let request = |token: &str| RegisterRequest {
        token: Secret::new(token),
        description: "podrunner".into(),
        tag_list: String::new(),
        run_untagged: true,
        locked: false,
        access_level: "not_protected".into(),
        maximum_timeout: 0,
        paused: false,
        info: info(),
    };
    let credentials = client.register(&request("GR1348941legacy")).await.unwrap();
    assert!(credentials.id > 0 && !credentials.token.is_empty());
    assert!(matches!(
        client.register(&request("wrong")).await,
        Err(ClientError::Forbidden)
    ));
    let body = &gitlab.requests()[0];
    assert_eq!(body.json.as_ref().unwrap()["run_untagged"], true);
    assert!(
        body.json.as_ref().unwrap().get("maximum_timeout").is_none(),
        "0 is omitted"
    );

    // Legacy token: verify, then DELETE runners.
    let verified = client
        .verify(&credentials.token, SYSTEM_ID, &info())
        .await
        .unwrap();
    assert_eq!(verified.token, credentials.token);
    client
        .unregister(&credentials.token, SYSTEM_ID)
        .await
        .unwrap();
    assert!(!gitlab.runner_token_valid(credentials.token.expose()));
    assert_eq!(gitlab.requests().last().unwrap().path, "/api/v4/runners");

    // glrt- token: verify records the manager; unregister removes only the manager.
    gitlab.add_runner_token(TOKEN);
    client
        .verify(&Secret::new(TOKEN), SYSTEM_ID, &info())
        .await
        .unwrap();
    assert_eq!(
        gitlab.managers(),
        vec![(TOKEN.to_owned(), SYSTEM_ID.to_owned())]
    );
    let verify = gitlab
        .requests()
        .into_iter()
        .rfind(|r| r.path.ends_with("/verify"))
        .unwrap();
    assert_eq!(
        verify.json.as_ref().unwrap()["info"]["features"]["cancel_gracefully"],
        true,
        "full features on verify"
    );
    client
        .unregister(&Secret::new(TOKEN), SYSTEM_ID)
        .await
        .unwrap();
    assert!(gitlab.managers().is_empty());
    assert!(gitlab.runner_token_valid(TOKEN), "the runner itself stays");
    // A manager GitLab does not have (gone already, or never verified) is 404, as
    // `find_by_system_xid` + `not_found!` answer it; the client says so.
    match client.unregister(&Secret::new(TOKEN), SYSTEM_ID).await {
        Err(ClientError::Status {
            status: 404,
            message: Some(message),
        }) => assert_eq!(message, "404 Runner manager not found Not Found"),
        other => panic!("a second unregister of the manager: {other:?}"),
    }
    assert_eq!(
        gitlab.requests().last().unwrap().path,
        "/api/v4/runners/managers"
    );
    assert!(matches!(
        client
            .verify(&Secret::new("glrt-unknown"), SYSTEM_ID, &info())
            .await,
        Err(ClientError::Forbidden)
    ));

    let reset = client.reset_token(&Secret::new(TOKEN)).await.unwrap();
    assert!(reset.token.expose().starts_with("glrt-") && reset.token.expose() != TOKEN);
    assert!(!gitlab.runner_token_valid(TOKEN));
}

// --- jobs/request (§1.6) ---------------------------------------------------------------

#[tokio::test]
async fn request_job_status_rows() {
    let (gitlab, client) = started().await;
    let token = Secret::new(TOKEN);

    let empty = client.request_job(&token, SYSTEM_ID, &info(), None).await;
    assert!(matches!(empty.outcome, JobRequestOutcome::NoJob));
    assert!(empty.healthy());
    let last_update = empty
        .last_update
        .clone()
        .expect("X-GitLab-Last-Update on 204");

    let forbidden = client
        .request_job(&Secret::new("glrt-nope"), SYSTEM_ID, &info(), None)
        .await;
    assert!(matches!(forbidden.outcome, JobRequestOutcome::Forbidden));
    assert!(!forbidden.healthy(), "403 counts toward unhealthy");

    gitlab.inject_conflicts(1);
    assert!(matches!(
        client
            .request_job(&token, SYSTEM_ID, &info(), None)
            .await
            .outcome,
        JobRequestOutcome::Conflict
    ));

    for _ in 0..5 {
        gitlab.fault(Endpoint::RequestJob, Fault::Status(503, retry_now()));
    }
    let unavailable = client.request_job(&token, SYSTEM_ID, &info(), None).await;
    assert!(matches!(
        unavailable.outcome,
        JobRequestOutcome::Unavailable
    ));
    assert!(unavailable.healthy());

    gitlab.fault(
        Endpoint::RequestJob,
        Fault::Status(201, vec![("content-type".into(), "text/plain".into())]),
    );
    assert!(
        matches!(
            client
                .request_job(&token, SYSTEM_ID, &info(), None)
                .await
                .outcome,
            JobRequestOutcome::Failed(_)
        ),
        "an undecodable 201 is a failure"
    );
    // 422 ("Runner is orphaned") is in GitLab's API docs for jobs/request; scripted.
    gitlab.fault(Endpoint::RequestJob, Fault::Status(422, vec![]));
    assert!(matches!(
        client
            .request_job(&token, SYSTEM_ID, &info(), None)
            .await
            .outcome,
        JobRequestOutcome::Failed(_)
    ));

    // Transparent retries: two 502s and GitLab's rate limit (429 with `Retry-After`) are
    // invisible to the caller.
    gitlab.fault(Endpoint::RequestJob, Fault::Status(502, retry_now()));
    gitlab.rate_limit_job_requests(1, Duration::from_secs(1));
    gitlab.fault(Endpoint::RequestJob, Fault::Status(502, retry_now()));
    let id = gitlab.enqueue(JobSpec::new("retried", &["true"]));
    match client
        .request_job(&token, SYSTEM_ID, &info(), None)
        .await
        .outcome
    {
        JobRequestOutcome::Job(job) => assert_eq!(job.job.id, id),
        other => panic!("{other:?}"),
    }

    // The body carries last_update; the runner token is in the header and the body.
    let sent = gitlab
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/api/v4/jobs/request")
        .unwrap();
    assert_eq!(sent.headers["runner-token"], TOKEN);
    assert_eq!(sent.json.as_ref().unwrap()["token"], TOKEN);
    assert_eq!(sent.json.as_ref().unwrap()["system_id"], SYSTEM_ID);
    assert!(
        sent.headers["user-agent"].starts_with(&format!(
            "gitlab-runner {COMPAT} (podrunner-0.1.0; rust; linux/"
        )),
        "{}",
        sent.headers["user-agent"]
    );
    let request_id = &sent.headers["x-request-id"];
    assert!(
        request_id.len() == 32 && request_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{request_id}"
    );
    assert_eq!(
        sent.json.as_ref().unwrap()["info"]["features"]
            .as_object()
            .unwrap()
            .len(),
        31
    );
    let _ = last_update;

    // Transport error: nothing listens.
    let dead = GitlabClient::new(&ClientOptions {
        url: "http://127.0.0.1:9".into(),
        ..Default::default()
    })
    .unwrap();
    assert!(matches!(
        dead.request_job(&token, SYSTEM_ID, &info(), None)
            .await
            .outcome,
        JobRequestOutcome::Failed(_)
    ));
}

#[tokio::test]
async fn request_job_long_polls_with_last_update() {
    let (gitlab, client) = started().await;
    gitlab.set_long_poll(Duration::from_secs(20));
    let token = Secret::new(TOKEN);
    let first = client.request_job(&token, SYSTEM_ID, &info(), None).await;
    assert!(
        matches!(first.outcome, JobRequestOutcome::NoJob),
        "without last_update: answered at once"
    );
    let last_update = first.last_update.unwrap();
    let started = tokio::time::Instant::now();
    let waiting = {
        let client = client.clone();
        let token = token.clone();
        tokio::spawn(async move {
            client
                .request_job(&token, SYSTEM_ID, &info(), Some(&last_update))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "an up-to-date runner's request is held"
    );
    let id = gitlab.enqueue(JobSpec::new("late", &["true"]));
    let result = waiting.await.unwrap();
    assert!(matches!(result.outcome, JobRequestOutcome::Job(ref job) if job.job.id == id));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered when the job was queued, not at the poll timeout"
    );
}

// --- PUT jobs/:id (§1.8) ----------------------------------------------------------------

fn update(token: &Secret, state: JobState, trace: &[u8]) -> UpdateJobRequest {
    UpdateJobRequest {
        info: info(),
        token: token.clone(),
        state,
        failure_reason: None,
        checksum: None,
        output: Some(TraceOutput {
            checksum: format!("crc32:{:08x}", crc32fast::hash(trace)),
            bytesize: trace.len() as u64,
        }),
        exit_code: None,
    }
}

#[tokio::test]
async fn update_job_status_rows() {
    let (gitlab, client) = started().await;
    let (id, token) = take_job(&gitlab, &client).await;

    let (outcome, signals) = client
        .update_job(id, &update(&token, JobState::Running, b""))
        .await;
    assert_eq!(outcome, UpdateOutcome::Succeeded);
    assert_eq!(signals.job_status, Some(RemoteJobStatus::Running));
    assert_eq!(signals.update_interval, None, "a 200 carries no interval");
    let put = gitlab
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(put.headers["job-token"], token.expose());
    assert_ne!(
        put.headers.get("accept").map(String::as_str),
        Some("application/json"),
        "PUT jobs/:id expects no body"
    );

    gitlab.cancel(id);
    let (outcome, signals) = client
        .update_job(id, &update(&token, JobState::Running, b""))
        .await;
    assert_eq!(outcome, UpdateOutcome::Succeeded);
    assert_eq!(signals.job_status, Some(RemoteJobStatus::Canceling));
    // The interval comes with trace answers.
    gitlab.set_trace_update_interval(7);
    let (_, signals) = client.patch_trace(id, &token, 0, b"a", false).await;
    assert_eq!(signals.update_interval, Some(Duration::from_secs(7)));
    gitlab.set_trace_update_interval(100_000);
    let (_, signals) = client.patch_trace(id, &token, 1, b"b", false).await;
    assert_eq!(
        signals.update_interval,
        Some(Duration::from_secs(900)),
        "capped at 15 minutes"
    );
    gitlab.set_status(id, "running");

    gitlab.fault(Endpoint::UpdateJob, Fault::Status(400, vec![]));
    assert!(matches!(
        client
            .update_job(id, &update(&token, JobState::Running, b""))
            .await
            .0,
        UpdateOutcome::Failed(_)
    ));
    gitlab.fault(Endpoint::UpdateJob, Fault::Status(409, vec![]));
    assert!(matches!(
        client
            .update_job(id, &update(&token, JobState::Running, b""))
            .await
            .0,
        UpdateOutcome::Failed(_)
    ));
    for _ in 0..5 {
        gitlab.fault(Endpoint::UpdateJob, Fault::Status(500, retry_now()));
    }
    assert!(
        matches!(
            client
                .update_job(id, &update(&token, JobState::Running, b""))
                .await
                .0,
            UpdateOutcome::Failed(_)
        ),
        "5xx after the retries"
    );
    gitlab.fault(Endpoint::UpdateJob, Fault::Status(404, vec![]));
    assert_eq!(
        client
            .update_job(id, &update(&token, JobState::Running, b""))
            .await
            .0,
        UpdateOutcome::Abort
    );
    assert_eq!(
        client
            .update_job(
                id,
                &update(&Secret::new("glcbt-wrong"), JobState::Running, b"")
            )
            .await
            .0,
        UpdateOutcome::Abort,
        "403"
    );
    gitlab.fault(
        Endpoint::UpdateJob,
        Fault::Status(200, vec![("Job-Status".into(), "failed".into())]),
    );
    assert_eq!(
        client
            .update_job(id, &update(&token, JobState::Running, b""))
            .await
            .0,
        UpdateOutcome::Abort,
        "Job-Status failed"
    );

    // The final update: 412 is read as gitlab-runner reads it (GitLab itself never sends
    // one: scripted); 202 with a back-off while live chunks are pending; then 200.
    gitlab.fault(Endpoint::UpdateJob, Fault::Status(412, vec![]));
    assert_eq!(
        client
            .update_job(id, &update(&token, JobState::Success, b"ab"))
            .await
            .0,
        UpdateOutcome::TraceValidationFailed
    );
    gitlab.set_live_chunks_pending(true);
    let (outcome, signals) = client
        .update_job(id, &update(&token, JobState::Success, b"ab"))
        .await;
    assert_eq!(outcome, UpdateOutcome::Accepted);
    assert_eq!(signals.update_interval, Some(Duration::from_secs(1)));
    gitlab.set_live_chunks_pending(false);
    assert_eq!(
        client
            .update_job(id, &update(&token, JobState::Success, b"ab"))
            .await
            .0,
        UpdateOutcome::Succeeded
    );
    assert_eq!(gitlab.job(id).unwrap().status, "success");
    assert_eq!(
        client
            .update_job(id, &update(&token, JobState::Success, b""))
            .await
            .0,
        UpdateOutcome::Abort,
        "a finished job refuses more updates"
    );

    let (id, token) = take_job(&gitlab, &client).await;
    gitlab.cancel(id);
    gitlab.force_cancel(id);
    let (outcome, signals) = client
        .update_job(id, &update(&token, JobState::Running, b""))
        .await;
    assert_eq!(
        (outcome, signals.job_status),
        (UpdateOutcome::Abort, Some(RemoteJobStatus::Canceled))
    );

    // A final `failed` is applied and answered 200 with the new `Job-Status: failed`: read as
    // gitlab-runner does (abort), with the 200 telling that GitLab has it.
    let (id, token) = take_job(&gitlab, &client).await;
    let (outcome, signals) = client
        .update_job(id, &update(&token, JobState::Failed, b""))
        .await;
    assert_eq!(
        (outcome, signals.http_status, signals.job_status),
        (
            UpdateOutcome::Abort,
            Some(200),
            Some(RemoteJobStatus::Failed)
        )
    );
    assert_eq!(gitlab.job(id).unwrap().status, "failed");
}

// --- PATCH jobs/:id/trace (§1.9) ----------------------------------------------------------

#[tokio::test]
async fn patch_trace_status_rows() {
    let (gitlab, client) = started().await;
    let (id, token) = take_job(&gitlab, &client).await;

    let (outcome, _) = client.patch_trace(id, &token, 0, b"hello ", false).await;
    assert_eq!(outcome, PatchOutcome::Accepted { offset: 6 });
    let patch = gitlab
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(
        patch.headers["content-range"], "0-5",
        "inclusive end, no unit"
    );
    assert_eq!(patch.headers["content-type"], "text/plain");
    assert_eq!(
        patch.path,
        format!("/api/v4/jobs/{id}/trace?debug_trace=false")
    );

    // Sending from past the end, or from before it: 416 says how much GitLab has, and
    // nothing is written.
    let (outcome, _) = client.patch_trace(id, &token, 9, b"ld", false).await;
    assert_eq!(outcome, PatchOutcome::RangeMismatch { offset: 6 });
    let (outcome, _) = client.patch_trace(id, &token, 2, b"llo w", false).await;
    assert_eq!(outcome, PatchOutcome::RangeMismatch { offset: 6 });
    let (outcome, _) = client.patch_trace(id, &token, 6, b"w", false).await;
    assert_eq!(outcome, PatchOutcome::Accepted { offset: 7 });
    let (outcome, signals) = client.patch_trace(id, &token, 7, b"orld", false).await;
    assert_eq!(outcome, PatchOutcome::Accepted { offset: 11 });
    assert_eq!(signals.job_status, Some(RemoteJobStatus::Running));
    assert_eq!(gitlab.job(id).unwrap().trace, b"hello world");

    gitlab.cancel(id);
    let (outcome, signals) = client.patch_trace(id, &token, 11, b"!", false).await;
    assert_eq!(
        (outcome, signals.job_status),
        (
            PatchOutcome::Accepted { offset: 12 },
            Some(RemoteJobStatus::Canceling)
        )
    );
    gitlab.set_status(id, "canceled");
    assert_eq!(
        client.patch_trace(id, &token, 12, b"x", false).await.0,
        PatchOutcome::Abort
    );
    gitlab.set_status(id, "running");
    assert_eq!(
        client
            .patch_trace(id, &Secret::new("glcbt-wrong"), 12, b"x", false)
            .await
            .0,
        PatchOutcome::Abort,
        "403"
    );
    assert_eq!(
        client.patch_trace(999_999, &token, 0, b"x", false).await.0,
        PatchOutcome::Abort,
        "GitLab answers an unknown job with 403"
    );
    gitlab.fault(Endpoint::PatchTrace, Fault::Status(400, vec![]));
    assert!(matches!(
        client.patch_trace(id, &token, 12, b"x", false).await.0,
        PatchOutcome::Failed(_)
    ));
    assert!(
        matches!(
            client.patch_trace(id, &token, 12, b"", false).await.0,
            PatchOutcome::Accepted { offset: 12 }
        ),
        "empty patches are not sent"
    );
    assert_eq!(
        gitlab
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count(),
        10
    );
}

// --- the uploader ---------------------------------------------------------------------

fn fast() -> UploaderTimings {
    UploaderTimings {
        update_interval: Duration::from_millis(20),
        force_send_interval: Duration::from_millis(200),
        final_backoff_min: Duration::from_millis(10),
        final_backoff_max: Duration::from_millis(50),
    }
}

fn new_trace(limit: usize) -> Trace {
    Trace::new(&LogSettings {
        masked_phrases: vec!["hunter2-secret".into()],
        token_prefixes: LogSettings::token_prefixes(true, &[]),
        timestamps: true,
        output_limit_bytes: limit,
        spill_threshold: 4096,
        clock: Arc::new(SystemClock),
    })
}

fn target(id: i64, token: &Secret) -> TraceTarget {
    TraceTarget {
        job_id: id,
        token: token.clone(),
        debug_trace: false,
        info: info(),
        start_offset: 0,
        final_update_retry_limit: 10,
        supported_failure_reasons: vec!["script_failure".into()],
        handover: None,
    }
}

fn stored(trace: &Trace) -> Vec<u8> {
    trace.sink().store().read(0, usize::MAX).unwrap()
}

#[tokio::test]
async fn uploader_survives_lost_answers_without_losing_or_duplicating_bytes() {
    let (gitlab, client) = started().await;
    let (id, token) = take_job(&gitlab, &client).await;
    let trace = new_trace(1 << 20);
    let uploader = TraceUploader::start(
        client.clone(),
        target(id, &token),
        trace.clone(),
        fast(),
        &CancellationToken::new(),
    );
    let mut writer = trace.writer(Stream::JOB);
    // The first answers are lost after GitLab stored the bytes: the client retries the same
    // range, GitLab replaces it with the same bytes, and the uploader continues from there.
    gitlab.fault(Endpoint::PatchTrace, Fault::ApplyThenStatus(502));
    gitlab.fault(Endpoint::PatchTrace, Fault::ApplyThenStatus(500));
    for i in 0..200 {
        writer
            .write_bytes(format!("line {i} with hunter2-secret inside\n").as_bytes())
            .unwrap();
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    writer.flush_all().unwrap();
    let report = uploader
        .finish(FinalState {
            state: JobState::Success,
            failure_reason: None,
            exit_code: None,
        })
        .await;
    assert!(report.delivered, "{report:?}");
    let job = gitlab.job(id).unwrap();
    assert_eq!(job.status, "success");
    assert_eq!(
        job.trace,
        stored(&trace),
        "GitLab has exactly the bytes kept"
    );
    assert_eq!(report.trace_bytes_sent, job.trace.len() as u64);
    let text = String::from_utf8(job.trace).unwrap();
    assert_eq!(text.matches(" 01O line ").count(), 200);
    assert!(!text.contains("hunter2-secret") && text.contains("[MASKED]"));
    assert!(gitlab.requests().iter().any(|r| r.method == "PATCH") && job.patches >= 2);
}

#[tokio::test]
async fn uploader_sends_a_big_log_in_bounded_patches_with_its_checksum() {
    let (gitlab, client) = started().await;
    let (id, token) = take_job(&gitlab, &client).await;
    let trace = new_trace(8 << 20);
    let uploader = TraceUploader::start(
        client.clone(),
        target(id, &token),
        trace.clone(),
        fast(),
        &CancellationToken::new(),
    );
    let mut writer = trace.writer(Stream::JOB);
    writer.write_bytes(&vec![b'x'; 3 * 1024 * 1024]).unwrap();
    writer.write_bytes(b"\nend\n").unwrap();
    writer.flush_all().unwrap();
    let report = uploader
        .finish(FinalState {
            state: JobState::Failed,
            failure_reason: Some(FailureReason::ScriptFailure),
            exit_code: Some(2),
        })
        .await;
    assert!(report.delivered, "{report:?}");
    let job = gitlab.job(id).unwrap();
    assert_eq!(job.trace, stored(&trace));
    assert_eq!(
        (
            job.status.as_str(),
            job.failure_reason.as_deref(),
            job.exit_code
        ),
        ("failed", Some("script_failure"), Some(2))
    );
    let finals: Vec<_> = job
        .updates
        .iter()
        .filter(|u| u["state"] == "failed")
        .collect();
    assert_eq!(finals.len(), 1, "the 200 with Job-Status: failed is final");
    assert_eq!(
        finals[0]["output"]["checksum"],
        format!("crc32:{:08x}", crc32fast::hash(&job.trace))
    );
    assert_eq!(finals[0]["output"]["bytesize"], job.trace.len());
    let patches: Vec<_> = gitlab
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.headers["content-range"].clone())
        .collect();
    assert!(patches.len() >= 4, "{patches:?}");
    assert!(
        patches.iter().all(|r| {
            let (a, b) = r.split_once('-').unwrap();
            b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() < 1024 * 1024
        }),
        "patches are at most 1 MiB"
    );
}

#[tokio::test]
async fn uploader_polls_202_then_delivers_and_bounds_retries() {
    let (gitlab, client) = started().await;
    let (id, token) = take_job(&gitlab, &client).await;
    let trace = new_trace(1 << 20);
    let uploader = TraceUploader::start(
        client.clone(),
        target(id, &token),
        trace.clone(),
        fast(),
        &CancellationToken::new(),
    );
    trace.writer(Stream::JOB).write_bytes(b"done\n").unwrap();
    // Live chunks are pending until two final updates were accepted.
    gitlab.set_live_chunks_pending(true);
    let flip = async {
        gitlab
            .wait_for_job(id, Duration::from_secs(20), |j| {
                j.updates.iter().filter(|u| u["state"] == "success").count() >= 2
            })
            .await;
        gitlab.set_live_chunks_pending(false);
    };
    let (report, ()) = tokio::join!(
        uploader.finish(FinalState {
            state: JobState::Success,
            failure_reason: None,
            exit_code: None,
        }),
        flip
    );
    assert!(report.delivered);
    let job = gitlab.job(id).unwrap();
    assert_eq!(job.status, "success");
    assert!(
        job.updates
            .iter()
            .filter(|u| u["state"] == "success")
            .count()
            >= 3,
        "polled after each 202"
    );

    // A GitLab that keeps failing: the final update gives up after the retry limit.
    let (id, token) = take_job(&gitlab, &client).await;
    let trace = new_trace(1 << 20);
    let mut limited = target(id, &token);
    limited.final_update_retry_limit = 3;
    let uploader = TraceUploader::start(
        client.clone(),
        limited,
        trace.clone(),
        fast(),
        &CancellationToken::new(),
    );
    for _ in 0..3 {
        gitlab.fault(Endpoint::UpdateJob, Fault::Status(400, vec![]));
    }
    let report = uploader
        .finish(FinalState {
            state: JobState::Success,
            failure_reason: None,
            exit_code: None,
        })
        .await;
    assert!(
        !report.delivered && !report.aborted && report.last_error.is_some(),
        "{report:?}"
    );
}

#[tokio::test]
async fn canceling_is_graceful_and_canceled_aborts() {
    let (gitlab, client) = started().await;
    let (id, token) = take_job(&gitlab, &client).await;
    let trace = new_trace(1 << 20);
    let uploader = TraceUploader::start(
        client.clone(),
        target(id, &token),
        trace.clone(),
        fast(),
        &CancellationToken::new(),
    );
    let mut control = uploader.control();
    let mut writer = trace.writer(Stream::JOB);
    writer.write_bytes(b"working\n").unwrap();
    gitlab.cancel(id);
    writer.write_bytes(b"more\n").unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        control.wait_for(|c| *c == RemoteControl::Canceling),
    )
    .await
    .unwrap()
    .unwrap();
    // after_script output still reaches GitLab while canceling.
    writer.write_bytes(b"after_script ran\n").unwrap();
    writer.flush_all().unwrap();
    let report = uploader
        .finish(FinalState {
            state: JobState::Failed,
            failure_reason: Some(FailureReason::JobCanceled),
            exit_code: None,
        })
        .await;
    assert!(report.delivered);
    let job = gitlab.job(id).unwrap();
    assert!(String::from_utf8_lossy(&job.trace).contains("after_script ran"));
    assert_eq!(
        job.status, "canceled",
        "a canceling job's final update ends it canceled"
    );
    assert_eq!(
        job.updates.last().unwrap()["failure_reason"],
        "unknown_failure",
        "job_canceled is not in the payload's list"
    );

    // canceled: abort, noticed by the heartbeat of a quiet job.
    let (id, token) = take_job(&gitlab, &client).await;
    let trace = new_trace(1 << 20);
    let uploader = TraceUploader::start(
        client.clone(),
        target(id, &token),
        trace.clone(),
        fast(),
        &CancellationToken::new(),
    );
    let mut control = uploader.control();
    gitlab.cancel(id);
    gitlab.force_cancel(id);
    tokio::time::timeout(
        Duration::from_secs(5),
        control.wait_for(|c| *c == RemoteControl::Abort),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        gitlab
            .job(id)
            .unwrap()
            .updates
            .iter()
            .any(|u| u["state"] == "running"),
        "the heartbeat PUT noticed it"
    );
    let report = uploader
        .finish(FinalState {
            state: JobState::Failed,
            failure_reason: Some(FailureReason::JobCanceled),
            exit_code: None,
        })
        .await;
    assert!(report.aborted && !report.delivered, "{report:?}");
}

#[tokio::test]
async fn output_limit_is_enforced_before_upload() {
    let (gitlab, client) = started().await;
    let (id, token) = take_job(&gitlab, &client).await;
    let trace = new_trace(100);
    let uploader = TraceUploader::start(
        client.clone(),
        target(id, &token),
        trace.clone(),
        fast(),
        &CancellationToken::new(),
    );
    let mut writer = trace.writer(Stream::JOB);
    for _ in 0..10 {
        writer.write_bytes(b"0123456789abcdefghij\n").unwrap();
    }
    writer.flush_all().unwrap();
    let report = uploader
        .finish(FinalState {
            state: JobState::Success,
            failure_reason: None,
            exit_code: None,
        })
        .await;
    assert!(report.delivered);
    let text = String::from_utf8(gitlab.job(id).unwrap().trace).unwrap();
    assert!(text.ends_with("Job's log exceeded limit of 100 bytes.\nJob execution will continue but no more output will be collected.\x1b[0;m\n"), "{text:?}");
}

// --- artifacts ------------------------------------------------------------------------

#[tokio::test]
async fn artifacts_upload_and_download() {
    let (gitlab, client) = started().await;
    let (id, token) = take_job(&gitlab, &client).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("artifacts.zip");
    std::fs::write(&archive, b"PK\x03\x04 fake zip").unwrap();
    let upload = ArtifactUpload {
        format: Some("zip".into()),
        artifact_type: Some("archive".into()),
        expire_in: Some("1 week".into()),
        file_name: "artifacts.zip".into(),
    };

    gitlab.fault(Endpoint::UploadArtifact, Fault::RedirectToSecondAddress);
    assert_eq!(
        client.upload_artifact(id, &token, &archive, &upload).await,
        UploadOutcome::Uploaded
    );
    let job = gitlab.job(id).unwrap();
    let (query, name, bytes) = &job.artifacts[0];
    assert_eq!(
        (name.as_str(), bytes.as_slice()),
        ("artifacts.zip", b"PK\x03\x04 fake zip".as_slice())
    );
    assert_eq!(query.get("expire_in").map(String::as_str), Some("1 week"));
    assert_eq!(
        query.get("artifact_format").map(String::as_str),
        Some("zip")
    );
    let uploads: Vec<_> = gitlab
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains("/artifacts"))
        .collect();
    assert_eq!(uploads.len(), 2, "the 307 was followed with the same path");
    assert!(
        uploads[1]
            .path
            .starts_with(&format!("/api/v4/jobs/{id}/artifacts?")),
        "{}",
        uploads[1].path
    );

    gitlab.fault(Endpoint::UploadArtifact, Fault::Status(413, vec![]));

    assert_eq!(
        client.upload_artifact(id, &token, &archive, &upload).await,
        UploadOutcome::TooLarge
    );
    assert_eq!(
        client
            .upload_artifact(id, &Secret::new("glcbt-no"), &archive, &upload)
            .await,
        UploadOutcome::Forbidden
    );
    gitlab.fault(Endpoint::UploadArtifact, Fault::Status(503, vec![]));
    gitlab.fault(Endpoint::UploadArtifact, Fault::Status(500, vec![]));
    assert_eq!(
        client.upload_artifact(id, &token, &archive, &upload).await,
        UploadOutcome::Uploaded,
        "503 and 500 are retried"
    );

    // A dependant downloads with the dependency's token, through object storage.
    let target_file = dir.path().join("download.zip");
    assert_eq!(
        client
            .download_artifact(id, &token, true, &target_file)
            .await,
        DownloadOutcome::Downloaded { bytes: 13 }
    );
    assert_eq!(std::fs::read(&target_file).unwrap(), b"PK\x03\x04 fake zip");
    let storage = gitlab
        .requests()
        .into_iter()
        .rfind(|r| r.path.starts_with("/object-storage/"))
        .unwrap();
    assert!(
        !storage.headers.contains_key("job-token"),
        "object storage never sees the job token"
    );
    assert_eq!(
        client
            .download_artifact(id, &Secret::new("glcbt-no"), true, &target_file)
            .await,
        DownloadOutcome::Forbidden
    );
    let (other, other_token) = take_job(&gitlab, &client).await;
    assert_eq!(
        client
            .download_artifact(other, &other_token, true, &target_file)
            .await,
        DownloadOutcome::NotFound
    );

    // A finished job uploads nothing (`authenticate_job!` wants it processing on a runner),
    // while its artifacts stay downloadable with its token (`require_running: false`).
    gitlab.set_status(id, "success");
    assert_eq!(
        client.upload_artifact(id, &token, &archive, &upload).await,
        UploadOutcome::Forbidden
    );
    assert_eq!(
        client
            .download_artifact(id, &token, true, &target_file)
            .await,
        DownloadOutcome::Downloaded { bytes: 13 }
    );
}

#[tokio::test]
async fn dropped_connections_and_slow_answers() {
    let (gitlab, client) = started().await;
    let token = Secret::new(TOKEN);
    gitlab.fault(Endpoint::RequestJob, Fault::Drop);
    assert!(
        matches!(
            client
                .request_job(&token, SYSTEM_ID, &info(), None)
                .await
                .outcome,
            JobRequestOutcome::Failed(_)
        ),
        "a dropped connection is a failed request, not a crash"
    );
    gitlab.fault(
        Endpoint::RequestJob,
        Fault::Delay(Duration::from_millis(500)),
    );
    let started = tokio::time::Instant::now();
    assert!(matches!(
        client
            .request_job(&token, SYSTEM_ID, &info(), None)
            .await
            .outcome,
        JobRequestOutcome::NoJob
    ));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "a slow answer is waited for"
    );

    // A dropped trace PATCH is retried by the uploader on its next tick.
    let (id, job_token) = take_job(&gitlab, &client).await;
    let trace = new_trace(1 << 20);
    gitlab.fault(Endpoint::PatchTrace, Fault::Drop);
    let uploader = TraceUploader::start(
        client.clone(),
        target(id, &job_token),
        trace.clone(),
        fast(),
        &CancellationToken::new(),
    );
    let mut writer = trace.writer(Stream::JOB);
    writer
        .write_bytes(b"survives a dropped connection\n")
        .unwrap();
    writer.flush_all().unwrap();
    let report = uploader
        .finish(FinalState {
            state: JobState::Success,
            failure_reason: None,
            exit_code: None,
        })
        .await;
    assert!(report.delivered, "{report:?}");
    assert_eq!(gitlab.job(id).unwrap().trace, stored(&trace));
}
