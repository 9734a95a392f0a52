//! Following a job's pod through the shared watch: what its states say ([`crate::judge`]),
//! the prelude while it waits, `poll_timeout`, and the stop on abort.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use podrunner_config::RunnerConfig;
use podrunner_manager::Event;
use tokio_util::sync::CancellationToken;

use super::{JobPod, KubernetesExecutor, Outcome};

/// What following a pod came to.
pub(super) enum Followed {
    /// The pod's job ended, or cannot go on, as [`Outcome`] says.
    Ended(Outcome),
    /// Another manager took the pod over (this manager's Lease was taken): nothing of the
    /// job is touched or reported from here.
    HandedOver,
}

impl From<Outcome> for Followed {
    fn from(outcome: Outcome) -> Self {
        Followed::Ended(outcome)
    }
}
use crate::judge::{capacity_provisioned, has_run, judge, not_running, on_fargate};
use crate::prelude::{Heard, build_started};

/// After asking the agent to stop (pod deletion), how long it gets to report.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(30);

impl KubernetesExecutor {
    /// Follows the pod through the shared watch until the build container ends or the pod
    /// cannot run the job.
    pub(super) async fn follow(
        &self,
        runner: &RunnerConfig,
        job_id: i64,
        job_pod: &mut JobPod,
        abort: &CancellationToken,
        provisioned: &mut Option<(String, tokio::time::Instant)>,
    ) -> Followed {
        if let Heard::Stop(stop) = std::mem::replace(&mut job_pod.heard, Heard::Running) {
            return Outcome::Stopped(stop).into();
        }
        // Told at once when this manager loses the Lease its pod is owned through.
        let mut lapses = match job_pod.leased {
            true => Box::pin(self.leases.lapses(&job_pod.namespace)).await,
            false => None,
        };
        let leased = job_pod.leased;
        let (namespace, pod_name) = (job_pod.namespace.as_str(), job_pod.name.as_str());
        let state = &mut job_pod.state;
        let log = &mut job_pod.log;
        // The job's writes (the prelude's patches, the delete on abort): the job's client.
        let pods_api: Api<Pod> = Api::namespaced(job_pod.writer.client.clone(), namespace);
        let poll_timeout =
            Duration::from_secs(runner.kubernetes_or_default().poll_timeout_secs().max(1));
        let started = tokio::time::Instant::now();
        let mut seen = false;
        // Pod start latency is reported once, for pods this run saw before they ran.
        let mut start_reported = false;
        let mut ran = false;
        let mut pull_error_since: Option<tokio::time::Instant> = None;
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            let pod = state.borrow_and_update().clone();
            match &pod {
                None if seen => {
                    return Outcome::Failed(format!(
                        "pod {namespace}/{pod_name} was deleted before the job finished"
                    ))
                    .into();
                }
                None => {}
                Some(pod) => {
                    if !seen {
                        start_reported = build_started(pod);
                    }
                    seen = true;
                    if !start_reported && build_started(pod) {
                        start_reported = true;
                        Event::PodRunning {
                            job_id,
                            namespace: namespace.to_owned(),
                            pod: pod_name.to_owned(),
                            fargate: on_fargate(pod),
                            seconds: started.elapsed().as_secs_f64(),
                        }
                        .emit();
                    }
                    if provisioned.is_none()
                        && let Some(capacity) = capacity_provisioned(pod)
                    {
                        *provisioned = Some((capacity.to_owned(), tokio::time::Instant::now()));
                    }
                    let fargate = self.states(namespace).fargate_of(pod_name);
                    if let Some(outcome) = judge(pod, &fargate, &mut pull_error_since) {
                        return outcome.into();
                    }
                    if let Some(open) = log.as_mut() {
                        // The job's log is its owner's to write.
                        if Box::pin(self.lost_lease(namespace, leased)).await {
                            return Followed::HandedOver;
                        }
                        let warnings = self.states(namespace).warnings_of(pod_name);
                        // Boxed, as every call here: the follower's own future, alive for
                        // the whole job, stays small.
                        if let Heard::Stop(stop) =
                            Box::pin(open.observe(&pods_api, pod, &warnings, runner)).await
                        {
                            return Outcome::Stopped(stop).into();
                        }
                        if !open.listening() {
                            // The agent has the log and answers for the job now.
                            *log = None;
                        }
                    }
                    // poll_timeout bounds the wait until the pod runs, as gitlab-runner's
                    // waitForPodRunning does; once it ran, the job's own timeout rules.
                    ran |= has_run(pod);
                    if !ran && started.elapsed() >= poll_timeout {
                        return Outcome::Failed(not_running(
                            pod,
                            &fargate,
                            namespace,
                            pod_name,
                            poll_timeout.as_secs(),
                        ))
                        .into();
                    }
                }
            }
            // Not kept while the follower waits: the watch keeps the latest.
            drop(pod);
            if stopping.is_some_and(|since| since.elapsed() >= AGENT_STOP_GRACE) {
                return Outcome::Failed("the job was interrupted by the runner's shutdown".into())
                    .into();
            }
            let contact_at = log.as_ref().and_then(|log| log.next_contact());
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        return Outcome::Failed("the pod watch ended".into()).into();
                    }
                }
                Some(()) = lapsed(&mut lapses) => return Followed::HandedOver,
                () = tokio::time::sleep_until(contact_at.unwrap_or_else(tokio::time::Instant::now)), if contact_at.is_some() => {
                    if Box::pin(self.lost_lease(namespace, leased)).await {
                        return Followed::HandedOver;
                    }
                    if let Some(open) = log.as_mut()
                        && let Heard::Stop(stop) = Box::pin(open.contact()).await
                    {
                        return Outcome::Stopped(stop).into();
                    }
                }
                // Clocks run only for a pod that has not run, a pull error's grace and a stop;
                // a running pod's follower wakes on its changes alone.
                () = tokio::time::sleep(Duration::from_secs(1)), if !ran || pull_error_since.is_some() || stopping.is_some() => {}
                () = abort.cancelled(), if stopping.is_none() => {
                    // Deleting the pod sends the agent SIGTERM; it reports runner_interrupted.
                    stopping = Some(tokio::time::Instant::now());
                    let params = DeleteParams { grace_period_seconds: Some(AGENT_STOP_GRACE.as_secs() as u32), ..Default::default() };
                    let calls = self.calls(runner);
                    let _ = Box::pin(calls.run("delete Pod", || pods_api.delete(pod_name, &params))).await;
                }
            }
        }
    }
}

/// Waits for the next loss of the Lease (`None` once nothing can tell of one).
async fn lapsed(lapses: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match lapses {
        Some(lapses) => lapses.changed().await.ok(),
        None => std::future::pending().await,
    }
}
