//! The client against `gitlab-runner-mock`, a GitLab stand-in written by others.

use std::sync::Arc;
use std::time::Duration;

use gitlab_runner_mock::{GitlabRunnerMock, MockJobState};
use podrunner_gitlab::client::{ArtifactUpload, DownloadOutcome, UploadOutcome};
use podrunner_gitlab::log::{LogSettings, Stream, SystemClock, Trace};
use podrunner_gitlab::*;
use tokio_util::sync::CancellationToken;

const SYSTEM_ID: &str = "s_0123456789ab";

fn info() -> RunnerInfo {
    // The mock hands out jobs only to runners that understand refspecs, as GitLab does
    // for merge-request pipelines.
    RunnerInfo::new(
        podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION,
        "shell",
        Features {
            refspecs: true,
            ..Features::network()
        },
    )
}

fn client(mock: &GitlabRunnerMock) -> GitlabClient {
    GitlabClient::new(&ClientOptions {
        url: mock.uri().to_string(),
        podrunner_version: "0.1.0".into(),
        ..Default::default()
    })
    .unwrap()
}

async fn request(mock: &GitlabRunnerMock, client: &GitlabClient) -> JobRequestOutcome {
    client
        .request_job(&Secret::new(mock.runner_token()), SYSTEM_ID, &info(), None)
        .await
        .outcome
}

fn timings() -> UploaderTimings {
    UploaderTimings {
        update_interval: Duration::from_millis(20),
        force_send_interval: Duration::from_millis(100),
        final_backoff_min: Duration::from_millis(10),
        final_backoff_max: Duration::from_millis(50),
    }
}

fn target(job: &JobPayload) -> TraceTarget {
    TraceTarget {
        job_id: job.job.id,
        token: job.job.token.clone(),
        debug_trace: false,
        info: info(),
        start_offset: 0,
        final_update_retry_limit: 5,
        supported_failure_reasons: job.job.features.failure_reasons.clone(),
        handover: None,
    }
}

fn new_trace() -> Trace {
    Trace::new(&LogSettings {
        masked_phrases: vec!["topsecret".into()],
        token_prefixes: LogSettings::token_prefixes(true, &[]),
        timestamps: false,
        output_limit_bytes: 4 << 20,
        spill_threshold: 1 << 20,
        clock: Arc::new(SystemClock),
    })
}

