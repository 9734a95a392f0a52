//! The Kubernetes executor: one pod per job, the agent as PID 1 of its build container.
//!
//! Per job, on the happy path: create the Pod, create its spec Secret already owned by it (the
//! kubelet mounts it once it exists), one merge patch of the Pod per change while it waits (the trace prelude: the
//! manager writes the start of the job's log and hands it to the agent through an
//! annotation), delete the Pod (the Secret goes with it). Pod states come from one shared
//! watch per namespace over the manager's pods; there is no per-job watch, no polling, no exec
//! and no log stream: the agent talks to GitLab itself and leaves its termination report as
//! the build container's termination message. Every call goes through [`crate::calls`]
//! (retries, rate limit).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use kube::runtime::{WatchStreamExt, watcher};
use podrunner_agent::{TRACE_PRELUDE_ANNOTATION, TerminationReport};
use podrunner_config::RunnerConfig;
use podrunner_gitlab::RunnerInfo;
use podrunner_manager::{AcceptedJob, Event, Executor, JobEnd, agent_spec, fail_job};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::calls::{ApiCalls, RateLimit, RetryPolicy};
use crate::judge::{FargateEvent, FargateSignals, judge, scheduling_message};
use crate::plan::{JOB_LABEL, MANAGER_LABEL, PlanContext, plan};
use crate::prelude::{Heard, PodLog, Stop, build_started};

mod ownership;

/// How often the manager looks for its stray pods and Secrets.
const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// After asking the agent to stop (pod deletion), how long it gets to report.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(30);

/// Why the executor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No way to reach a cluster.
    #[error(
        "cannot find a Kubernetes API server: set [runners.kubernetes] host (with bearer_token or cert_file/key_file), run in a pod with a service account, or provide a kubeconfig ($KUBECONFIG or ~/.kube/config): {0}"
    )]
    NoCluster(String),
    /// The configuration names an API server but it cannot be used.
    #[error("[runners.kubernetes] host {host:?}: {reason}")]
    BadHost {
        /// The configured host.
        host: String,
        /// What is wrong.
        reason: String,
    },
}

/// The last known state of each of the manager's pods, fed by one watch per namespace.
#[derive(Default)]
struct PodStates {
    /// Subscribers by pod name; `None` once the pod is gone.
    pods: Mutex<HashMap<String, watch::Sender<Option<Pod>>>>,
    /// Messages of the Warning events of followed pods, by pod name, in order, once each.
    warnings: Mutex<HashMap<String, Vec<String>>>,
    /// What the Fargate scheduler's events said about followed pods, by pod name.
    fargate: Mutex<HashMap<String, FargateSignals>>,
}

