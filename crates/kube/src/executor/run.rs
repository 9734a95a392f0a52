//! One job of this run, from plan to final state: create the pod and its Secrets, hand the
//! trace prelude over, follow the pod, delete it, and make sure GitLab has the job's end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use podrunner_agent::Note;
use podrunner_agent::TRACE_PRELUDE_ANNOTATION;
use podrunner_gitlab::api::FailureReason;
use podrunner_manager::{AcceptedJob, Event, JobContact, JobEnd, agent_spec, fail_job_as};
use tokio_util::sync::CancellationToken;

use super::follow::Followed;
use super::ownership::Ownership;
use super::secrets::JobSecrets;
use super::{JobPod, JobWriter, KubernetesExecutor, Outcome, already_exists, is_conflict};
use crate::calls::ApiCalls;
use crate::plan::{JOB_LABEL, MANAGER_LABEL, PlanContext, PodPlan, plan, plan_attempt};
use crate::prelude::{Heard, PodLog};
use crate::pull_policy::{AfterFailure, Policy, PullAttempts};

/// Jobs whose pods are being made at once, per executor: a job waits for its turn before it
/// plans its pod, writes its spec and opens its log, rather than with them made, while the
/// calls it needs wait their turn ([`crate::calls::CALLS_IN_FLIGHT`]). A hundred jobs
/// arriving together had all of that made at once (docs/benchmarks.md, scale: the peak).
/// Each start makes a handful of calls in a row, so as many starts as calls under way keep
/// the calls' bound busy.
pub const STARTS_UNDER_WAY: usize = crate::calls::CALLS_IN_FLIGHT;

/// What a job's pods are made from, kept from its first pod while another may follow it (a
/// pull failure with a policy left makes another pod).
struct Launch {
    /// The whole job: its payload plans the next pod and its registry Secret.
    job: AcceptedJob,
    /// The next pod's plan, when made already (the first pod's, by [`KubernetesExecutor::prepare`]).
    planned: Option<Box<PodPlan>>,
    /// Whose credentials the job's writes use.
    writer: JobWriter,
    namespace: String,
    /// How this manager marks the job's objects.
    owner: Ownership,
    secrets: JobSecrets,
    /// The agent's spec as its Secret holds it.
    spec_json: Vec<u8>,
    /// The log while the pod starts, carried from one pod to the next.
    log: Option<Box<PodLog>>,
}

/// A pod made for the job, and what it needs to know after it failed to pull.
struct Started {
    pod: JobPod,
    pull_policies: BTreeMap<String, Vec<Policy>>,
}

impl KubernetesExecutor {
    /// Runs `job` to its end. What the start needs lives only while it runs (boxed, as every
    /// call here), and the whole job only while another pod of it may be made: the job's
    /// task keeps, while its pod runs, only what follows it and the job's [`JobContact`]
    /// (docs/benchmarks.md, scale).
    pub(super) async fn run_job(&self, job: AcceptedJob, abort: CancellationToken) -> JobEnd {
        let contact = job.contact();
        // The semaphore is never closed: no permit only means no bound.
        let mut first_turn = self.starts.acquire().await.ok();
        let mut launch = match Box::pin(self.prepare(job, &contact)).await {
            Ok(launch) => launch,
            Err(end) => return end,
        };
        let mut attempts = PullAttempts::default();
        // One pod per attempt: a pull failure with a policy left deletes it (and what it owns)
        // and creates the next, as gitlab-runner's `Run` does.
        loop {
            let turn = match first_turn.take() {
                Some(turn) => Some(turn),
                None => self.starts.acquire().await.ok(),
            };
            let started = Box::pin(self.start_pod(&contact, &mut launch, &attempts)).await;
            // The pod is made (or the job failed): the next job's turn.
            drop(turn);
            let Started {
                mut pod,
                pull_policies,
            } = match started {
                Ok(started) => started,
                Err(end) => return end,
            };
            // No policy left to try after this pod's: nothing more is made from the job.
            let next = may_retry(&pull_policies).then_some(launch);
            let outcome = match Box::pin(self.follow_and_delete(&contact, &mut pod, &abort)).await {
                Followed::Ended(outcome) => outcome,
                Followed::HandedOver => return self.let_go(contact.id, &pod),
            };
            let Outcome::PullFailed(failure) = &outcome else {
                return Box::pin(self.conclude(&contact, pod, outcome)).await;
            };
            match (attempts.record_failure(failure, &pull_policies), next) {
                (AfterFailure::Retry { warning, info }, Some(next)) => {
                    if let Some(open) = pod.log.as_mut()
                        && let Heard::Stop(stop) = Box::pin(open.next_pod(&warning, &info)).await
                    {
                        return Box::pin(self.conclude(&contact, pod, Outcome::Stopped(stop)))
                            .await;
                    }
                    launch = next;
                    launch.log = pod.log.take();
                }
                // A retry needs a policy left, and then `next` was kept.
                (AfterFailure::Retry { .. }, None) => {
                    return Box::pin(self.conclude(&contact, pod, outcome)).await;
                }
                (AfterFailure::GiveUp { warning }, _) => {
                    if let Some(log) = pod.log.as_mut() {
                        Box::pin(log.warning(&warning)).await;
                    }
                    return Box::pin(self.conclude(&contact, pod, outcome)).await;
                }
            }
        }
    }