#[tokio::test]
async fn request_trace_and_update_to_success() {
    let mock = GitlabRunnerMock::start().await;
    let client = client(&mock);
    assert!(matches!(
        request(&mock, &client).await,
        JobRequestOutcome::NoJob
    ));
    assert!(matches!(
        client
            .request_job(&Secret::new("glrt-wrong"), SYSTEM_ID, &info(), None)
            .await
            .outcome,
        JobRequestOutcome::Forbidden
    ));

    let mut builder = mock.job_builder("build".to_owned());
    builder.add_variable("SECRET".to_owned(), "topsecret".to_owned(), false, true);
    builder.add_step(
        gitlab_runner_mock::MockJobStepName::Script,
        vec!["echo hello".to_owned()],
        3600,
        gitlab_runner_mock::MockJobStepWhen::OnSuccess,
        false,
    );
    let mock_job = builder.build();
    mock.enqueue_job(mock_job.clone());

    let JobRequestOutcome::Job(job) = request(&mock, &client).await else {
        panic!("expected a job")
    };
    assert_eq!(job.job.id as u64, mock_job.id());
    assert_eq!(job.job.steps[0].script, ["echo hello"]);
    assert!(
        job.job
            .variables
            .iter()
            .any(|v| v.key == "SECRET" && v.masked)
    );

    let (outcome, _) = client
        .update_job(
            job.job.id,
            &UpdateJobRequest {
                info: info(),
                token: job.job.token.clone(),
                state: JobState::Running,
                failure_reason: None,
                checksum: None,
                output: None,
                exit_code: None,
            },
        )
        .await;
    assert_eq!(outcome, UpdateOutcome::Succeeded);

    let trace = new_trace();
    let uploader = TraceUploader::start(
        client.clone(),
        target(&job),
        trace.clone(),
        timings(),
        &CancellationToken::new(),
    );
    let mut writer = trace.writer(Stream::JOB);
    for i in 0..100 {
        writer
            .write_bytes(format!("line {i}: topsecret\n").as_bytes())
            .unwrap();
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
    let log = String::from_utf8(mock_job.log()).unwrap();
    assert_eq!(
        log.as_bytes(),
        trace.sink().store().read(0, usize::MAX).unwrap()
    );
    assert_eq!(log.matches("[MASKED]").count(), 100);
    assert!(!log.contains("topsecret"));
    assert_eq!(mock_job.state(), MockJobState::Success);
}

#[tokio::test]
async fn failure_and_cancel() {
    let mock = GitlabRunnerMock::start().await;
    let client = client(&mock);
    let mock_job = mock.add_dummy_job("fails".to_owned());
    let JobRequestOutcome::Job(job) = request(&mock, &client).await else {
        panic!("expected a job")
    };
    let trace = new_trace();
    let uploader = TraceUploader::start(
        client.clone(),
        target(&job),
        trace.clone(),
        timings(),
        &CancellationToken::new(),
    );
    trace.writer(Stream::JOB).write_bytes(b"exit 1\n").unwrap();
    let report = uploader
        .finish(FinalState {
            state: JobState::Failed,
            failure_reason: Some(FailureReason::ScriptFailure),
            exit_code: Some(1),
        })
        .await;
    assert!(report.delivered, "{report:?}");
    assert_eq!(mock_job.state(), MockJobState::Failed);

    // Canceled in GitLab: the uploader notices it and the job must stop.
    let mock_job = mock.add_dummy_job("canceled".to_owned());
    let JobRequestOutcome::Job(job) = request(&mock, &client).await else {
        panic!("expected a job")
    };
    let trace = new_trace();
    let uploader = TraceUploader::start(
        client.clone(),
        target(&job),
        trace.clone(),
        timings(),
        &CancellationToken::new(),
    );
    let mut control = uploader.control();
    mock_job.cancel();
    trace
        .writer(Stream::JOB)
        .write_bytes(b"still running\n")
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        control.wait_for(|c| *c == RemoteControl::Abort),
    )
    .await
    .unwrap()
    .unwrap();
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
async fn artifacts_round_trip() {
    let mock = GitlabRunnerMock::start().await;
    let client = client(&mock);
    let dir = tempfile::tempdir().unwrap();
    let script = |builder: &mut gitlab_runner_mock::MockJobBuilder| {
        builder.add_step(
            gitlab_runner_mock::MockJobStepName::Script,
            vec!["make".to_owned()],
            3600,
            gitlab_runner_mock::MockJobStepWhen::OnSuccess,
            false,
        );
    };

    // The producer uploads its archive and succeeds.
    let mut builder = mock.job_builder("producer".to_owned());
    script(&mut builder);
    let producer = builder.build();
    mock.enqueue_job(producer.clone());
    let JobRequestOutcome::Job(job) = request(&mock, &client).await else {
        panic!("expected the producer")
    };
    let archive = dir.path().join("out.zip");
    std::fs::write(&archive, b"PK new archive").unwrap();
    let params = ArtifactUpload {
        format: Some("zip".into()),
        artifact_type: Some("archive".into()),
        expire_in: Some("1 day".into()),
        file_name: "artifacts.zip".into(),
    };
    assert_eq!(
        client
            .upload_artifact(job.job.id, &job.job.token, &archive, &params)
            .await,
        UploadOutcome::Uploaded
    );
    let uploaded: Vec<_> = producer.uploaded_artifacts().collect();
    assert_eq!(uploaded[0].data.as_slice(), b"PK new archive");
    assert_eq!(
        (
            uploaded[0].artifact_type.as_deref(),
            uploaded[0].artifact_format.as_deref()
        ),
        (Some("archive"), Some("zip"))
    );
    let uploader = TraceUploader::start(
        client.clone(),
        target(&job),
        new_trace(),
        timings(),
        &CancellationToken::new(),
    );
    assert!(
        uploader
            .finish(FinalState {
                state: JobState::Success,
                failure_reason: None,
                exit_code: None
            })
            .await
            .delivered
    );

    // The consumer downloads it with the dependency's token; a retried 500 is invisible.
    let mut builder = mock.job_builder("consumer".to_owned());
    builder.dependency(producer.clone());
    script(&mut builder);
    mock.enqueue_job(builder.build());
    let JobRequestOutcome::Job(job) = request(&mock, &client).await else {
        panic!("expected the consumer")
    };
    let dependency = &job.job.dependencies[0];
    assert_eq!(dependency.id as u64, producer.id());
    assert_eq!(dependency.artifacts_file.as_ref().unwrap().size, 14);
    mock.set_inject_artifact_download_failures(1);
    let downloaded = dir.path().join("dep.zip");
    assert_eq!(
        client
            .download_artifact(dependency.id, &dependency.token, true, &downloaded)
            .await,
        DownloadOutcome::Downloaded { bytes: 14 }
    );
    assert_eq!(std::fs::read(&downloaded).unwrap(), b"PK new archive");
    assert_eq!(
        client
            .download_artifact(dependency.id, &job.job.token, true, &downloaded)
            .await,
        DownloadOutcome::Forbidden,
        "only the dependency's token"
    );
}
