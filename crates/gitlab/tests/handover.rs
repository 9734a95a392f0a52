//! The hand-over of a job's log from the manager to the agent on GitLab's exact-end rule
//! (`Ci::Trace#append`), against the testkit GitLab: the test plays the manager (whole
//! lines, each in its "annotation" before it is sent, stopping at its first 416), the
//! uploader is the agent. In every interleaving GitLab ends with exactly the bytes one writer
//! would have written, and the agent's final checksum is GitLab's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use podrunner_gitlab::log::{LogSettings, Stream, SystemClock, Trace};
use podrunner_gitlab::*;
use podrunner_testkit::{Endpoint, Fault, GitlabStandIn, JobSpec};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "glrt-handover-token";

fn info() -> RunnerInfo {
    RunnerInfo::new(
        podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION,
        "kubernetes",
        Features::network(),
    )
}

async fn job() -> (GitlabStandIn, GitlabClient, i64, Secret) {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab.set_long_poll(Duration::from_millis(300));
    let client = GitlabClient::new(&ClientOptions {
        url: gitlab.url().to_owned(),
        podrunner_version: "0.1.0".into(),
        ..Default::default()
    })
    .unwrap();
    let id = gitlab.enqueue(JobSpec::new("handover", &["echo hi"]));
    let result = client
        .request_job(&Secret::new(TOKEN), "s_0123456789ab", &info(), None)
        .await;
    let JobRequestOutcome::Job(payload) = result.outcome else {
        panic!("no job: {:?}", result.outcome);
    };
    let token = payload.job.token.clone();
    // GitLab's two-phase commit: the job runs once the manager acknowledges it.
    let (outcome, _) = client
        .update_job(
            id,
            &UpdateJobRequest {
                info: info(),
                token: token.clone(),
                state: JobState::Running,
                failure_reason: None,
                checksum: None,
                output: None,
                exit_code: None,
            },
        )
        .await;
    assert_eq!(outcome, UpdateOutcome::Succeeded);
    (gitlab, client, id, token)
}

/// The manager's side: its prelude (the annotation) and what GitLab acknowledged.
struct Manager {
    annotation: Arc<Mutex<Vec<u8>>>,
    sent: u64,
    stopped: bool,
}

impl Manager {
    fn new(opening: &[u8]) -> Self {
        Manager {
            annotation: Arc::new(Mutex::new(opening.to_vec())),
            sent: 0,
            stopped: false,
        }
    }

    /// A line into the annotation (first), then what GitLab lacks of it, as `PodLog` does.
    async fn line(&mut self, client: &GitlabClient, id: i64, token: &Secret, line: &[u8]) {
        self.annotation.lock().unwrap().extend_from_slice(line);
        self.send(client, id, token).await;
    }

