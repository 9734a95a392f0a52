//! A job's log while its pod starts (the trace prelude), and the manager listening to GitLab
//! meanwhile. The protocol and its race analysis are in `docs/architecture.md`, "The job log
//! while the pod starts".
//!
//! The manager's rules, on which the agent's claim (`podrunner_gitlab::handover`) relies:
//! every line is whole and at least two bytes long; every byte is in the pod annotation
//! [`TRACE_PRELUDE_ANNOTATION`] (which only ever grows at its end) before it is sent; each
//! patch starts where GitLab last said the log ends; and the manager sends nothing more after
//! the first 416 (the agent has the log, or will resend the manager's bytes itself) or once
//! the watch shows the build container started.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use podrunner_agent::{FARGATE_PRICE_ANNOTATION, Prelude, TRACE_PRELUDE_ANNOTATION};
use podrunner_config::RunnerConfig;
use podrunner_gitlab::{
    FailureReason, GitlabClient, JobSignals, JobState, PatchOutcome, RemoteJobStatus, RunnerInfo,
    UpdateJobRequest, UpdateOutcome,
};
use podrunner_manager::JobContact;
use tokio::time::Instant;

use crate::calls::ApiCalls;

/// The most the manager writes into a job's log while its pod starts (the prelude travels in a
/// pod annotation; all of a pod's annotations must fit in 256 KiB).
const PRELUDE_LIMIT: usize = 64 * 1024;

/// gitlab-runner's trace update interval until GitLab sets one
/// (`X-GitLab-Trace-Update-Interval`; `common.DefaultUpdateInterval`).
const DEFAULT_UPDATE_INTERVAL: Duration = Duration::from_secs(3);

/// What GitLab said about the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Carry on.
    Running,
    /// Stop the job now: canceled, failed, canceling (before the script an abort, as in
    /// gitlab-runner), or no longer this runner's (403, 404).
    Stop(Stop),
}

/// Why GitLab wants the job stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// `canceling`: GitLab waits for the runner's final state.
    Canceling,
    /// `canceled` or `failed`: GitLab is done with the job.
    Ended(String),
    /// 403 or 404: the job is not this runner's any more.
    Gone,
}

impl Stop {
    /// The reason for the manager's log.
    pub(crate) fn describe(&self) -> String {
        match self {
            Stop::Canceling => "GitLab is canceling the job".to_owned(),
            Stop::Ended(status) => format!("GitLab says the job is {status}"),
            Stop::Gone => "GitLab no longer lets this runner update the job".to_owned(),
        }
    }
}

fn heard(signals: &JobSignals) -> Heard {
    match &signals.job_status {
        Some(RemoteJobStatus::Canceling) => Heard::Stop(Stop::Canceling),
        Some(RemoteJobStatus::Canceled) => Heard::Stop(Stop::Ended("canceled".into())),
        Some(RemoteJobStatus::Failed) => Heard::Stop(Stop::Ended("failed".into())),
        _ => Heard::Running,
    }
}

/// A job's log while its pod starts, and the manager's contact with GitLab meanwhile. The
/// manager writes the log (header, "Preparing environment", the executor's notes, what the
/// pod waits for) and keeps the annotation equal to it, annotation first; the build
/// container receives the annotation when it is created and, refreshed, through a
/// downward-API volume; its agent claims the log and continues it.
pub(crate) struct PodLog {
    prelude: Prelude,
    calls: ApiCalls,
    client: GitlabClient,
    job: JobContact,
    info: RunnerInfo,
    /// Bytes GitLab acknowledged.
    sent: u64,
    /// The manager may still send lines (no 416 yet, the annotation is writable, under the
    /// limit, the build container not started).
    writing: bool,
    /// The manager still answers for the job (until the build container starts).
    listening: bool,
    /// The last "waiting" status written, to write only changes.
    last_status: Vec<String>,
    /// How many of the pod's Warning events are in the log.
    warnings_written: usize,
    /// The Fargate size the pod got is in the log.
    capacity_noted: bool,
    /// That size and its price, for the agent's cost line (in an annotation).
    billing: Option<podrunner_agent::FargateBilling>,
    /// GitLab's update interval.
    interval: Duration,
    /// When GitLab is due to hear from the manager again.
    next_contact: Instant,
}

