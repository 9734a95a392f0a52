//! The sweep: this manager's pods that no job follows, and Secrets whose pod is gone, deleted
//! every [`SWEEP_INTERVAL`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams};
use podrunner_config::RunnerConfig;
use podrunner_manager::Event;

use super::secrets::pod_of;
use super::{KubernetesExecutor, api_error, gone};
use crate::calls::ApiCalls;
use crate::plan::MANAGER_LABEL;

/// How often the manager looks for its stray pods and Secrets.
const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

impl KubernetesExecutor {
    /// Every [`SWEEP_INTERVAL`], deletes this manager's pods that no job follows and the spec
    /// and registry Secrets whose pod is gone (left by a crash between creating the Secret and
    /// the pod, or by a lost delete).
    pub(super) async fn sweep_forever(self: Arc<Self>, runner: Arc<RunnerConfig>, calls: ApiCalls) {
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
    pub(super) async fn sweep(&self, namespace: &str, calls: &ApiCalls) {
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
            let pod = pod_of(&name);
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
}