    async fn send(&mut self, client: &GitlabClient, id: i64, token: &Secret) {
        if self.stopped {
            return;
        }
        let bytes = self.annotation.lock().unwrap().clone();
        let unsent = &bytes[self.sent as usize..];
        match client
            .patch_trace(id, token, self.sent, unsent, false)
            .await
            .0
        {
            PatchOutcome::Accepted { offset } => self.sent = offset,
            PatchOutcome::RangeMismatch { .. } => self.stopped = true,
            _ => {}
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.annotation.lock().unwrap().clone()
    }

    /// The annotation as a live source that shows `first` (the snapshot) until `lag` has
    /// passed (a kubelet that has not synced the pod yet), then the annotation; `None` lag:
    /// never.
    fn live(&self, first: &[u8], lag: Option<Duration>) -> LivePrelude {
        let annotation = self.annotation.clone();
        let since = std::time::Instant::now();
        let first = first.to_vec();
        Arc::new(move || match lag {
            Some(lag) if since.elapsed() >= lag => Some(annotation.lock().unwrap().clone()),
            _ => Some(first.clone()),
        })
    }
}

fn trace() -> Trace {
    Trace::new(&LogSettings {
        masked_phrases: vec![],
        token_prefixes: LogSettings::token_prefixes(true, &[]),
        timestamps: false,
        output_limit_bytes: 1 << 20,
        spill_threshold: 1 << 20,
        clock: Arc::new(SystemClock),
    })
}

fn fast() -> UploaderTimings {
    UploaderTimings {
        update_interval: Duration::from_millis(20),
        force_send_interval: Duration::from_millis(500),
        final_backoff_min: Duration::from_millis(10),
        final_backoff_max: Duration::from_millis(50),
    }
}

/// The agent: starts with `snapshot` as its prelude, writes its output, delivers success.
#[allow(clippy::too_many_arguments)]
async fn agent(
    client: &GitlabClient,
    id: i64,
    token: &Secret,
    snapshot: &[u8],
    live: Option<LivePrelude>,
    catch_up: Duration,
    before_output: impl std::future::Future<Output = ()>,
    before_finish: impl std::future::Future<Output = ()>,
) -> (FinalReport, Vec<u8>) {
    let trace = trace();
    trace.sink().write(snapshot).unwrap();
    let uploader = TraceUploader::start(
        client.clone(),
        TraceTarget {
            job_id: id,
            token: token.clone(),
            debug_trace: false,
            info: info(),
            start_offset: 0,
            final_update_retry_limit: 5,
            supported_failure_reasons: vec![],
            handover: Some(TraceHandover {
                prelude_len: snapshot.len() as u64,
                live,
                catch_up,
            }),
        },
        trace.clone(),
        fast(),
        &CancellationToken::new(),
    );
    before_output.await;
    let mut out = trace.writer(Stream::JOB);
    for line in OUTPUT {
        out.write_bytes(line.as_bytes()).unwrap();
        out.flush_all().unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    before_finish.await;
    trace.sink().finish().unwrap();
    let report = uploader
        .finish(FinalState {
            state: JobState::Success,
            failure_reason: None,
            exit_code: None,
        })
        .await;
    let stored = trace.sink().store().read(0, usize::MAX).unwrap();
    (report, stored)
}

const OPENING: &[u8] = b"Running with podrunner\nPreparing environment\n";
const WAITING: &[u8] =
    b"Waiting for pod ns/p to be running on the node <unknown>, status is Pending\n";
const LATE: &[u8] = b"WARNING: Event retrieved from the cluster: late\n";
const OUTPUT: [&str; 3] = ["$ echo hi\n", "hi\n", "Job succeeded\n"];

fn own() -> Vec<u8> {
    OUTPUT.concat().into_bytes()
}

/// The job ended `success` with the checksum of exactly `expected`, and GitLab has it.
fn assert_one_writer(gitlab: &GitlabStandIn, id: i64, expected: &[u8], case: &str) {
    let job = gitlab.job(id).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&job.trace),
        String::from_utf8_lossy(expected),
        "{case}: GitLab's log"
    );
    assert_eq!(job.status, "success", "{case}");
    let update = job.updates.last().expect("a final update");
    assert_eq!(
        update["output"]["checksum"].as_str(),
        Some(format!("crc32:{:08x}", crc32fast::hash(&job.trace)).as_str()),
        "{case}: the final checksum is GitLab's"
    );
    assert_eq!(
        update["output"]["bytesize"].as_u64(),
        Some(job.trace.len() as u64),
        "{case}"
    );
}

#[tokio::test]
async fn gitlab_behind_equal_or_ahead_of_the_snapshot() {
    // What GitLab has when the agent starts with the snapshot OPENING+WAITING.
    for case in ["behind", "equal", "ahead"] {
        let (gitlab, client, id, token) = job().await;
        let mut manager = Manager::new(OPENING);
        manager.send(&client, id, &token).await;
        manager
            .annotation
            .lock()
            .unwrap()
            .extend_from_slice(WAITING);
        if case != "behind" {
            manager.send(&client, id, &token).await;
        }
        let snapshot = manager.snapshot();
        if case == "ahead" {
            // A line the manager sent after the kubelet resolved the environment.
            manager.line(&client, id, &token, LATE).await;
        }
        let live = manager.live(&snapshot, Some(Duration::ZERO));
        let (report, _) = agent(
            &client,
            id,
            &token,
            &snapshot,
            Some(live),
            Duration::from_secs(5),
            async {},
            async {},
        )
        .await;
        assert!(report.delivered, "{case}: {report:?}");
        let late: &[u8] = if case == "ahead" { LATE } else { b"" };
        assert_one_writer(
            &gitlab,
            id,
            &[OPENING, WAITING, late, &own()].concat(),
            case,
        );
    }
}