impl PodStates {
    fn subscribe(&self, name: &str) -> watch::Receiver<Option<Pod>> {
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.entry(name.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    fn is_followed(&self, name: &str) -> bool {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    fn forget(&self, name: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.fargate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Records a Fargate scheduler event about pod `name` (if followed) and wakes its follower.
    fn fargate_event(&self, name: &str, event: FargateEvent) {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = pods.get(name) else {
            return;
        };
        self.fargate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .apply(event);
        sender.send_modify(|_| {});
    }

    /// The Fargate scheduler's signals about pod `name` so far.
    fn fargate_of(&self, name: &str) -> FargateSignals {
        self.fargate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Records a Warning event of pod `name` (if followed) and wakes its follower.
    fn warn(&self, name: &str, message: String) {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = pods.get(name) else {
            return;
        };
        let mut warnings = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        let list = warnings.entry(name.to_owned()).or_default();
        if !list.contains(&message) {
            list.push(message);
            sender.send_modify(|_| {});
        }
    }

    /// The Warning events of pod `name` so far.
    fn warnings_of(&self, name: &str) -> Vec<String> {
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Applies the end of a relist (kube-runtime `watcher::Event::InitDone`): a followed pod
    /// that was known and is not in the list was deleted while the watch was down
    /// (kube-runtime `watcher.rs`: objects not listed again "should be assumed to have been
    /// Deleted"; its reflector store swaps in the listed set the same way).
    fn relisted(&self, listed: &std::collections::HashSet<String>) {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        for (name, sender) in pods.iter() {
            if !listed.contains(name) && sender.borrow().is_some() {
                sender.send_replace(None);
            }
        }
    }

    fn update(&self, name: &str, pod: Option<Pod>) {
        if let Some(sender) = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            sender.send_replace(pod.map(crate::pod_view::followed));
        }
    }
}

/// Runs each job in its own pod.
pub struct KubernetesExecutor {
    client: kube::Client,
    init_image: String,
    podrunner_version: String,
    info: RunnerInfo,
    system_id: String,
    watches: Mutex<HashMap<String, Arc<PodStates>>>,
    /// One bucket for every API call of this executor.
    limit: Arc<RateLimit>,
    /// Pods of an earlier run, by job ID, until their job is resumed.
    adopted: Mutex<HashMap<i64, JobPod>>,
    /// GitLab clients for the prelude, one per runner URL (a client holds the TLS roots).
    gitlab_clients: Mutex<HashMap<String, podrunner_gitlab::GitlabClient>>,
    /// Per-job namespaces in use, and what stops each namespace's watches.
    namespaces: crate::namespaces::JobNamespaces,
    /// This manager's Leases: which job pods are its own ([`crate::lease`]).
    leases: crate::lease::OwnLeases,
    cancel: CancellationToken,
}

impl Drop for KubernetesExecutor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Connects the way gitlab-runner does: `host` (with `bearer_token`, `ca_file`,
/// `cert_file`/`key_file`) when set, else the pod's service account, else the kubeconfig
/// (`context` when set).
pub async fn connect(runner: &RunnerConfig) -> Result<kube::Client, ConnectError> {
    let settings = runner.kubernetes.clone().unwrap_or_default();
    let config = if let Some(host) = settings.host.as_deref().filter(|h| !h.is_empty()) {
        let kubeconfig = Kubeconfig {
            clusters: vec![NamedCluster {
                name: "podrunner".into(),
                cluster: Some(Cluster {
                    server: Some(host.to_owned()),
                    certificate_authority: settings.ca_file.clone(),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            auth_infos: vec![NamedAuthInfo {
                name: "podrunner".into(),
                auth_info: Some(AuthInfo {
                    token: settings
                        .bearer_token
                        .clone()
                        .map(|t| String::from(t).into()),
                    client_certificate: settings.cert_file.clone(),
                    client_key: settings.key_file.clone(),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            contexts: vec![NamedContext {
                name: "podrunner".into(),
                context: Some(Context {
                    cluster: "podrunner".into(),
                    user: Some("podrunner".into()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            current_context: Some("podrunner".into()),
            ..Default::default()
        };
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| ConnectError::BadHost {
                host: host.to_owned(),
                reason: e.to_string(),
            })?
    } else {
        match kube::Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => kube::Config::from_kubeconfig(&KubeConfigOptions {
                context: settings.context.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                ConnectError::NoCluster(format!("not in a cluster ({in_cluster}); kubeconfig: {e}"))
            })?,
        }
    };
    kube::Client::try_from(config).map_err(|e| ConnectError::NoCluster(e.to_string()))
}

/// How a job's pod ended up, as far as the executor can tell.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The build container ended; its termination message, exit code and reason.
    BuildEnded {
        report: Option<TerminationReport>,
        why: String,
    },
    /// The pod cannot run the job; the reason for the trace.
    Failed(String),
    /// GitLab stopped the job before its script (the manager heard it while the pod waited).
    Stopped(Stop),
}

impl KubernetesExecutor {
    /// An executor that uses `client`; job pods install the agent from `init_image`.
    pub fn new(
        client: kube::Client,
        init_image: String,
        podrunner_version: String,
        info: RunnerInfo,
        system_id: String,
    ) -> Self {
        let cancel = CancellationToken::new();
        KubernetesExecutor {
            leases: crate::lease::OwnLeases::new(
                client.clone(),
                system_id.clone(),
                crate::lease::LeaseSettings::default(),
                cancel.child_token(),
            ),
            client,
            init_image,
            podrunner_version,
            info,
            system_id,
            watches: Mutex::new(HashMap::new()),
            limit: Arc::new(RateLimit::default()),
            adopted: Mutex::new(HashMap::new()),
            gitlab_clients: Mutex::new(HashMap::new()),
            namespaces: Default::default(),
            cancel,
        }
    }

    /// The same executor with its Leases kept by `settings` (a shorter duration for tests).
    pub fn with_lease_settings(mut self, settings: crate::lease::LeaseSettings) -> Self {
        self.leases = crate::lease::OwnLeases::new(
            self.client.clone(),
            self.system_id.clone(),
            settings,
            self.cancel.child_token(),
        );
        self
    }

    /// The GitLab client for `job`'s runner, made once per URL and TLS settings.
    fn gitlab_client(&self, job: &AcceptedJob) -> Option<podrunner_gitlab::GitlabClient> {
        let runner = &job.runner;
        let key = format!(
            "{:?}|{:?}|{:?}|{:?}",
            runner.url, runner.tls_ca_file, runner.tls_cert_file, runner.tls_key_file
        );
        let mut clients = self
            .gitlab_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Some(client.clone());
        }
        let client = podrunner_manager::job_client(job, &self.podrunner_version)?;
        clients.insert(key, client.clone());
        Some(client)
    }

    /// How calls for `runner` are made: its retry policy, this executor's rate limit.
    fn calls(&self, runner: &RunnerConfig) -> ApiCalls {
        ApiCalls::new(
            self.limit.clone(),
            runner
                .kubernetes
                .as_ref()
                .map(RetryPolicy::from_config)
                .unwrap_or_default(),
        )
    }

    /// The shared watch over this manager's pods in `namespace`, started on first use.
    fn states(&self, namespace: &str) -> Arc<PodStates> {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(states) = watches.get(namespace) {
            return states.clone();
        }
        let states = Arc::new(PodStates::default());
        watches.insert(namespace.to_owned(), states.clone());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("{MANAGER_LABEL}={}", self.system_id);
        let namespace_watches = self.namespaces.watch_token(&self.cancel, namespace);
        let cancel = namespace_watches.clone();
        let feed = states.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default().labels(&selector))
                .default_backoff()
                .take_until(cancel.cancelled_owned());
            futures::pin_mut!(stream);
            // The pods of the (re)list under way, from Init to InitDone.
            let mut listed = std::collections::HashSet::new();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitApply(pod)) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        listed.insert(name.clone());
                        feed.update(&name, Some(pod));
                    }
                    Ok(watcher::Event::Apply(pod)) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        feed.update(&name, Some(pod));
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        feed.update(&name, None);
                    }
                    Ok(watcher::Event::Init) => listed.clear(),
                    Ok(watcher::Event::InitDone) => {
                        feed.relisted(&listed);
                        listed.clear();
                    }
                    Err(e) => Event::KubernetesProblem {
                        doing: "watching job pods (the watch restarts)".into(),
                        error: e.to_string(),
                    }
                    .emit(),
                }
            }
        });
        // Warning events of pods, for the job log while a pod waits (print_pod_warning_events).
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), namespace);
        let cancel = namespace_watches;
        let feed = states.clone();
        let namespace = namespace.to_owned();
        tokio::spawn(async move {
            let config = watcher::Config::default().fields("involvedObject.kind=Pod,type=Warning");
            let stream = watcher(events, config)
                .default_backoff()
                .take_until(cancel.cancelled_owned());
            futures::pin_mut!(stream);
            let mut failing = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => {
                        failing = false;
                        let pod = e.involved_object.name.clone().unwrap_or_default();
                        let message = e.message.clone().unwrap_or_default();
                        let component = e
                            .reporting_component
                            .as_deref()
                            .filter(|c| !c.is_empty())
                            .or_else(|| e.source.as_ref().and_then(|s| s.component.as_deref()));
                        if let Some(signal) =
                            FargateEvent::read(e.reason.as_deref(), component, &message)
                        {
                            feed.fargate_event(&pod, signal);
                        }
                        // The spec Secret is created just after its pod: a kubelet that
                        // looked before then retries; that is not news for the job log.
                        let own_spec = format!("secret \"{pod}-spec\" not found");
                        if !message.is_empty() && !message.contains(&own_spec) {
                            feed.warn(&pod, message);
                        }
                    }
                    Ok(_) => failing = false,
                    // Said once: without events list/watch in RBAC the log only lacks them.
                    Err(e) if !failing => {
                        failing = true;
                        Event::KubernetesProblem {
                            doing: format!("watching Warning events in {namespace} (job logs go without them until it works)"),
                            error: e.to_string(),
                        }
                        .emit();
                    }
                    Err(_) => {}
                }
            }
        });
        states
    }

    async fn run_job(&self, job: AcceptedJob, abort: CancellationToken) -> JobEnd {
        let runner = job.runner.clone();
        let short = podrunner_manager::short_token(runner.token.as_deref().unwrap_or(""));
        let context = PlanContext {
            system_id: &self.system_id,
            init_image: &self.init_image,
            runner_short_token: &short,
        };
        let mut planned = match plan(&runner, &job.payload, &context) {
            Ok(planned) => planned,
            Err(e) => return self.fail(&job, &e.to_string(), Some(0)).await,
        };
        let namespace = planned.namespace.clone();
        let pod_name = planned.pod.metadata.name.clone().unwrap_or_default();
        // Owned through this manager's Lease, made before its first pod in the namespace.
        let owner = self.ownership(&namespace).await;
        owner.mark(&mut planned.pod.metadata);
        // Fargate: refuse before creating anything when a declared profile takes the pod and
        // Fargate cannot run it; otherwise tell the job what it will get and cost.
        let fargate = runner.kubernetes.as_ref().and_then(|k| k.fargate.as_ref());
        let prediction = crate::fargate::predict(&planned.pod, fargate, false);
        if let (Some(prediction), Some(config)) = (&prediction, fargate)
            && config.reject_unsupported
            && !prediction.problems.is_empty()
        {
            return self
                .fail(
                    &job,
                    &format!(
                        "Fargate profile {} takes this job's pod, but Fargate cannot run it: {} (nothing was created; set reject_unsupported = false in [runners.kubernetes.fargate] to try anyway)",
                        prediction.profile.as_deref().unwrap_or("(assumed)"),
                        prediction.problems.join("; ")
                    ),
                    Some(0),
                )
                .await;
        }
        let poll_timeout = Duration::from_secs(runner.kubernetes_or_default().poll_timeout_secs());
        if let Err(why) = crate::namespaces::prepare(
            &self.client,
            &self.calls(&runner),
            &runner,
            &self.namespaces,
            &self.system_id,
            job.payload.job.id,
            &namespace,
            poll_timeout,
        )
        .await
        {
            return self.fail(&job, &why, Some(0)).await;
        }
        let mut notes: Vec<String> = planned
            .warnings
            .iter()
            .map(|w| format!("WARNING: {w}"))
            .collect();
        if let Some(warning) = crate::fargate::unmatched_profile_warning(&planned.pod, fargate) {
            Event::KubernetesProblem {
                doing: format!("planning the pod of job {}", job.payload.job.id),
                error: warning.clone(),
            }
            .emit();
            notes.push(format!("WARNING: {warning}"));
        }
        if let Some(prediction) = &prediction {
            notes.push(format!(
                "Fargate: profile {}, pod sized {}vCPU {}GB (requests {} vCPU, {:.2} GB), ${:.6}/h",
                prediction.profile.as_deref().unwrap_or("(assumed)"),
                prediction.vcpu,
                prediction.memory_gb,
                prediction.requested_vcpu,
                prediction.requested_memory_gb,
                prediction.usd_per_hour
            ));
            notes.extend(prediction.warnings.iter().map(|w| format!("WARNING: {w}")));
        }
        let mut spec = agent_spec(
            &job,
            "kubernetes",
            PathBuf::from(runner.builds_dir()),
            PathBuf::from(runner.cache_dir()),
            None,
            PathBuf::from("/dev/termination-log"),
        )
        .await;
        spec.notes = notes;
        // The log starts here, written by the manager until the agent takes it over.
        let mut log = self.gitlab_client(&job).and_then(|client| {
            PodLog::open(&job, &spec, client, self.calls(&runner), self.info.clone())
        });
        if let Some(log) = &log {
            planned
                .pod
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(TRACE_PRELUDE_ANNOTATION.to_owned(), log.encoded());
        }
        let labels: BTreeMap<String, String> = [
            (MANAGER_LABEL.to_owned(), self.system_id.clone()),
            (JOB_LABEL.to_owned(), job.payload.job.id.to_string()),
        ]
        .into();
        let ownership = &owner;
        let spec_secret = |owner: Option<OwnerReference>| Secret {
            metadata: ObjectMeta {
                name: Some(planned.spec_secret.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(labels.clone()),
                annotations: ownership.annotations(),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(
                [(
                    "job.json".to_owned(),
                    ByteString(serde_json::to_vec(&spec).unwrap_or_default()),
                )]
                .into(),
            ),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let registry_secret = planned.registry_secret.as_ref().map(|name| Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(labels.clone()),
                annotations: ownership.annotations(),
                ..Default::default()
            },
            data: Some(
                [(
                    ".dockerconfigjson".to_owned(),
                    ByteString(docker_config(&job)),
                )]
                .into(),
            ),
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            ..Default::default()
        });
        let secrets_api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let calls = self.calls(&runner);
        let states = self.states(&namespace);
        let pod_state = states.subscribe(&pod_name);
        let post = PostParams::default();

        // The registry Secret first: the kubelet needs it as soon as it pulls the image.
        let mut unowned: Vec<Secret> = registry_secret.into_iter().collect();
        for secret in &unowned {
            let created = calls
                .run("create Secret", || secrets_api.create(&post, secret))
                .await;
            // 409 after a retry: the lost answer's create went through (names are per job).
            if let Err(e) = created.map(|_| ()).or_else(already_exists) {
                states.forget(&pod_name);
                return self
                    .fail(
                        &job,
                        &format!(
                            "cannot create Secret {namespace}/{}: {}",
                            secret.metadata.name.as_deref().unwrap_or_default(),
                            api_error(&e)
                        ),
                        Some(0),
                    )
                    .await;
            }
        }
        let created = match calls
            .run("create Pod", || pods_api.create(&post, &planned.pod))
            .await
        {
            Ok(pod) => Ok(pod),
            // 409 after a retry: the lost answer's create went through; find that pod.
            Err(e) if is_conflict(&e) => self.find_job_pod(&calls, &pods_api, &job).await.ok_or(e),
            Err(e) => Err(e),
        };
        let created = match created {
            Ok(pod) => pod,
            Err(e) => {
                self.delete_secrets(&calls, &secrets_api, &unowned).await;
                states.forget(&pod_name);
                return self
                    .fail(
                        &job,
                        &format!(
                            "cannot create pod {namespace}/{pod_name}: {}",
                            api_error(&e)
                        ),
                        Some(0),
                    )
                    .await;
            }
        };
        Event::PodCreated {
            job_id: job.payload.job.id,
            namespace: namespace.clone(),
            pod: pod_name.clone(),
        }
        .emit();
        // The spec Secret is born owned by the pod (whoever deletes the pod collects it); the
        // kubelet mounts it once it exists.
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod_name.clone(),
            uid: created.metadata.uid.clone().unwrap_or_default(),
            block_owner_deletion: Some(true),
            controller: None,
        };
        let spec_secret = spec_secret(Some(owner.clone()));
        let created_secret = calls
            .run("create Secret", || secrets_api.create(&post, &spec_secret))
            .await;
        let refused = match created_secret.map(|_| ()).or_else(already_exists) {
            Err(e) => Some(format!(
                "cannot create Secret {namespace}/{}: {}",
                planned.spec_secret,
                api_error(&e)
            )),
            Ok(()) => crate::pdb::create(&runner, &self.client, &calls, &created, &owner)
                .await
                .err(),
        };
        if let Some(why) = refused {
            let pod = JobPod {
                namespace: namespace.clone(),
                name: pod_name.clone(),
                state: pod_state,
                orphan_secrets: unowned,
                log: None,
                heard: Heard::Running,
            };
            // Nothing ran: the pod cannot start without its spec (or its budget). Delete it.
            self.discard(&job, pod).await;
            return self.fail(&job, &why, Some(0)).await;
        }
        // What GitLab answers is heard by `follow`, which acts on it with the pod in view.
        let mut heard = Heard::Running;
        if let Some(log) = &mut log {
            heard = log.send().await;
        }
        let owner = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        let owner = Patch::Merge(&owner);
        let patch = PatchParams::default();
        let mut still_unowned = Vec::new();
        for secret in unowned.drain(..) {
            let name = secret.metadata.name.clone().unwrap_or_default();
            if calls
                .run("make the Pod own its Secret", || {
                    secrets_api.patch(&name, &patch, &owner)
                })
                .await
                .is_err()
            {
                still_unowned.push(secret);
            }
        }

        let pod = JobPod {
            namespace,
            name: pod_name,
            state: pod_state,
            orphan_secrets: still_unowned,
            log,
            heard,
        };
        // Only what follows the pod stays for the job's life, not the plan and payloads.
        drop((planned, spec, spec_secret, created));
        self.finish(&job, pod, &abort).await
    }

    /// Deletes a pod that never ran its job, and the Secrets it does not own.
    async fn discard(&self, job: &AcceptedJob, pod: JobPod) {
        let calls = self.calls(&job.runner);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let secrets_api: Api<Secret> = Api::namespaced(self.client.clone(), &pod.namespace);
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
    async fn finish(
        &self,
        job: &AcceptedJob,
        mut pod: JobPod,
        abort: &CancellationToken,
    ) -> JobEnd {
        let runner = job.runner.clone();
        let (namespace, pod_name) = (pod.namespace.clone(), pod.name.clone());
        let (namespace, pod_name) = (namespace.as_str(), pod_name.as_str());
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let secrets_api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let mut provisioned = None;
        let outcome = self
            .follow(
                &runner,
                job.payload.job.id,
                &mut pod,
                abort,
                &mut provisioned,
            )
            .await;
        if let Some((capacity, since)) = provisioned
            && let Some(size) = crate::fargate::parse_capacity_provisioned(&capacity)
        {
            let prices = runner
                .kubernetes
                .as_ref()
                .and_then(|k| k.fargate.clone())
                .unwrap_or_default();
            let price =
                crate::fargate::Price::of(size, crate::fargate::DEFAULT_STORAGE_GIB, &prices);
            let seconds = since.elapsed().as_secs_f64();
            Event::FargateCost {
                job_id: job.payload.job.id,
                capacity,
                seconds,
                usd_per_hour: price.usd_per_hour,
                usd: price.cost(seconds),
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
        let _ = calls
            .run("delete Pod", || pods_api.delete(pod_name, &delete))
            .await;
        self.delete_secrets(&calls, &secrets_api, &pod.orphan_secrets)
            .await;
        match outcome {
            Outcome::BuildEnded {
                report: Some(report),
                ..
            } if report.final_update_delivered || report.aborted => JobEnd {
                final_update_delivered: report.final_update_delivered,
                state: report.state,
                failure_reason: report.failure_reason,
            },
            Outcome::BuildEnded { report, why } => {
                self.fail(job, &why, report.map(|r| r.trace_bytes_sent))
                    .await
            }
            // Whether the agent wrote anything is unknown: GitLab says where the log ends.
            Outcome::Failed(why) => self.fail(job, &why, None).await,
            Outcome::Stopped(stop) => {
                Event::JobFailedByManager {
                    job_id: job.payload.job.id,
                    reason: format!("{} while its pod waited to start", stop.describe()),
                }
                .emit();
                let delivered = match pod.log.as_mut() {
                    Some(log) => log.end_stopped(&stop).await,
                    None => false,
                };
                JobEnd {
                    final_update_delivered: delivered,
                    state: "failed".to_owned(),
                    failure_reason: Some("job_canceled".to_owned()),
                }
            }
        }
    }

    /// The job pods a previous run of this manager left (same system ID) in `runner`'s
    /// namespace, or in every namespace it can use ([`crate::namespaces::in_use`]), as jobs the manager resumes ([`Executor::resume`]): each is followed to its end and
    /// cleaned up like a job of this run. The agents inside kept running the jobs and sending
    /// their traces meanwhile. Then the sweep of stray pods and Secrets starts.
    async fn adopt(self: Arc<Self>, runner: Arc<RunnerConfig>) -> Vec<AcceptedJob> {
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
    async fn adopt_in(&self, runner: &Arc<RunnerConfig>, namespace: String) -> Vec<AcceptedJob> {
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
    async fn resume_job(&self, job: AcceptedJob, abort: CancellationToken) -> JobEnd {
        let pod = self
            .adopted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.payload.job.id);
        match pod {
            Some(mut pod) => {
                // A pod that still waits: the manager writes its log and listens again.
                let waiting = pod.state.borrow().clone().filter(|p| !build_started(p));
                if let Some(waiting) = waiting
                    && let Some(client) = self.gitlab_client(&job)
                {
                    let runner = job.runner.clone();
                    let spec = agent_spec(
                        &job,
                        "kubernetes",
                        PathBuf::from(runner.builds_dir()),
                        PathBuf::from(runner.cache_dir()),
                        None,
                        PathBuf::from("/dev/termination-log"),
                    )
                    .await;
                    pod.log = PodLog::resume(
                        &job,
                        &spec,
                        &waiting,
                        client,
                        self.calls(&runner),
                        self.info.clone(),
                    );
                }
                self.finish(&job, pod, &abort).await
            }
            None => {
                self.fail(&job, "the job's pod was not adopted by this executor", None)
                    .await
            }
        }
    }

    /// Every [`SWEEP_INTERVAL`], deletes this manager's pods that no job follows and the spec
    /// and registry Secrets whose pod is gone (left by a crash between creating the Secret and
    /// the pod, or by a lost delete).
    async fn sweep_forever(self: Arc<Self>, runner: Arc<RunnerConfig>, calls: ApiCalls) {
        loop {
            let covered =
                crate::namespaces::in_use(&self.client, &calls, &runner, &self.system_id).await;
            for namespace in &covered.namespaces {
                self.sweep(namespace, &calls).await;
            }
            let stray = crate::namespaces::sweep(
                &self.client,
                &calls,
                &runner,
                &self.namespaces,
                &self.system_id,
                &covered,
            );
            for namespace in stray.await {
                self.forget_namespace(&namespace);
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    }

    /// One sweep of `namespace`. Every failed call is reported ([`Event::SweepFailed`], logged
    /// and counted); a failed Secrets list still lets the pods be swept.
    async fn sweep(&self, namespace: &str, calls: &ApiCalls) {
        let states = self.states(namespace);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let secrets_api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("{MANAGER_LABEL}={}", self.system_id);
        let params = kube::api::ListParams::default().labels(&selector);
        let failed = |call: &'static str, error: &kube::Error| {
            Event::SweepFailed {
                namespace: namespace.to_owned(),
                call,
                error: api_error(error),
            }
            .emit();
        };
        let pods = match calls.run("list Pods", || pods_api.list(&params)).await {
            Ok(list) => list.items,
            Err(e) => {
                // Without the pods, no Secret can be judged stray either.
                return failed("list Pods", &e);
            }
        };
        let (background, plain) = (DeleteParams::background(), DeleteParams::default());
        let mut existing = std::collections::HashSet::new();
        for pod in pods {
            let Some(name) = pod.metadata.name else {
                continue;
            };
            if !states.is_followed(&name) && pod.metadata.deletion_timestamp.is_none() {
                Event::StrayDeleted {
                    kind: "Pod",
                    namespace: namespace.to_owned(),
                    name: name.clone(),
                }
                .emit();
                let deleted = calls
                    .run("delete Pod", || pods_api.delete(&name, &background))
                    .await;
                if let Err(e) = deleted.map(|_| ()).or_else(gone) {
                    failed("delete Pod", &e);
                }
            }
            existing.insert(name);
        }
        let secrets = match calls
            .run("list Secrets", || secrets_api.list(&params))
            .await
        {
            Ok(list) => list.items,
            Err(e) => return failed("list Secrets", &e),
        };
        for secret in secrets {
            let Some(name) = secret.metadata.name else {
                continue;
            };
            let pod = name
                .strip_suffix("-spec")
                .or_else(|| name.strip_suffix("-registry"))
                .unwrap_or(&name);
            if !existing.contains(pod) && !states.is_followed(pod) {
                Event::StrayDeleted {
                    kind: "Secret",
                    namespace: namespace.to_owned(),
                    name: name.clone(),
                }
                .emit();
                let deleted = calls
                    .run("delete Secret", || secrets_api.delete(&name, &plain))
                    .await;
                if let Err(e) = deleted.map(|_| ()).or_else(gone) {
                    failed("delete Secret", &e);
                }
            }
        }
    }

    /// Follows the pod through the shared watch until the build container ends or the pod
    /// cannot run the job.
    async fn follow(
        &self,
        runner: &RunnerConfig,
        job_id: i64,
        job_pod: &mut JobPod,
        abort: &CancellationToken,
        provisioned: &mut Option<(String, tokio::time::Instant)>,
    ) -> Outcome {
        if let Heard::Stop(stop) = std::mem::replace(&mut job_pod.heard, Heard::Running) {
            return Outcome::Stopped(stop);
        }
        let (namespace, pod_name) = (job_pod.namespace.as_str(), job_pod.name.as_str());
        let state = &mut job_pod.state;
        let log = &mut job_pod.log;
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let settings = runner.kubernetes.clone().unwrap_or_default();
        let poll_timeout = Duration::from_secs(settings.poll_timeout_secs().max(1));
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
                    ));
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
                        && let Some(capacity) = pod
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get("CapacityProvisioned"))
                    {
                        *provisioned = Some((capacity.clone(), tokio::time::Instant::now()));
                    }
                    let fargate = self.states(namespace).fargate_of(pod_name);
                    if let Some(outcome) = judge(pod, &fargate, &mut pull_error_since) {
                        return outcome;
                    }
                    if let Some(open) = log.as_mut() {
                        let warnings = self.states(namespace).warnings_of(pod_name);
                        if let Heard::Stop(stop) =
                            open.observe(&pods_api, pod, &warnings, runner).await
                        {
                            return Outcome::Stopped(stop);
                        }
                        if !open.listening() {
                            // The agent has the log and answers for the job now.
                            *log = None;
                        }
                    }
                    let scheduled = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some();
                    // poll_timeout bounds the wait until the pod runs, as gitlab-runner's
                    // waitForPodRunning does; once it ran, the job's own timeout rules.
                    ran |= crate::judge::has_run(pod);
                    if !ran && started.elapsed() >= poll_timeout {
                        let seconds = poll_timeout.as_secs();
                        return Outcome::Failed(if scheduled {
                            let why = crate::judge::waiting_message(pod)
                                .map(|m| format!(": {m}"))
                                .unwrap_or_default();
                            format!(
                                "pod {namespace}/{pod_name} was scheduled but not running within poll_timeout ({seconds}s){why}"
                            )
                        } else {
                            let why = scheduling_message(pod, &fargate)
                                .map(|m| format!(": {m}"))
                                .unwrap_or_default();
                            format!(
                                "pod {namespace}/{pod_name} was not scheduled within poll_timeout ({seconds}s){why}"
                            )
                        });
                    }
                }
            }
            // Not kept while the follower waits: the watch keeps the latest.
            drop(pod);
            if stopping.is_some_and(|since| since.elapsed() >= AGENT_STOP_GRACE) {
                return Outcome::Failed("the job was interrupted by the runner's shutdown".into());
            }
            let contact_at = log.as_ref().and_then(PodLog::next_contact);
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        return Outcome::Failed("the pod watch ended".into());
                    }
                }
                () = tokio::time::sleep_until(contact_at.unwrap_or_else(tokio::time::Instant::now)), if contact_at.is_some() => {
                    if let Some(open) = log.as_mut()
                        && let Heard::Stop(stop) = open.contact().await
                    {
                        return Outcome::Stopped(stop);
                    }
                }
                // Clocks run only for a pod that has not run, a pull error's grace and a stop;
                // a running pod's follower wakes on its changes alone.
                () = tokio::time::sleep(Duration::from_secs(1)), if !ran || pull_error_since.is_some() || stopping.is_some() => {}
                () = abort.cancelled(), if stopping.is_none() => {
                    // Deleting the pod sends the agent SIGTERM; it reports runner_interrupted.
                    stopping = Some(tokio::time::Instant::now());
                    let params = DeleteParams { grace_period_seconds: Some(AGENT_STOP_GRACE.as_secs() as u32), ..Default::default() };
                    let _ = self.calls(runner).run("delete Pod", || pods_api.delete(pod_name, &params)).await;
                }
            }
        }
    }

    async fn delete_secrets(&self, calls: &ApiCalls, api: &Api<Secret>, secrets: &[Secret]) {
        let params = DeleteParams::default();
        for secret in secrets {
            let name = secret.metadata.name.as_deref().unwrap_or_default();
            let deleted = calls
                .run("delete Secret", || api.delete(name, &params))
                .await;
            // Said, not dropped: the sweep retries it (it carries the manager's label).
            if let Err(e) = deleted.map(|_| ()).or_else(gone) {
                Event::KubernetesProblem {
                    doing: format!("deleting Secret {name} (the sweep tries again)"),
                    error: api_error(&e),
                }
                .emit();
            }
        }
    }

    /// This manager's pod of `job`, found by its labels.
    async fn find_job_pod(
        &self,
        calls: &ApiCalls,
        api: &Api<Pod>,
        job: &AcceptedJob,
    ) -> Option<Pod> {
        let selector = format!(
            "{MANAGER_LABEL}={},{JOB_LABEL}={}",
            self.system_id, job.payload.job.id
        );
        let params = kube::api::ListParams::default().labels(&selector);
        let list = calls
            .run("find the job's Pod", || api.list(&params))
            .await
            .ok()?;
        list.items.into_iter().next()
    }

    /// With `namespace_per_job`, deletes the job's namespace and stops watching it.
    async fn after_job(&self, runner: &RunnerConfig, job_id: i64) {
        let calls = self.calls(runner);
        if let Some(namespace) =
            crate::namespaces::teardown(&self.client, &calls, runner, &self.namespaces, job_id)
                .await
        {
            self.forget_namespace(&namespace);
        }
    }

    /// Stops the watches of a namespace that is gone.
    fn forget_namespace(&self, namespace: &str) {
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(namespace);
        self.namespaces.stop_watches(namespace);
    }

    async fn fail(&self, job: &AcceptedJob, reason: &str, trace_end: Option<u64>) -> JobEnd {
        Event::JobFailedByManager {
            job_id: job.payload.job.id,
            reason: reason.to_owned(),
        }
        .emit();
        let delivered = Box::pin(fail_job(
            job,
            &self.info,
            &self.podrunner_version,
            reason,
            trace_end,
        ))
        .await;
        JobEnd {
            final_update_delivered: delivered,
            state: "failed".to_owned(),
            failure_reason: Some("runner_system_failure".to_owned()),
        }
    }
}

