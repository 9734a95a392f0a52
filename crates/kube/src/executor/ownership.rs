//! Which job pods are this manager's, and taking over those of a manager that died.
//!
//! A manager marks each pod and Secret it makes with its system ID ([`MANAGER_LABEL`]) and,
//! when it holds its Lease in that namespace, with the Lease's name ([`LEASE_ANNOTATION`]).
//! Every [`crate::lease::LeaseSettings::renew_every`] it looks at the other managers' Leases;
//! one that expired ([`Observed::expired`]) it takes by compare-and-swap ([`lease::take`]):
//! the winner, and only the winner, relabels that manager's pods and Secrets as its own,
//! follows each pod (the manager counts it toward `concurrent`) and then deletes the Lease.
//! If it dies half-way, the Lease it took expires in turn and the next manager finishes.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use podrunner_manager::Event;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::*;
use crate::lease::{
    self, LEASE_ANNOTATION, LEASE_LABEL, LEASE_LABEL_VALUE, Observed, Standing, Taken, owner_of,
};
use crate::plan::MANAGER_LABEL;

/// How this manager marks what it makes in one namespace.
pub(super) struct Ownership {
    /// This manager's Lease there, when it holds one.
    lease: Option<String>,
}

impl Ownership {
    /// Adds the Lease annotation to a pod's metadata.
    pub(super) fn mark(&self, metadata: &mut ObjectMeta) {
        if let Some(lease) = &self.lease {
            metadata
                .annotations
                .get_or_insert_default()
                .insert(LEASE_ANNOTATION.to_owned(), lease.clone());
        }
    }

    /// Whether what it marks is owned through this manager's Lease.
    pub(super) fn leased(&self) -> bool {
        self.lease.is_some()
    }

    /// The annotations of a Secret of the job.
    pub(super) fn annotations(&self) -> Option<BTreeMap<String, String>> {
        self.lease
            .as_ref()
            .map(|lease| BTreeMap::from([(LEASE_ANNOTATION.to_owned(), lease.clone())]))
    }
}

/// Whether `metadata` says it is owned through Lease `lease`.
fn owned_through(metadata: &ObjectMeta, lease: &str) -> bool {
    metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEASE_ANNOTATION))
        .is_some_and(|l| l == lease)
}

impl KubernetesExecutor {
    /// How objects made in `namespace` are marked; makes this manager's Lease there first.
    pub(super) async fn ownership(&self, namespace: &str) -> Ownership {
        // Held now, not only once: a manager that lost its Lease marks nothing with it until
        // it has a fresh one (the taker could take a pod made meanwhile).
        let held = self.leases.ensure(namespace).await
            && self.leases.confirm(namespace).await == Standing::Held;
        Ownership {
            lease: held.then(|| self.leases.name()),
        }
    }

