//! The manager's view of its pods: one shared watch per namespace over the pods carrying its
//! label (relisted after a break), and one over the namespace's Warning events, feeding
//! [`PodStates`], which each job's follower subscribes to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use podrunner_manager::Event;
use tokio::sync::watch;

use super::KubernetesExecutor;
use crate::judge::{FargateEvent, FargateSignals, read_warning};
use crate::plan::MANAGER_LABEL;

/// The last known state of each of the manager's pods, fed by one watch per namespace.
#[derive(Default)]
pub(super) struct PodStates {
    /// Subscribers by pod name; `None` once the pod is gone.
    pods: Mutex<HashMap<String, watch::Sender<Option<Arc<Pod>>>>>,
    /// Messages of the Warning events of followed pods, by pod name, in order, once each.
    warnings: Mutex<HashMap<String, Vec<String>>>,
    /// What the Fargate scheduler's events said about followed pods, by pod name.
    fargate: Mutex<HashMap<String, FargateSignals>>,
}

impl PodStates {
    pub(super) fn subscribe(&self, name: &str) -> watch::Receiver<Option<Arc<Pod>>> {
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.entry(name.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    pub(super) fn is_followed(&self, name: &str) -> bool {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    pub(super) fn forget(&self, name: &str) {
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
    pub(super) fn fargate_event(&self, name: &str, event: FargateEvent) {
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
    pub(super) fn fargate_of(&self, name: &str) -> FargateSignals {
        self.fargate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Records a Warning event of pod `name` (if followed) and wakes its follower.
    pub(super) fn warn(&self, name: &str, message: String) {
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
    pub(super) fn warnings_of(&self, name: &str) -> Vec<String> {
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
    pub(super) fn relisted(&self, listed: &std::collections::HashSet<String>) {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        for (name, sender) in pods.iter() {
            if !listed.contains(name) && sender.borrow().is_some() {
                sender.send_replace(None);
            }
        }
    }

    pub(super) fn update(&self, name: &str, pod: Option<Pod>) {
        if let Some(sender) = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            sender.send_replace(pod.map(|pod| Arc::new(crate::pod_view::followed(pod))));
        }
    }
}

impl KubernetesExecutor {
    /// The shared watch over this manager's pods in `namespace`, started on first use.
    pub(super) fn states(&self, namespace: &str) -> Arc<PodStates> {
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
                        let warning = read_warning(&e);
                        if let Some(signal) = warning.fargate {
                            feed.fargate_event(&warning.pod, signal);
                        }
                        if let Some(message) = warning.message {
                            feed.warn(&warning.pod, message);
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
}
