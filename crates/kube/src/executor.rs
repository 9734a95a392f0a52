//! The Kubernetes executor: one pod per job, the agent as PID 1 of its build container.
//!
//! Per job, on the happy path: create the Pod, create its spec Secret already owned by it (the
//! kubelet mounts it once it exists), one merge patch of the Pod per change while it waits (the trace prelude: the
//! manager writes the start of the job's log and hands it to the agent through an
//! annotation), delete the Pod (the Secret goes with it). Pod states come from one shared
//! watch per namespace over the manager's pods; there is no per-job watch, no polling, no exec
//! and no log stream: the agent talks to GitLab itself and leaves its termination report as
//! the build container's termination message. Every call goes through [`crate::calls`]
//! (retries, rate limit). A job allowed its own `KUBERNETES_BEARER_TOKEN` has its writes (its
//! Secrets, Pod and budget) made with that token (`writer`); the shared watches, which serve
//! every job of a namespace, stay the manager's.
//!
//! This module keeps the executor, its connection and the small shared helpers; each concern
//! is a child module: `store` (the shared watches), `run` (one job), `follow` (a pod to its
//! end), `adopt` (an earlier run's pods), `sweep` (strays), `secrets`, `ownership`
//! (Leases and takeovers) and `writer` (whose credentials a job's writes use). What a pod's state means is decided in [`crate::judge`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use podrunner_agent::TerminationReport;
use podrunner_config::RunnerConfig;
use podrunner_gitlab::RunnerInfo;
use podrunner_manager::{AcceptedJob, Executor};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::calls::{ApiCalls, RateLimit, RetryPolicy};
use crate::prelude::{Heard, PodLog, Stop};
use store::PodStates;

mod adopt;
mod follow;
mod ownership;
mod run;
pub use run::STARTS_UNDER_WAY;
mod secrets;
mod store;
mod sweep;
mod writer;

pub(crate) use writer::JobWriter;

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

/// Runs each job in its own pod.
pub struct KubernetesExecutor {
    /// The manager's own client: watches, Leases, namespaces, adoption, the sweep, and the
    /// jobs' writes unless a job brings its own token ([`JobWriter`]).
    client: kube::Client,
    /// What `client` was made from: a job's own client starts from it
    /// ([`crate::job_client`]).
    config: kube::Config,
    init_image: String,
    podrunner_version: String,
    info: RunnerInfo,
    system_id: String,
    watches: Mutex<HashMap<String, Arc<PodStates>>>,
    /// One bucket for every API call of this executor.
    limit: Arc<RateLimit>,
    /// The jobs whose pods are being made ([`STARTS_UNDER_WAY`] at most).
    starts: tokio::sync::Semaphore,
    /// Pods of an earlier run, by job ID, until their job is resumed.
    adopted: Mutex<HashMap<i64, JobPod>>,
    /// GitLab clients for the prelude, one per runner URL (a client holds the TLS roots).
    gitlab_clients: Mutex<HashMap<String, podrunner_gitlab::GitlabClient>>,
    /// Per-job namespaces in use, and what stops each namespace's watches.
    namespaces: crate::namespaces::JobNamespaces,
    /// This manager's Leases: which job pods are its own ([`crate::lease`]).
    leases: crate::lease::OwnLeases,
    /// Jobs let go of because another manager took their pods ([`Outcome::HandedOver`]):
    /// their namespaces are not this manager's to delete.
    handed_over: Mutex<std::collections::HashSet<i64>>,
    cancel: CancellationToken,
}

impl Drop for KubernetesExecutor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The manager's connection to the API server.
#[derive(Clone)]
pub struct Connection {
    /// The client of the manager's calls.
    pub client: kube::Client,
    /// The settings it was made from, kept for the clients of jobs that bring their own
    /// `KUBERNETES_BEARER_TOKEN` ([`crate::job_client`]).
    pub config: kube::Config,
}

/// Connects the way gitlab-runner does: `host` (with `bearer_token`, `ca_file`,
/// `cert_file`/`key_file`) when set, else the pod's service account, else the kubeconfig
/// (`context` when set).
pub async fn connect(runner: &RunnerConfig) -> Result<Connection, ConnectError> {
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
    let client = kube::Client::try_from(config.clone())
        .map_err(|e| ConnectError::NoCluster(e.to_string()))?;
    Ok(Connection { client, config })
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
    /// A container's image could not be pulled ([`crate::pull_policy`] says what next).
    PullFailed(crate::pull_policy::PullFailure),
    /// GitLab stopped the job before its script (the manager heard it while the pod waited).
    Stopped(Stop),
}

impl KubernetesExecutor {
    /// An executor that uses `connection`; job pods install the agent from `init_image`.
    pub fn new(
        connection: Connection,
        init_image: String,
        podrunner_version: String,
        info: RunnerInfo,
        system_id: String,
    ) -> Self {
        let Connection { client, config } = connection;
        let cancel = CancellationToken::new();
        KubernetesExecutor {
            leases: crate::lease::OwnLeases::new(
                client.clone(),
                system_id.clone(),
                crate::lease::LeaseSettings::default(),
                cancel.child_token(),
            ),
            client,
            config,
            init_image,
            podrunner_version,
            info,
            system_id,
            watches: Mutex::new(HashMap::new()),
            limit: Arc::new(RateLimit::default()),
            starts: tokio::sync::Semaphore::new(STARTS_UNDER_WAY),
            adopted: Mutex::new(HashMap::new()),
            handed_over: Mutex::default(),
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

    /// The GitLab client for the jobs of `runner`, made once per URL and TLS settings.
    fn gitlab_client(&self, runner: &RunnerConfig) -> Option<podrunner_gitlab::GitlabClient> {
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
        let client = podrunner_manager::job_client(runner, &self.podrunner_version)?;
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
        // Boxed apart: the job's task holds the job's future, not also the job or the
        // after-job's future.
        let work = Box::pin(self.run_job(job, abort));
        Box::pin(async move {
            let end = work.await;
            if !self.was_handed_over(job_id) {
                Box::pin(self.after_job(&runner, job_id)).await;
            }
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
        // Boxed apart: the job's task holds the job's future, not also the job or the
        // after-job's future.
        let work = Box::pin(self.resume_job(job, abort));
        Box::pin(async move {
            let end = work.await;
            if !self.was_handed_over(job_id) {
                Box::pin(self.after_job(&runner, job_id)).await;
            }
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
    /// (shared: the follower reads it without a copy).
    state: watch::Receiver<Option<Arc<Pod>>>,
    /// Secrets the pod does not own (making it their owner failed): deleted with it.
    orphan_secrets: Vec<Secret>,
    /// The log while the pod starts, and the manager's contact with GitLab meanwhile (boxed:
    /// gone once the agent has the log, it takes no room in the job's task then).
    log: Option<Box<PodLog>>,
    /// What GitLab said to the manager's first patch, before `follow` took over.
    heard: Heard,
    /// Owned through this manager's Lease (marked with it): another manager may take it.
    leased: bool,
    /// Whose credentials the pod's writes (patches, deletes) are made with.
    writer: JobWriter,
}