#[tokio::test]
async fn the_manager_line_racing_the_claim_ends_up_once_or_not_at_all() {
    // The manager's next line and the agent's claim race for the same offset; GitLab's
    // answers are slowed so that either may land first.
    for first in ["manager", "agent"] {
        let (gitlab, client, id, token) = job().await;
        let mut manager = Manager::new(OPENING);
        manager.line(&client, id, &token, WAITING).await;
        let snapshot = manager.snapshot();
        let live = manager.live(&snapshot, Some(Duration::from_millis(300)));
        let raced = tokio::sync::Notify::new();
        let claimed = snapshot.len();
        let racing = async {
            if first == "agent" {
                // Once the claim is in.
                while gitlab.job(id).unwrap().trace.len() <= claimed {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            manager.line(&client, id, &token, LATE).await;
            raced.notify_one();
            manager.stopped
        };
        let agent = agent(
            &client,
            id,
            &token,
            &snapshot,
            Some(live),
            Duration::from_secs(5),
            async {},
            // The manager's line goes out while the job still runs.
            raced.notified(),
        );
        let ((report, _), manager_stopped) = tokio::join!(agent, racing);
        assert!(report.delivered, "{first}: {report:?}");
        let late: &[u8] = if manager_stopped { b"" } else { LATE };
        assert_eq!(
            manager_stopped,
            first == "agent",
            "{first}: the manager stops at the 416 after the claim"
        );
        assert_one_writer(
            &gitlab,
            id,
            &[OPENING, WAITING, late, &own()].concat(),
            first,
        );
    }
}

#[tokio::test]
async fn lost_answers_on_either_side_lose_and_double_nothing() {
    // The manager's last patch lands, its answer is lost: it retries, gets 416, stops; the
    // agent, whose snapshot lacks that line, learns it from the live prelude.
    let (gitlab, client, id, token) = job().await;
    let mut manager = Manager::new(OPENING);
    manager.send(&client, id, &token).await;
    let snapshot = manager.snapshot();
    gitlab.fault(Endpoint::PatchTrace, Fault::ApplyThenStatus(502));
    manager.line(&client, id, &token, WAITING).await;
    assert!(manager.stopped, "the retried patch got 416");
    let live = manager.live(&snapshot, Some(Duration::from_millis(100)));
    let (report, stored) = agent(
        &client,
        id,
        &token,
        &snapshot,
        Some(live),
        Duration::from_secs(5),
        async {},
        async {},
    )
    .await;
    assert!(report.delivered, "{report:?}");
    assert_one_writer(
        &gitlab,
        id,
        &[OPENING, WAITING, &own()].concat(),
        "manager's",
    );
    assert_eq!(
        stored,
        [OPENING, &own()[..]].concat(),
        "the store kept only the snapshot"
    );

    // The agent's claim lands, its answer is lost: the retry's 416 names the claim's end,
    // which no manager patch can leave the log at.
    let (gitlab, client, id, token) = job().await;
    let mut manager = Manager::new(OPENING);
    manager.line(&client, id, &token, WAITING).await;
    let snapshot = manager.snapshot();
    let live = manager.live(&snapshot, None);
    let (report, _) = agent(
        &client,
        id,
        &token,
        &snapshot,
        Some(live),
        Duration::from_secs(5),
        async { gitlab.fault(Endpoint::PatchTrace, Fault::ApplyThenStatus(500)) },
        async {},
    )
    .await;
    assert!(report.delivered, "{report:?}");
    assert_one_writer(&gitlab, id, &[OPENING, WAITING, &own()].concat(), "agent's");
    let claims = gitlab
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert!(claims >= 3, "the claim was sent twice: {claims} patches");
}

#[tokio::test]
async fn a_live_prelude_that_never_catches_up_keeps_the_log_whole_without_a_checksum() {
    let (gitlab, client, id, token) = job().await;
    let mut manager = Manager::new(OPENING);
    manager.send(&client, id, &token).await;
    let snapshot = manager.snapshot();
    manager.line(&client, id, &token, LATE).await;
    let live = manager.live(&snapshot, None);
    let (report, _) = agent(
        &client,
        id,
        &token,
        &snapshot,
        Some(live),
        Duration::from_millis(300),
        async {},
        async {},
    )
    .await;
    assert!(report.delivered, "{report:?}");
    let job = gitlab.job(id).unwrap();
    let text = String::from_utf8_lossy(&job.trace).into_owned();
    let warning = format!(
        "{} bytes the runner manager wrote at the start of this log did not reach the job's pod in time",
        LATE.len()
    );
    assert!(
        text.starts_with(&String::from_utf8_lossy(&[OPENING, LATE].concat()).into_owned()),
        "{text}"
    );
    assert_eq!(text.matches("Running with podrunner").count(), 1, "{text}");
    // The agent's output follows whole, and the warning is there once (written when the
    // agent stopped waiting: here, while it delivered the final state).
    let rest = &text[OPENING.len() + LATE.len()..];
    assert!(rest.starts_with("$ echo hi\nhi\nJob succeeded\n"), "{text}");
    assert_eq!(text.matches(&warning).count(), 1, "{text}");
    assert_eq!(job.status, "success");
    let update = job.updates.last().unwrap();
    assert!(
        update.get("checksum").is_none() && update["output"].is_null(),
        "no checksum it cannot know: {update}"
    );
}