    /// Plans the job's first pod and prepares what every pod of it needs: the namespace, the
    /// Lease, the agent's spec and the log; or fails the job before anything was created.
    /// The launch is boxed: the job's task keeps a pointer to it while its pod runs, or none.
    async fn prepare(&self, job: AcceptedJob, contact: &JobContact) -> Result<Box<Launch>, JobEnd> {
        let runner = &job.runner;
        let short = podrunner_manager::short_token(runner.token.as_deref().unwrap_or(""));
        let planned = match plan(runner, &job.payload, &self.plan_context(&short)) {
            Ok(planned) => planned,
            Err(e) => return Err(self.fail(contact, &e.to_string(), Some(0)).await),
        };
        // The job's own writes: with the manager's client, or with the job's token.
        let writer = match self.writer(planned.bearer_token.as_ref()) {
            Ok(writer) => writer,
            Err(e) => return Err(self.fail(contact, &e.to_string(), Some(0)).await),
        };
        let namespace = planned.namespace.clone();
        // Fargate: refuse before creating anything when a declared profile takes the pod and
        // Fargate cannot run it; otherwise tell the job what it will get and cost.
        let fargate = runner.kubernetes.as_ref().and_then(|k| k.fargate.as_ref());
        let prediction = crate::fargate::predict(&planned.pod, fargate, false);
        if let (Some(prediction), Some(config)) = (&prediction, fargate)
            && config.reject_unsupported
            && !prediction.problems.is_empty()
        {
            let why = format!(
                "Fargate profile {} takes this job's pod, but Fargate cannot run it: {} (nothing was created; set reject_unsupported = false in [runners.kubernetes.fargate] to try anyway)",
                prediction.profile.as_deref().unwrap_or("(assumed)"),
                prediction.problems.join("; ")
            );
            return Err(self.fail(contact, &why, Some(0)).await);
        }
        let poll_timeout = Duration::from_secs(runner.kubernetes_or_default().poll_timeout_secs());
        if let Err(why) = Box::pin(crate::namespaces::prepare(
            &self.client,
            &self.calls(runner),
            runner,
            &self.namespaces,
            &self.system_id,
            job.payload.job.id,
            &namespace,
            poll_timeout,
        ))
        .await
        {
            return Err(self.fail(contact, &why, Some(0)).await);
        }
        // Owned through this manager's Lease, made (in a namespace that exists now) before
        // its first pod there.
        let owner = Box::pin(self.ownership(&namespace)).await;
        let mut notes: Vec<Note> = planned.warnings.iter().map(Note::warning).collect();
        if let Some(warning) = crate::fargate::unmatched_profile_warning(&planned.pod, fargate) {
            Event::KubernetesProblem {
                doing: format!("planning the pod of job {}", job.payload.job.id),
                error: warning.clone(),
            }
            .emit();
            notes.push(Note::warning(warning));
        }
        if let Some(prediction) = &prediction {
            notes.push(Note::FargateSize {
                profile: prediction.profile.clone(),
                vcpu: prediction.vcpu,
                memory_gb: prediction.memory_gb,
                requested_vcpu: prediction.requested_vcpu,
                requested_memory_gb: prediction.requested_memory_gb,
                usd_per_hour: prediction.usd_per_hour,
            });
            notes.extend(prediction.warnings.iter().map(Note::warning));
        }
        let mut spec = Box::pin(agent_spec(
            &job,
            podrunner_config::Executor::Kubernetes,
            PathBuf::from(runner.builds_dir()),
            PathBuf::from(runner.cache_dir()),
            None,
            PathBuf::from("/dev/termination-log"),
        ))
        .await;
        spec.notes = notes;
        // The log starts here, written by the manager until the agent takes it over.
        let log = self.gitlab_client(runner).and_then(|client| {
            PodLog::open(
                contact,
                &spec,
                client,
                self.calls(runner),
                self.info.clone(),
            )
            .map(Box::new)
        });
        let secrets = JobSecrets::new(
            &namespace,
            &self.system_id,
            job.payload.job.id,
            owner.annotations(),
        );
        Ok(Box::new(Launch {
            // The typed spec (a copy of the payload) is not kept, only its JSON.
            spec_json: super::secrets::spec_json(&spec),
            planned: Some(Box::new(planned)),
            writer,
            namespace,
            owner,
            secrets,
            log,
            job,
        }))
    }