    /// Adopts one of this manager's pods (as listed): follows it from its current state and
    /// reads its job from the spec Secret, for [`Executor::resume`]. A pod whose spec is
    /// missing or unreadable cannot be followed: it is deleted.
    pub(super) async fn adopt_pod(
        &self,
        runner: &Arc<RunnerConfig>,
        namespace: &str,
        pod: Pod,
        calls: &ApiCalls,
    ) -> Option<AcceptedJob> {
        let pod_name = pod.metadata.name.clone()?;
        if pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let states = self.states(namespace);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let secrets_api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let leased = owned_through(&pod.metadata, &self.leases.name());
        let pod_state = states.subscribe(&pod_name);
        states.update(&pod_name, Some(pod));
        // The job, as this pod's agent has it.
        let spec_name = format!("{pod_name}-spec");
        let job = match calls
            .run("read a job spec", || secrets_api.get(&spec_name))
            .await
        {
            Ok(secret) => secret
                .data
                .and_then(|d| d.get("job.json").cloned())
                .and_then(|bytes| podrunner_agent::AgentSpec::from_json(&bytes.0).ok())
                .map(|spec| spec.job),
            Err(_) => None,
        };
        let Some(payload) = job else {
            Event::KubernetesProblem {
                doing: format!("adopting pod {namespace}/{pod_name}"),
                error: "its job spec Secret is missing or unreadable; the pod is deleted".into(),
            }
            .emit();
            states.forget(&pod_name);
            let background = DeleteParams::background();
            let _ = calls
                .run("delete Pod", || pods_api.delete(&pod_name, &background))
                .await;
            return None;
        };
        // The job's writes go on with its own token, as when its pod was made.
        let token = crate::plan::job_bearer_token(runner, &payload);
        let writer = match self.writer(token.as_ref()) {
            Ok(writer) => writer,
            Err(e) => {
                Event::KubernetesProblem {
                    doing: format!("adopting pod {namespace}/{pod_name}"),
                    error: format!("{e}; its writes are made with the manager's credentials"),
                }
                .emit();
                self.own_writer()
            }
        };
        let accepted = AcceptedJob {
            runner: runner.clone(),
            payload,
            system_id: self.system_id.clone(),
            concurrent_id: 0,
        };
        Event::PodAdopted {
            job_id: accepted.payload.job.id,
            namespace: namespace.to_owned(),
            pod: pod_name.clone(),
        }
        .emit();
        self.adopted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                accepted.payload.job.id,
                JobPod {
                    namespace: namespace.to_owned(),
                    name: pod_name,
                    state: pod_state,
                    orphan_secrets: Vec::new(),
                    log: None,
                    heard: Heard::Running,
                    leased,
                    writer,
                },
            );
        Some(accepted)
    }

    /// Whether this manager lost the Lease a pod in `namespace` is owned through (`leased`):
    /// asked before anything only the job's owner may do ([`crate::lease::OwnLeases::confirm`]).
    pub(super) async fn lost_lease(&self, namespace: &str, leased: bool) -> bool {
        leased && self.leases.confirm(namespace).await == Standing::Lost
    }

    /// [`Self::lost_lease`] for a job's pod.
    pub(super) async fn taken_from_me(&self, pod: &JobPod) -> bool {
        self.lost_lease(&pod.namespace, pod.leased).await
    }

    /// Lets go of a job whose pod another manager took over: no pod deleted, no Secret, no
    /// word to GitLab (the taker follows and reports it), and its namespace stays.
    pub(super) fn let_go(&self, job_id: i64, pod: &JobPod) -> podrunner_manager::JobEnd {
        self.states(&pod.namespace).forget(&pod.name);
        self.handed_over
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id);
        Event::JobHandedOver {
            job_id,
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
        }
        .emit();
        podrunner_manager::JobEnd::handed_over()
    }

    /// Whether job `job_id` was let go of ([`Self::let_go`]); forgets it.
    pub(super) fn was_handed_over(&self, job_id: i64) -> bool {
        self.handed_over
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job_id)
    }

    /// Starts looking for expired Leases in `runner`'s namespace; the jobs taken over come
    /// through the channel until `stop` (the manager drains) or the executor is dropped.
    pub(super) fn start_takeovers(
        self: Arc<Self>,
        runner: Arc<RunnerConfig>,
        stop: CancellationToken,
    ) -> UnboundedReceiver<AcceptedJob> {
        let (jobs, taken) = unbounded_channel();
        tokio::spawn(self.take_over_forever(runner, jobs, stop));
        taken
    }

    async fn take_over_forever(
        self: Arc<Self>,
        runner: Arc<RunnerConfig>,
        jobs: UnboundedSender<AcceptedJob>,
        stop: CancellationToken,
    ) {
        let config = runner.kubernetes_or_default();
        let home = config.namespace().to_owned();
        // With namespace_per_job or namespace_overwrite_allowed, jobs (and so the Leases
        // owning them) may be in any namespace: one cluster-wide list finds them all.
        let everywhere = crate::namespaces::spans_namespaces(&config);
        let calls = self.calls(&runner);
        let mut observed = Observed::default();
        let mut refused = false;
        // Without a Lease of its own this manager takes nothing: what it took would look
        // like nobody's.
        while self.leases.ensure(&home).await {
            let listed = match everywhere {
                true => match self.list_leases(None, &calls).await {
                    Ok(leases) => {
                        refused = false;
                        Ok(leases)
                    }
                    Err(e) => {
                        if !refused {
                            Event::KubernetesProblem {
                                doing: format!(
                                    "listing the managers' Leases in all namespaces (namespace_per_job or namespace_overwrite_allowed put jobs outside {home}: a dead manager's jobs there are taken over once this works; grant list on leases.coordination.k8s.io at the cluster scope, rbac.clusterWideAccess: true in the chart); looking in {home} only"
                                ),
                                error: api_error(&e),
                            }
                            .emit();
                        }
                        refused = true;
                        self.list_leases(Some(&home), &calls).await
                    }
                },
                false => self.list_leases(Some(&home), &calls).await,
            };
            match listed {
                Ok(leases) => {
                    let mut by_namespace: BTreeMap<String, Vec<Lease>> = BTreeMap::new();
                    for lease in leases {
                        let namespace = lease
                            .metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| home.clone());
                        by_namespace.entry(namespace).or_default().push(lease);
                    }
                    observed.retain(
                        &by_namespace
                            .iter()
                            .flat_map(|(ns, leases)| leases.iter().map(move |l| Observed::key(ns, l)))
                            .collect(),
                    );
                    for (namespace, leases) in by_namespace {
                        if stop.is_cancelled() {
                            return;
                        }
                        self.scan(&runner, &namespace, leases, &calls, &mut observed, &jobs, &stop)
                            .await;
                    }
                }
                Err(e) => Event::KubernetesProblem {
                    doing: format!(
                        "listing the managers' Leases in {home} (jobs of a manager that died are taken over once this works)"
                    ),
                    error: api_error(&e),
                }
                .emit(),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(self.leases.settings().renew_every()) => {}
            }
        }
    }

    /// The managers' Leases in `namespace`, or in every namespace.
    async fn list_leases(
        &self,
        namespace: Option<&str>,
        calls: &ApiCalls,
    ) -> Result<Vec<Lease>, kube::Error> {
        let api: Api<Lease> = match namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        let params =
            kube::api::ListParams::default().labels(&format!("{LEASE_LABEL}={LEASE_LABEL_VALUE}"));
        let list = calls.run("list Leases", || api.list(&params)).await?;
        Ok(list.items)
    }

    /// One look at the managers' Leases listed in `namespace`: each expired one is taken.
    #[allow(clippy::too_many_arguments)]
    async fn scan(
        &self,
        runner: &Arc<RunnerConfig>,
        namespace: &str,
        leases: Vec<Lease>,
        calls: &ApiCalls,
        observed: &mut Observed,
        jobs: &UnboundedSender<AcceptedJob>,
        stop: &CancellationToken,
    ) {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let now = tokio::time::Instant::now();
        let mine = self.leases.name();
        for found in leases {
            if found.metadata.name.as_deref() == Some(mine.as_str())
                || !observed.expired(namespace, &found, now)
            {
                continue;
            }
            // What it takes is marked with this manager's Lease there, which must exist.
            if stop.is_cancelled() || !self.leases.ensure(namespace).await {
                return;
            }
            match calls
                .run("take over a Lease", || {
                    lease::take(&api, &found, &self.system_id)
                })
                .await
            {
                Ok(Taken::Won(taken)) => {
                    self.take_over(runner, namespace, &api, *taken, calls, jobs)
                        .await
                }
                Ok(Taken::Lost) => {}
                Err(e) => Event::KubernetesProblem {
                    doing: format!(
                        "taking over Lease {} in {namespace}",
                        found.metadata.name.as_deref().unwrap_or_default()
                    ),
                    error: api_error(&e),
                }
                .emit(),
            }
        }
    }

    /// With `taken` won: relabels the pods and Secrets owned through it as this manager's,
    /// adopts each pod, hands the jobs to the manager, and deletes the Lease once nothing
    /// is left behind (otherwise it expires again and the next look finishes the work).
    async fn take_over(
        &self,
        runner: &Arc<RunnerConfig>,
        namespace: &str,
        api: &Api<Lease>,
        taken: Lease,
        calls: &ApiCalls,
        jobs: &UnboundedSender<AcceptedJob>,
    ) {
        let name = taken.metadata.name.clone().unwrap_or_default();
        let from = owner_of(&taken).unwrap_or_default().to_owned();
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let secrets_api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let params = kube::api::ListParams::default().labels(&format!("{MANAGER_LABEL}={from}"));
        let problem = |doing: String, error: &kube::Error| {
            Event::KubernetesProblem {
                doing,
                error: api_error(error),
            }
            .emit()
        };
        let relabel = serde_json::json!({"metadata": {
            "labels": {MANAGER_LABEL: self.system_id},
            "annotations": {LEASE_ANNOTATION: self.leases.name()},
        }});
        let relabel = Patch::Merge(&relabel);
        let patch = PatchParams::default();
        let mut complete = true;
        let mut taken_jobs = Vec::new();
        let pods = match from.is_empty() {
            true => Vec::new(),
            false => match calls
                .run("list the Pods of a taken Lease", || pods_api.list(&params))
                .await
            {
                Ok(list) => list.items,
                Err(e) => {
                    return problem(
                        format!("listing the pods of Lease {name} in {namespace}"),
                        &e,
                    );
                }
            },
        };
        let states = self.states(namespace);
        for pod in pods {
            let Some(pod_name) = pod.metadata.name.clone() else {
                continue;
            };
            if !owned_through(&pod.metadata, &name) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // Followed before it carries this manager's label: the sweep never sees it stray.
            let _follow = states.subscribe(&pod_name);
            match calls
                .run("take over a Pod", || {
                    pods_api.patch(&pod_name, &patch, &relabel)
                })
                .await
            {
                Ok(pod) => {
                    if let Some(job) = self.adopt_pod(runner, namespace, pod, calls).await {
                        taken_jobs.push(job);
                    }
                }
                Err(e) => {
                    states.forget(&pod_name);
                    complete = false;
                    problem(format!("taking over pod {namespace}/{pod_name}"), &e);
                }
            }
        }
        if !from.is_empty() {
            match calls
                .run("list the Secrets of a taken Lease", || {
                    secrets_api.list(&params)
                })
                .await
            {
                Ok(list) => {
                    for secret in list.items {
                        let secret_name = secret.metadata.name.clone().unwrap_or_default();
                        if !owned_through(&secret.metadata, &name) {
                            continue;
                        }
                        let patched = calls
                            .run("take over a Secret", || {
                                secrets_api.patch(&secret_name, &patch, &relabel)
                            })
                            .await;
                        if let Err(e) = patched.map(|_| ()).or_else(gone) {
                            complete = false;
                            problem(format!("taking over Secret {namespace}/{secret_name}"), &e);
                        }
                    }
                }
                Err(e) => {
                    complete = false;
                    problem(
                        format!("listing the Secrets of Lease {name} in {namespace}"),
                        &e,
                    );
                }
            }
        }
        Event::LeaseTakenOver {
            namespace: namespace.to_owned(),
            lease: name.clone(),
            from,
            pods: taken_jobs.len(),
        }
        .emit();
        for job in taken_jobs {
            // The manager drains the channel to its end: a send fails only once it is gone.
            let _ = jobs.send(job);
        }
        if complete && let Err(e) = lease::delete(api, &taken).await {
            problem(
                format!(
                    "deleting Lease {name} in {namespace} after taking it over (it expires and is looked at again)"
                ),
                &e,
            );
        }
    }
}
