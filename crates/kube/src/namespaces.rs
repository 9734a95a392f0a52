//! The namespaces jobs run in: the per-job namespace of `namespace_per_job` (made before the
//! job's objects, deleted after the job), and which namespaces adoption and the sweep look in.
//!
//! gitlab-runner (`executors/kubernetes/kubernetes.go`, `setupBuildNamespace` and
//! `teardownBuildNamespace`) creates the namespace `ci-job-<job ID>` before the job's objects
//! and deletes it after the job. podrunner does the same and also labels the namespace with
//! the manager's system ID and the job ID, so that one left by a crash (the manager killed
//! between creating it and deleting it) is found by the sweep and deleted.
//!
//! With only `namespace` configured, every job pod is in that one namespace and adoption and
//! the sweep look there. With `namespace_overwrite_allowed` or `namespace_per_job`, jobs may
//! be anywhere: the pods and Secrets of this manager are found by its label with one list
//! across all namespaces, which needs `list` on pods and secrets at the cluster scope (a
//! ClusterRole; the chart makes one with `rbac.clusterWideAccess: true`, and always when
//! `namespace_per_job` is set). Without it the cluster-wide list is refused, that is said in
//! the log, and only the configured namespace is covered.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use podrunner_config::{KubernetesConfig, RunnerConfig};
use podrunner_manager::Event;
use tokio_util::sync::CancellationToken;

use crate::calls::ApiCalls;
use crate::plan::{JOB_LABEL, MANAGER_LABEL};

/// How often the wait for a namespace still being deleted looks again.
const RECHECK: Duration = Duration::from_millis(250);

/// The namespace of job `job_id` with `namespace_per_job`, named as gitlab-runner names it.
pub fn per_job_name(job_id: i64) -> String {
    format!("ci-job-{job_id}")
}

/// Whether this configuration can put job pods in more than one namespace.
pub(crate) fn spans_namespaces(config: &KubernetesConfig) -> bool {
    config.namespace_per_job || config.namespace_overwrite_allowed.is_some()
}

/// The per-job namespaces jobs of this run are using, and the watches of each namespace.
#[derive(Default)]
pub(crate) struct JobNamespaces {
    /// Namespaces made for running jobs: never stray, even before their pod exists.
    active: Mutex<HashSet<String>>,
    /// What stops the watches of each namespace.
    watches: Mutex<HashMap<String, CancellationToken>>,
}

impl JobNamespaces {
    /// The token that stops the watches of `namespace`, a child of `parent`.
    pub(crate) fn watch_token(
        &self,
        parent: &CancellationToken,
        namespace: &str,
    ) -> CancellationToken {
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(namespace.to_owned())
            .or_insert_with(|| parent.child_token())
            .clone()
    }

    /// Stops the watches of `namespace` (it is gone).
    pub(crate) fn stop_watches(&self, namespace: &str) {
        if let Some(token) = self
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(namespace)
        {
            token.cancel();
        }
    }

    fn set_active(&self, namespace: &str, active: bool) {
        let mut set = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active {
            set.insert(namespace.to_owned());
        } else {
            set.remove(namespace);
        }
    }

    fn is_active(&self, namespace: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(namespace)
    }
}

fn labels(system_id: &str, job_id: i64) -> BTreeMap<String, String> {
    [
        (MANAGER_LABEL.to_owned(), system_id.to_owned()),
        (JOB_LABEL.to_owned(), job_id.to_string()),
    ]
    .into()
}