impl PodLog {
    /// Opens the log of `job`, whose agent gets `spec`.
    pub(crate) fn open(
        job: &JobContact,
        spec: &podrunner_agent::AgentSpec,
        client: GitlabClient,
        calls: ApiCalls,
        info: RunnerInfo,
    ) -> Option<Self> {
        let prelude = Prelude::open(spec).ok()?;
        Some(PodLog::new(prelude, job, client, calls, info, 0))
    }

    /// Takes over the log of an adopted pod that still waits: its prelude is in the
    /// annotation. Whether GitLab has all of it is unknown; the next patch says (a 416 ends
    /// the writing, and the agent sends what GitLab lacks).
    pub(crate) fn resume(
        job: &JobContact,
        spec: &podrunner_agent::AgentSpec,
        pod: &Pod,
        client: GitlabClient,
        calls: ApiCalls,
        info: RunnerInfo,
    ) -> Option<Self> {
        let bytes = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TRACE_PRELUDE_ANNOTATION))
            .and_then(|text| BASE64.decode(text.trim()).ok())?;
        let prelude = Prelude::resume(spec, &bytes).ok()?;
        let mut log = PodLog::new(prelude, job, client, calls, info, bytes.len() as u64);
        log.capacity_noted = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(FARGATE_PRICE_ANNOTATION));
        // Its waiting lines are in the prelude already: write only what changes from now on.
        log.last_status = waiting_lines(pod, true);
        Some(log)
    }

    fn new(
        prelude: Prelude,
        job: &JobContact,
        client: GitlabClient,
        calls: ApiCalls,
        info: RunnerInfo,
        sent: u64,
    ) -> Self {
        PodLog {
            prelude,
            calls,
            client,
            job: job.clone(),
            info,
            sent,
            writing: true,
            listening: true,
            last_status: Vec::new(),
            warnings_written: 0,
            capacity_noted: false,
            billing: None,
            interval: DEFAULT_UPDATE_INTERVAL,
            next_contact: Instant::now() + DEFAULT_UPDATE_INTERVAL,
        }
    }

    /// The prelude as the annotation holds it.
    pub(crate) fn encoded(&self) -> String {
        BASE64.encode(self.prelude.bytes())
    }

    /// When GitLab is due to hear from the manager; `None` once the agent answers for the
    /// job.
    pub(crate) fn next_contact(&self) -> Option<Instant> {
        self.listening.then_some(self.next_contact)
    }

    /// Whether the manager still answers for the job.
    pub(crate) fn listening(&self) -> bool {
        self.listening
    }

    fn contacted(&mut self, signals: &JobSignals) -> Heard {
        if let Some(interval) = signals.update_interval {
            self.interval = interval;
        }
        self.next_contact = Instant::now() + self.interval;
        heard(signals)
    }

    /// Sends what GitLab does not have yet.
    pub(crate) async fn send(&mut self) -> Heard {
        if !self.writing {
            return Heard::Running;
        }
        let bytes = self.prelude.bytes();
        let unsent = bytes.get(self.sent as usize..).unwrap_or_default();
        if unsent.is_empty() {
            return Heard::Running;
        }
        let job = &self.job;
        // Boxed, like every GitLab call here: the request's future lives only while it runs.
        let (outcome, signals) = Box::pin(
            self.client
                .patch_trace(job.id, &job.token, self.sent, unsent, false),
        )
        .await;
        let said = self.contacted(&signals);
        match outcome {
            PatchOutcome::Accepted { offset } => self.sent = offset,
            // Someone else's bytes are at the end (the agent's claim), or ours landed and the
            // answer was lost, or GitLab lost some: in every case the manager stops, and the
            // agent, which knows every byte the manager sent (the annotation), sends what is
            // missing.
            PatchOutcome::RangeMismatch { .. } => self.writing = false,
            PatchOutcome::NotFound | PatchOutcome::Abort if said == Heard::Running => {
                return Heard::Stop(Stop::Gone);
            }
            // Not sent, or sent with its answer lost: the next contact tries again from the
            // same offset, and a 416 then tells.
            _ => {}
        }
        said
    }

    /// Keeps GitLab in touch while the pod waits, as gitlab-runner's trace does every update
    /// interval (`network/trace.go`, `incrementalUpdate`): the unsent lines if there are
    /// any, else `PUT jobs/:id` with `state=running` (its `touchJob`). Either answer carries
    /// the job's status.
    pub(crate) async fn contact(&mut self) -> Heard {
        let unsent = self.prelude.len() as u64 > self.sent;
        if self.writing && unsent {
            return self.send().await;
        }
        let job = &self.job;
        let request = UpdateJobRequest {
            info: self.info.clone(),
            token: job.token.clone(),
            state: JobState::Running,
            failure_reason: None,
            checksum: None,
            output: None,
            exit_code: None,
        };
        let (outcome, signals) = Box::pin(self.client.update_job(job.id, &request)).await;
        let said = self.contacted(&signals);
        if outcome == UpdateOutcome::Abort && said == Heard::Running {
            return Heard::Stop(Stop::Gone);
        }
        said
    }

    /// Ends a job GitLab stopped before its script: for `canceling`, GitLab waits for the
    /// final state (`failed`, `job_canceled`, as gitlab-runner reports an aborted job). Whether
    /// GitLab took it.
    pub(crate) async fn end_stopped(&mut self, stop: &Stop) -> bool {
        self.listening = false;
        if *stop != Stop::Canceling {
            return false;
        }
        let job = &self.job;
        let request = UpdateJobRequest {
            info: self.info.clone(),
            token: job.token.clone(),
            state: JobState::Failed,
            failure_reason: Some(FailureReason::JobCanceled.for_gitlab(&job.failure_reasons)),
            checksum: None,
            output: None,
            exit_code: None,
        };
        matches!(
            Box::pin(self.client.update_job(job.id, &request)).await.0,
            UpdateOutcome::Succeeded
        )
    }

    /// Adds gitlab-runner's warning about a failed pull (no policy left) and sends it; the
    /// pod is gone, so no annotation is written.
    pub(crate) async fn warning(&mut self, warning: &str) -> Heard {
        if !self.writing || self.prelude.len() > PRELUDE_LIMIT {
            return Heard::Running;
        }
        self.prelude.warning(warning);
        self.send().await
    }

    /// Adds gitlab-runner's lines about a failed pull and the next attempt, sends them, and
    /// starts over for the next pod (which gets the whole prelude in its annotation).
    pub(crate) async fn next_pod(&mut self, warning: &str, info: &str) -> Heard {
        self.last_status.clear();
        self.warnings_written = 0;
        self.capacity_noted = false;
        self.billing = None;
        if !self.writing || self.prelude.len() > PRELUDE_LIMIT {
            return Heard::Running;
        }
        self.prelude.warning(warning);
        self.prelude.line(info);
        self.send().await
    }

    /// Adds what `pod` waits for, when it changed, and hands it to the pod and to GitLab.
    pub(crate) async fn observe(
        &mut self,
        pods: &Api<Pod>,
        pod: &Pod,
        warnings: &[String],
        runner: &RunnerConfig,
    ) -> Heard {
        if !self.listening {
            return Heard::Running;
        }
        if build_started(pod) {
            // The agent owns the log and answers for the job now.
            self.writing = false;
            self.listening = false;
            return Heard::Running;
        }
        if !self.writing {
            return Heard::Running;
        }
        let before = self.prelude.len();
        let conditions = runner
            .kubernetes
            .as_ref()
            .is_none_or(|k| k.print_pod_warning_events());
        let status = waiting_lines(pod, conditions);
        if status != self.last_status {
            for line in &status {
                self.prelude.line(line);
            }
            self.last_status = status;
        }
        if conditions {
            for warning in warnings.iter().skip(self.warnings_written) {
                self.prelude
                    .warning(&format!("Event retrieved from the cluster: {warning}"));
            }
            self.warnings_written = self.warnings_written.max(warnings.len());
        }
        if !self.capacity_noted
            && let Some(capacity) = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("CapacityProvisioned"))
            && let Some(billing) = crate::fargate::provisioned_billing(
                capacity,
                runner.kubernetes.as_ref().and_then(|k| k.fargate.as_ref()),
            )
        {
            self.capacity_noted = true;
            self.prelude.line(&format!(
                "Fargate: provisioned {capacity}, ${:.6}/h, billed per second with a one-minute minimum",
                billing.usd_per_hour
            ));
            self.billing = Some(billing);
            // Without declared profiles nothing was predicted before creation: say now what
            // pushed the pod up a size, if anything did.
            let fargate = runner.kubernetes.as_ref().and_then(|k| k.fargate.as_ref());
            if fargate.is_none_or(|f| f.profiles.is_empty())
                && let Some(prediction) = crate::fargate::predict(pod, fargate, true)
            {
                for warning in &prediction.warnings {
                    self.prelude.warning(warning);
                }
            }
        }
        let bytes = self.prelude.bytes();
        if bytes.len() == before {
            return Heard::Running;
        }
        if bytes.len() > PRELUDE_LIMIT {
            // Enough said; the agent takes the log from what the pod already has.
            self.writing = false;
            return Heard::Running;
        }
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let mut annotations = serde_json::json!({
            TRACE_PRELUDE_ANNOTATION: BASE64.encode(&bytes),
        });
        if let Some(billing) = &self.billing {
            annotations[FARGATE_PRICE_ANNOTATION] = billing.to_annotation().into();
        }
        let annotation = serde_json::json!({"metadata": {"annotations": annotations}});
        let (params, annotation) = (PatchParams::default(), Patch::Merge(&annotation));
        // Annotation first: an agent that starts now must know every byte GitLab may get.
        if self
            .calls
            .run("update the trace prelude", || {
                pods.patch(name, &params, &annotation)
            })
            .await
            .is_err()
        {
            // Whether the patch landed is unknown: the annotation may hold lines GitLab never
            // gets, which is fine (the agent sends them), but never the reverse.
            self.writing = false;
            return Heard::Running;
        }
        self.send().await
    }
}

/// The build container runs or ran: its agent owns the log.
pub(crate) fn build_started(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    !matches!(status.phase.as_deref(), None | Some("Pending"))
        || status
            .container_statuses
            .iter()
            .flatten()
            .filter(|c| c.name == "build")
            .any(|c| {
                c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            })
}

/// gitlab-runner's lines for a pod that is not running yet: where it is and, tab-indented
/// when `conditions` (`print_pod_warning_events`), each condition that holds it back.
fn waiting_lines(pod: &Pod, conditions: bool) -> Vec<String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("<unknown>");
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let mut lines = vec![format!(
        "Waiting for pod {namespace}/{name} to be running on the node {node}, status is {phase}"
    )];
    for condition in status
        .and_then(|s| s.conditions.as_ref())
        .filter(|_| conditions)
        .into_iter()
        .flatten()
    {
        if condition.status == "True" {
            continue;
        }
        if let Some(reason) = &condition.reason {
            lines.push(format!(
                "\t{reason}: {:?}",
                condition.message.as_deref().unwrap_or_default()
            ));
        }
    }
    lines
}