/// A 409: the object exists.
fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Treats "already exists" as done.
pub(crate) fn already_exists(error: kube::Error) -> Result<(), kube::Error> {
    if is_conflict(&error) {
        Ok(())
    } else {
        Err(error)
    }
}

/// A delete that found nothing to delete did what it was for.
fn gone(error: kube::Error) -> Result<(), kube::Error> {
    match &error {
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        _ => Err(error),
    }
}

pub(crate) fn api_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

/// `.dockerconfigjson` of the job's pull Secret ([`crate::registry_auth`]).
fn docker_config(job: &AcceptedJob) -> Vec<u8> {
    crate::registry_auth::resolve(&job.payload, &job.runner.environment)
        .docker_config_json()
        .unwrap_or_default()
}

impl Executor for KubernetesExecutor {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn run<'a>(
        &'a self,
        job: AcceptedJob,
        abort: CancellationToken,
    ) -> Pin<Box<dyn std::future::Future<Output = podrunner_manager::JobEnd> + Send + 'a>> {
        let (runner, job_id) = (job.runner.clone(), job.payload.job.id);
        Box::pin(async move {
            let end = self.run_job(job, abort).await;
            self.after_job(&runner, job_id).await;
            end
        })
    }

    fn leftovers(
        self: Arc<Self>,
        runner: Arc<RunnerConfig>,
    ) -> Pin<Box<dyn std::future::Future<Output = Vec<AcceptedJob>> + Send>> {
        Box::pin(self.adopt(runner))
    }

    fn resume<'a>(
        &'a self,
        job: AcceptedJob,
        abort: CancellationToken,
    ) -> Pin<Box<dyn std::future::Future<Output = podrunner_manager::JobEnd> + Send + 'a>> {
        let (runner, job_id) = (job.runner.clone(), job.payload.job.id);
        Box::pin(async move {
            let end = self.resume_job(job, abort).await;
            self.after_job(&runner, job_id).await;
            end
        })
    }

    fn takeovers(
        self: Arc<Self>,
        runner: Arc<RunnerConfig>,
        stop: CancellationToken,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<AcceptedJob>> {
        Some(self.start_takeovers(runner, stop))
    }

    fn release(self: Arc<Self>) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.leases.release().await })
    }
}

/// A job's pod as its job follows it.
struct JobPod {
    namespace: String,
    name: String,
    /// The pod as the shared watch last saw it.
    state: watch::Receiver<Option<Pod>>,
    /// Secrets the pod does not own (making it their owner failed): deleted with it.
    orphan_secrets: Vec<Secret>,
    /// The log while the pod starts, and the manager's contact with GitLab meanwhile.
    log: Option<PodLog>,
    /// What GitLab said to the manager's first patch, before `follow` took over.
    heard: Heard,
}

/// Fargate placed the pod: it carries `CapacityProvisioned`, or its node is a `fargate-` node
/// (awsdocs/amazon-eks-user-guide, "Fargate pod configuration").
fn on_fargate(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("CapacityProvisioned"))
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| n.starts_with("fargate-"))
}