    /// What [`plan`] needs of this manager.
    fn plan_context<'a>(&'a self, runner_short_token: &'a str) -> PlanContext<'a> {
        PlanContext {
            system_id: &self.system_id,
            init_image: &self.init_image,
            runner_short_token,
        }
    }

    /// Creates the job's next pod, after `attempts`' pull failures, with its Secrets and
    /// budget, and hands the log's start to it; or deletes what it made and fails the job.
    async fn start_pod(
        &self,
        contact: &JobContact,
        launch: &mut Launch,
        attempts: &PullAttempts,
    ) -> Result<Started, JobEnd> {
        let Launch {
            job,
            planned,
            writer,
            namespace,
            owner,
            secrets,
            spec_json,
            log: launch_log,
        } = launch;
        let (job, runner) = (&*job, &job.runner);
        let mut planned = match planned.take() {
            Some(planned) => *planned,
            None => {
                let short = podrunner_manager::short_token(runner.token.as_deref().unwrap_or(""));
                let context = self.plan_context(&short);
                match plan_attempt(runner, &job.payload, &context, attempts) {
                    Ok(planned) => planned,
                    Err(e) => return Err(self.fail(contact, &e.to_string(), None).await),
                }
            }
        };
        owner.mark(&mut planned.pod.metadata);
        if let Some(log) = launch_log {
            planned
                .pod
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(TRACE_PRELUDE_ANNOTATION.to_owned(), log.encoded());
        }
        let secrets_api: Api<Secret> = Api::namespaced(writer.client.clone(), namespace);
        let pods_api: Api<Pod> = Api::namespaced(writer.client.clone(), namespace);
        let calls = self.calls(runner);
        let states = self.states(namespace);
        let post = PostParams::default();
        let pod_name = planned.pod.metadata.name.clone().unwrap_or_default();
        let registry_secret = planned
            .registry_secret
            .as_ref()
            .map(|name| secrets.registry(name, job));
        let pod_state = states.subscribe(&pod_name);

        // The registry Secret first: the kubelet needs it as soon as it pulls the image.
        let unowned: Vec<Secret> = registry_secret.into_iter().collect();
        for secret in &unowned {
            let created = calls
                .run("create Secret", || secrets_api.create(&post, secret))
                .await;
            // 409 after a retry: the lost answer's create went through (names are per job).
            if let Err(e) = created.map(|_| ()).or_else(already_exists) {
                states.forget(&pod_name);
                let why = format!(
                    "cannot create Secret {namespace}/{}: {}",
                    secret.metadata.name.as_deref().unwrap_or_default(),
                    writer.error(&e)
                );
                return Err(self.fail(contact, &why, Some(0)).await);
            }
        }
        let created = match calls
            .run("create Pod", || pods_api.create(&post, &planned.pod))
            .await
        {
            Ok(pod) => Ok(pod),
            // 409 after a retry: the lost answer's create went through; find that pod.
            Err(e) if is_conflict(&e) => self
                .find_job_pod(&calls, &pods_api, contact.id)
                .await
                .ok_or(e),
            Err(e) => Err(e),
        };
        let created = match created {
            Ok(pod) => pod,
            Err(e) => {
                self.delete_secrets(&calls, &secrets_api, &unowned).await;
                states.forget(&pod_name);
                let why = format!(
                    "cannot create pod {namespace}/{pod_name}: {}",
                    writer.error(&e)
                );
                return Err(self.fail(contact, &why, Some(0)).await);
            }
        };
        Event::PodCreated {
            job_id: contact.id,
            namespace: namespace.clone(),
            pod: pod_name.clone(),
        }
        .emit();
        // The spec Secret is born owned by the pod (whoever deletes the pod collects it); the
        // kubelet mounts it once it exists.
        let pod_owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod_name.clone(),
            uid: created.metadata.uid.clone().unwrap_or_default(),
            block_owner_deletion: Some(true),
            controller: None,
        };
        // The last pod of the job takes the JSON; one that may be followed by another, a copy.
        let json = match may_retry(&planned.pull_policies) {
            true => spec_json.clone(),
            false => std::mem::take(spec_json),
        };
        let spec_secret = secrets.spec(&planned.spec_secret, json, pod_owner.clone());
        let created_secret = calls
            .run("create Secret", || secrets_api.create(&post, &spec_secret))
            .await;
        let refused = match created_secret.map(|_| ()).or_else(already_exists) {
            Err(e) => Some(format!(
                "cannot create Secret {namespace}/{}: {}",
                planned.spec_secret,
                writer.error(&e)
            )),
            Ok(()) => Box::pin(crate::pdb::create(
                runner, writer, &calls, &created, &pod_owner,
            ))
            .await
            .err(),
        };
        let leased = owner.leased();
        if let Some(why) = refused {
            let pod = JobPod {
                namespace: namespace.clone(),
                name: pod_name,
                state: pod_state,
                orphan_secrets: unowned,
                log: None,
                heard: Heard::Running,
                leased,
                writer: writer.clone(),
            };
            // Nothing ran: the pod cannot start without its spec (or its budget). Delete it.
            Box::pin(self.discard(contact, pod)).await;
            return Err(self.fail(contact, &why, Some(0)).await);
        }
        // What GitLab answers is heard by `follow`, which acts on it with the pod in view.
        let mut log = launch_log.take();
        let mut heard = Heard::Running;
        if let Some(log) = &mut log {
            heard = Box::pin(log.send()).await;
        }
        let orphan_secrets =
            Box::pin(self.own_secrets(&calls, &secrets_api, &pod_owner, unowned)).await;
        Ok(Started {
            pod: JobPod {
                namespace: namespace.clone(),
                name: pod_name,
                state: pod_state,
                orphan_secrets,
                log,
                heard,
                leased,
                writer: writer.clone(),
            },
            pull_policies: planned.pull_policies,
        })
    }

    /// Deletes a pod that never ran its job, and the Secrets it does not own.
    pub(super) async fn discard(&self, job: &JobContact, pod: JobPod) {
        let calls = self.calls(&job.runner);
        let pods_api: Api<Pod> = Api::namespaced(pod.writer.client.clone(), &pod.namespace);
        let secrets_api: Api<Secret> = Api::namespaced(pod.writer.client.clone(), &pod.namespace);
        self.states(&pod.namespace).forget(&pod.name);
        let params = DeleteParams::background();
        let _ = calls
            .run("delete Pod", || pods_api.delete(&pod.name, &params))
            .await;
        self.delete_secrets(&calls, &secrets_api, &pod.orphan_secrets)
            .await;
    }

    /// Follows a created pod to its end, deletes it (and the Secrets it does not own), and
    /// makes sure GitLab has the job's final state.
    pub(super) async fn finish(
        &self,
        job: &JobContact,
        mut pod: JobPod,
        abort: &CancellationToken,
    ) -> JobEnd {
        match Box::pin(self.follow_and_delete(job, &mut pod, abort)).await {
            Followed::Ended(outcome) => Box::pin(self.conclude(job, pod, outcome)).await,
            Followed::HandedOver => self.let_go(job.id, &pod),
        }
    }

    /// Follows a created pod to its end, then deletes it and the Secrets it does not own;
    /// or touches nothing when another manager took the pod over.
    async fn follow_and_delete(
        &self,
        job: &JobContact,
        pod: &mut JobPod,
        abort: &CancellationToken,
    ) -> Followed {
        let runner = job.runner.clone();
        let (namespace, pod_name) = (pod.namespace.clone(), pod.name.clone());
        let (namespace, pod_name) = (namespace.as_str(), pod_name.as_str());
        let pods_api: Api<Pod> = Api::namespaced(pod.writer.client.clone(), namespace);
        let secrets_api: Api<Secret> = Api::namespaced(pod.writer.client.clone(), namespace);
        let mut provisioned = None;
        let outcome = Box::pin(self.follow(&runner, job.id, pod, abort, &mut provisioned)).await;
        // Whatever the pod looked like from here, another manager may have it now: then
        // nothing of it is this manager's to delete or report.
        let outcome = match outcome {
            Followed::Ended(outcome) if !Box::pin(self.taken_from_me(pod)).await => outcome,
            _ => return Followed::HandedOver,
        };
        if let Some((capacity, since)) = provisioned
            && let Some(billing) = crate::fargate::provisioned_billing(
                &capacity,
                runner.kubernetes.as_ref().and_then(|k| k.fargate.as_ref()),
            )
        {
            let report = match &outcome {
                Outcome::BuildEnded { report, .. } => report.as_ref(),
                _ => None,
            };
            let cost = crate::fargate::job_cost(&billing, report, since.elapsed().as_secs_f64());
            Event::FargateCost {
                job_id: job.id,
                capacity: cost.capacity,
                seconds: cost.seconds,
                usd_per_hour: cost.usd_per_hour,
                usd: cost.usd,
            }
            .emit();
        }
        self.states(namespace).forget(pod_name);
        let grace = runner
            .kubernetes
            .as_ref()
            .and_then(|k| k.cleanup_grace_period_seconds)
            .map(|s| s.max(0) as u32);
        let calls = self.calls(&runner);
        let delete = DeleteParams {
            grace_period_seconds: grace,
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        let _ = Box::pin(calls.run("delete Pod", || pods_api.delete(pod_name, &delete))).await;
        Box::pin(self.delete_secrets(&calls, &secrets_api, &pod.orphan_secrets)).await;
        Followed::Ended(outcome)
    }

    /// Makes sure GitLab has the job's final state after `outcome` of its (deleted) pod.
    async fn conclude(&self, job: &JobContact, mut pod: JobPod, outcome: Outcome) -> JobEnd {
        match outcome {
            Outcome::BuildEnded {
                report: Some(report),
                ..
            } if report.final_update_delivered || report.aborted => JobEnd::from_report(&report),
            Outcome::BuildEnded { report, why } => {
                self.fail(job, &why, report.map(|r| r.trace_bytes_sent))
                    .await
            }
            // Whether the agent wrote anything is unknown: GitLab says where the log ends.
            Outcome::Failed(why) => self.fail(job, &why, None).await,
            // Every policy was tried (run_job retries while one is left).
            Outcome::PullFailed(failure) => {
                self.fail_as(
                    job,
                    &failure.reason(),
                    None,
                    FailureReason::ImagePullFailure,
                )
                .await
            }
            Outcome::Stopped(stop) => {
                Event::JobFailedByManager {
                    job_id: job.id,
                    reason: format!("{} while its pod waited to start", stop.describe()),
                }
                .emit();
                let delivered = match pod.log.as_mut() {
                    Some(log) => Box::pin(log.end_stopped(&stop)).await,
                    None => false,
                };
                JobEnd::failed(FailureReason::JobCanceled, delivered)
            }
        }
    }

    /// This manager's pod of `job`, found by its labels.
    pub(super) async fn find_job_pod(
        &self,
        calls: &ApiCalls,
        api: &Api<Pod>,
        job_id: i64,
    ) -> Option<Pod> {
        let selector = format!("{MANAGER_LABEL}={},{JOB_LABEL}={job_id}", self.system_id);
        let params = kube::api::ListParams::default().labels(&selector);
        let list = calls
            .run("find the job's Pod", || api.list(&params))
            .await
            .ok()?;
        list.items.into_iter().next()
    }

    pub(super) async fn fail(
        &self,
        job: &JobContact,
        reason: &str,
        trace_end: Option<u64>,
    ) -> JobEnd {
        self.fail_as(job, reason, trace_end, FailureReason::RunnerSystemFailure)
            .await
    }

    /// Fails the job with `reason` in its log and `failure` as its failure reason.
    async fn fail_as(
        &self,
        job: &JobContact,
        reason: &str,
        trace_end: Option<u64>,
        failure: FailureReason,
    ) -> JobEnd {
        Event::JobFailedByManager {
            job_id: job.id,
            reason: reason.to_owned(),
        }
        .emit();
        let delivered = Box::pin(fail_job_as(
            job,
            &self.info,
            &self.podrunner_version,
            reason,
            trace_end,
            failure,
        ))
        .await;
        JobEnd::failed(failure, delivered)
    }
}

/// Whether a pull failure can lead to another pod: some container has a policy after its
/// first ([`PullAttempts::record_failure`] retries only then).
fn may_retry(policies: &BTreeMap<String, Vec<Policy>>) -> bool {
    policies.values().any(|list| list.len() > 1)
}