fn api_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// With `namespace_per_job`, makes job `job_id`'s namespace and waits until objects can be
/// created in it: a namespace of that name still being deleted (an earlier attempt's) is
/// waited for, up to `timeout`, then made again. Without it, does nothing. The error names
/// the namespace, the API's answer and the fix.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn prepare(
    client: &kube::Client,
    calls: &ApiCalls,
    runner: &RunnerConfig,
    registry: &JobNamespaces,
    system_id: &str,
    job_id: i64,
    namespace: &str,
    timeout: Duration,
) -> Result<(), String> {
    if !runner.kubernetes_or_default().namespace_per_job {
        return Ok(());
    }
    registry.set_active(namespace, true);
    let api: Api<Namespace> = Api::all(client.clone());
    let object = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.to_owned()),
            labels: Some(labels(system_id, job_id)),
            ..Default::default()
        },
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let post = PostParams::default();
    loop {
        let created = calls
            .run("create Namespace", || api.create(&post, &object))
            .await;
        let error = match created {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if status_code(&error) != Some(409) {
            registry.set_active(namespace, false);
            let hint = if status_code(&error) == Some(403) {
                "; namespace_per_job needs create and delete on namespaces at the cluster scope (the chart's ClusterRole grants them when runners.config sets namespace_per_job = true)"
            } else {
                ""
            };
            return Err(format!(
                "cannot create namespace {namespace} (namespace_per_job): {}{hint}",
                api_error(&error)
            ));
        }
        // It exists: ours (a lost answer's create went through), or still being deleted.
        let existing = calls
            .run("read the Namespace", || api.get_opt(namespace))
            .await
            .map_err(|e| format!("cannot read namespace {namespace}: {}", api_error(&e)))?;
        let Some(existing) = existing else { continue };
        let terminating = existing.metadata.deletion_timestamp.is_some()
            || existing.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        let ours = existing
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.get(JOB_LABEL) == Some(&job_id.to_string()));
        if !terminating && ours {
            return Ok(());
        }
        if !terminating {
            registry.set_active(namespace, false);
            return Err(format!(
                "namespace {namespace} already exists and was not made for this job (it lacks the label {JOB_LABEL}={job_id}); namespace_per_job needs the name for itself: delete or rename that namespace"
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            registry.set_active(namespace, false);
            return Err(format!(
                "namespace {namespace} was still being deleted after {}s (poll_timeout): an earlier namespace of that name keeps objects with finalizers; see kubectl describe namespace {namespace}",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(RECHECK).await;
    }
}

/// With `namespace_per_job`, deletes job `job_id`'s namespace (and with it anything left in
/// it). A failure is said; the sweep deletes the namespace later.
pub(crate) async fn teardown(
    client: &kube::Client,
    calls: &ApiCalls,
    runner: &RunnerConfig,
    registry: &JobNamespaces,
    job_id: i64,
) -> Option<String> {
    if !runner.kubernetes_or_default().namespace_per_job {
        return None;
    }
    let namespace = per_job_name(job_id);
    let api: Api<Namespace> = Api::all(client.clone());
    let background = DeleteParams::background();
    let deleted = calls
        .run("delete Namespace", || api.delete(&namespace, &background))
        .await;
    registry.set_active(&namespace, false);
    match deleted {
        Ok(_) => {}
        Err(e) if status_code(&e) == Some(404) => {}
        Err(e) => Event::KubernetesProblem {
            doing: format!(
                "deleting namespace {namespace} after job {job_id} (the sweep tries again)"
            ),
            error: api_error(&e),
        }
        .emit(),
    }
    Some(namespace)
}

/// The namespaces adoption and the sweep cover.
pub(crate) struct Covered {
    /// The configured namespace and, when jobs can be elsewhere, every namespace holding a
    /// pod or Secret with this manager's label.
    pub(crate) namespaces: BTreeSet<String>,
    /// The namespaces holding a pod of this manager, when the cluster-wide list told.
    holding_pods: Option<BTreeSet<String>>,
}

/// Finds the namespaces adoption and the sweep cover (a refused cluster-wide list is said,
/// and leaves the configured namespace only).
pub(crate) async fn in_use(
    client: &kube::Client,
    calls: &ApiCalls,
    runner: &RunnerConfig,
    system_id: &str,
) -> Covered {
    let config = runner.kubernetes_or_default();
    let mut covered = Covered {
        namespaces: [config.namespace().to_owned()].into(),
        holding_pods: None,
    };
    if !spans_namespaces(&config) {
        return covered;
    }
    let params = ListParams::default().labels(&format!("{MANAGER_LABEL}={system_id}"));
    let pods: Api<Pod> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::all(client.clone());
    let found = async {
        let with_pods: BTreeSet<String> = calls
            .run("list Pods in all namespaces", || pods.list(&params))
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.namespace)
            .collect();
        let with_secrets: BTreeSet<String> = calls
            .run("list Secrets in all namespaces", || secrets.list(&params))
            .await?
            .items
            .into_iter()
            .filter_map(|s| s.metadata.namespace)
            .collect();
        Ok::<_, kube::Error>((with_pods, with_secrets))
    }
    .await;
    match found {
        Ok((with_pods, with_secrets)) => {
            covered.namespaces.extend(with_pods.iter().cloned());
            covered.namespaces.extend(with_secrets);
            covered.holding_pods = Some(with_pods);
        }
        Err(e) => Event::SweepFailed {
            namespace: "(all namespaces)".into(),
            call: "list Pods and Secrets in all namespaces",
            error: format!(
                "{}; namespace_overwrite_allowed or namespace_per_job put jobs in other namespaces, and finding them needs list on pods and secrets at the cluster scope (a ClusterRole: rbac.clusterWideAccess: true in the chart); only namespace {} is covered",
                api_error(&e),
                config.namespace()
            ),
        }
        .emit(),
    }
    covered
}

/// With `namespace_per_job`, deletes this manager's namespaces that no job of this run uses
/// and that hold none of its pods (left by a crash); returns their names. Nothing is deleted
/// when `covered` does not know which namespaces hold pods.
pub(crate) async fn sweep(
    client: &kube::Client,
    calls: &ApiCalls,
    runner: &RunnerConfig,
    registry: &JobNamespaces,
    system_id: &str,
    covered: &Covered,
) -> Vec<String> {
    let Some(holding_pods) = &covered.holding_pods else {
        return Vec::new();
    };
    if !runner.kubernetes_or_default().namespace_per_job {
        return Vec::new();
    }
    let api: Api<Namespace> = Api::all(client.clone());
    let params = ListParams::default().labels(&format!("{MANAGER_LABEL}={system_id}"));
    let listed = match calls.run("list Namespaces", || api.list(&params)).await {
        Ok(list) => list.items,
        Err(e) => {
            Event::SweepFailed {
                namespace: "(all namespaces)".into(),
                call: "list Namespaces",
                error: api_error(&e),
            }
            .emit();
            return Vec::new();
        }
    };
    let mut deleted = Vec::new();
    for namespace in listed {
        let Some(name) = namespace.metadata.name else {
            continue;
        };
        if namespace.metadata.deletion_timestamp.is_some()
            || registry.is_active(&name)
            || holding_pods.contains(&name)
        {
            continue;
        }
        Event::StrayDeleted {
            kind: "Namespace",
            namespace: name.clone(),
            name: name.clone(),
        }
        .emit();
        let background = DeleteParams::background();
        match calls
            .run("delete Namespace", || api.delete(&name, &background))
            .await
        {
            Ok(_) => deleted.push(name),
            Err(e) if status_code(&e) == Some(404) => deleted.push(name),
            Err(e) => Event::SweepFailed {
                namespace: name.clone(),
                call: "delete Namespace",
                error: api_error(&e),
            }
            .emit(),
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_job_namespace_is_named_as_gitlab_runner_names_it() {
        assert_eq!(per_job_name(42), "ci-job-42");
    }

    #[test]
    fn only_overwrites_and_per_job_namespaces_span_namespaces() {
        let mut config = KubernetesConfig::default();
        assert!(!spans_namespaces(&config));
        config.namespace_per_job = true;
        assert!(spans_namespaces(&config));
        config.namespace_per_job = false;
        config.namespace_overwrite_allowed =
            Some(podrunner_config::ConfigRegex::new("ci-.*").unwrap());
        assert!(spans_namespaces(&config));
    }
}
