//! The pods an earlier run of this manager left: adopted at start, each followed to its end as
//! a resumed job.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use podrunner_config::RunnerConfig;
use podrunner_manager::{AcceptedJob, Event, JobEnd, agent_spec};
use tokio_util::sync::CancellationToken;

use super::{JobPod, KubernetesExecutor, api_error};
use crate::plan::MANAGER_LABEL;
use crate::prelude::{PodLog, build_started};

impl KubernetesExecutor {
    /// The job pods a previous run of this manager left (same system ID) in `runner`'s
    /// namespace, or in every namespace it can use ([`crate::namespaces::in_use`]), as jobs the manager resumes ([`Executor::resume`]): each is followed to its end and
    /// cleaned up like a job of this run. The agents inside kept running the jobs and sending
    /// their traces meanwhile. Then the sweep of stray pods and Secrets starts.
    pub(super) async fn adopt(self: Arc<Self>, runner: Arc<RunnerConfig>) -> Vec<AcceptedJob> {
        let calls = self.calls(&runner);
        let covered =
            crate::namespaces::in_use(&self.client, &calls, &runner, &self.system_id).await;
        let mut jobs = Vec::new();
        for namespace in covered.namespaces {
            jobs.extend(self.adopt_in(&runner, namespace).await);
        }
        // From now on every pod of this manager is followed by someone; what is not is stray.
        tokio::spawn(self.clone().sweep_forever(runner, calls));
        jobs
    }

    /// Adoption in one namespace.
    pub(super) async fn adopt_in(
        &self,
        runner: &Arc<RunnerConfig>,
        namespace: String,
    ) -> Vec<AcceptedJob> {
        // This pod's Lease first: from a restart of the same pod, it is taken back.
        self.leases.ensure(&namespace).await;
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let selector = format!("{MANAGER_LABEL}={}", self.system_id);
        let calls = self.calls(runner);
        let params = kube::api::ListParams::default().labels(&selector);
        let pods = match calls
            .run("list Pods to adopt", || pods_api.list(&params))
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                Event::KubernetesProblem {
                    doing: format!("listing the pods an earlier run left in {namespace}"),
                    error: api_error(&e),
                }
                .emit();
                return Vec::new();
            }
        };
        let mut jobs = Vec::new();
        for pod in pods {
            if let Some(job) = self.adopt_pod(runner, &namespace, pod, &calls).await {
                jobs.push(job);
            }
        }
        jobs
    }

    /// Follows an adopted job's pod to its end.
    pub(super) async fn resume_job(&self, job: AcceptedJob, abort: CancellationToken) -> JobEnd {
        let contact = job.contact();
        match Box::pin(self.reopen(job)).await {
            Some(pod) => self.finish(&contact, pod, &abort).await,
            None => {
                self.fail(
                    &contact,
                    "the job's pod was not adopted by this executor",
                    None,
                )
                .await
            }
        }
    }

    /// The adopted pod of `job`, with its log open again when it still waits (the manager
    /// writes the log and listens again). The job itself is not kept: its follower needs
    /// only its contact.
    async fn reopen(&self, job: AcceptedJob) -> Option<JobPod> {
        let mut pod = self
            .adopted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.payload.job.id)?;
        let waiting = pod.state.borrow().clone().filter(|p| !build_started(p));
        if let Some(waiting) = waiting
            && let Some(client) = self.gitlab_client(&job.runner)
        {
            let runner = job.runner.clone();
            let spec = agent_spec(
                &job,
                podrunner_config::Executor::Kubernetes,
                PathBuf::from(runner.builds_dir()),
                PathBuf::from(runner.cache_dir()),
                None,
                PathBuf::from("/dev/termination-log"),
            )
            .await;
            pod.log = PodLog::resume(
                &job.contact(),
                &spec,
                &waiting,
                client,
                self.calls(&runner),
                self.info.clone(),
            )
            .map(Box::new);
        }
        Some(pod)
    }
}
