//! The stand-in kubelet's view of a pod: the kubelet works from the pod it has cached, not
//! from the API server, so what a container sees of its pod is as old as that copy.
//!
//! - Environment variables with a `fieldRef` are resolved once, when the container is
//!   created, from the kubelet's pod (`makeEnvironmentVariables` and
//!   `podFieldSelectorRuntimeValue` in `pkg/kubelet/kubelet_pods.go`, called from
//!   `generateContainerConfig` in `pkg/kubelet/kuberuntime/kuberuntime_container.go`), and
//!   never change afterwards. The time between that snapshot and the container running is
//!   switchable ([`super::KubernetesStandIn::set_container_start_delay`]): the real kubelet
//!   creates the container, then starts it, then reports it running on its next status
//!   update.
//! - `downwardAPI` volume files are written when the volume is set up and written again each
//!   time the kubelet syncs the pod: the plugin asks to be remounted on every sync
//!   (`RequiresRemount` returns true in `pkg/volume/downwardapi/downwardapi.go`, whose
//!   `SetUpAt` collects the values again from the pod and writes them through
//!   `pkg/volume/util/atomic_writer.go`, so a reader sees the old or the new file, never a
//!   mix). The kubelet syncs a pod when it changes and at the latest every `syncFrequency`
//!   (1 minute by default, `pkg/kubelet/apis/config/v1beta1/defaults.go`); the stand-in
//!   rewrites the files on a fixed period, switchable
//!   ([`super::KubernetesStandIn::set_downward_api_refresh`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{DownwardAPIVolumeSource, PodSpec};
use serde_json::Value;

use super::{Kind, KubernetesStandIn, Shared, field_value, pod_gone_or_deleting};

/// The kubelet's clocks.
#[derive(Debug, Clone)]
pub(super) struct KubeletSettings {
    /// Between resolving a container's environment and starting it.
    start_delay: Duration,
    /// Between two rewrites of the downward-API volume files.
    refresh: Duration,
    /// Every environment snapshot taken, in order.
    snapshots: Vec<Snapshot>,
}

impl Default for KubeletSettings {
    fn default() -> Self {
        KubeletSettings {
            start_delay: Duration::ZERO,
            refresh: Duration::from_secs(1),
            snapshots: Vec::new(),
        }
    }
}

/// A container's environment as the kubelet resolved it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub pod: String,
    /// Name of the container.
    pub container: String,
    /// The pod's annotations in the snapshot.
    pub annotations: serde_json::Map<String, Value>,
    /// When it was taken.
    pub at: std::time::SystemTime,
}

impl KubernetesStandIn {
    /// Makes the kubelet wait `delay` between reading a container's environment from its pod
    /// and starting it (none by default).
    pub fn set_container_start_delay(&self, delay: Duration) {
        self.shared.lock().kubelet.start_delay = delay;
    }

    /// Makes the kubelet rewrite downward-API volume files every `period` (1 s by default,
    /// for a sync after a change of the pod; the real kubelet's longest is 1 minute).
    pub fn set_downward_api_refresh(&self, period: Duration) {
        self.shared.lock().kubelet.refresh = period;
    }

    /// The environment snapshots the kubelet took, in order.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.shared.lock().kubelet.snapshots.clone()
    }
}

/// The pod as the kubelet has it when it creates `container`; waits the start delay after.
pub(super) async fn take(shared: &Shared, namespace: &str, name: &str, container: &str) -> Value {
    let (pod, delay) = {
        let mut inner = shared.lock();
        let pod = inner
            .objects
            .get(&(Kind::Pod, namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or(Value::Null);
        inner.kubelet.snapshots.push(Snapshot {
            namespace: namespace.to_owned(),
            pod: name.to_owned(),
            container: container.to_owned(),
            annotations: pod["metadata"]["annotations"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            at: std::time::SystemTime::now(),
        });
        (pod, inner.kubelet.start_delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    pod
}

/// Writes a `downwardAPI` volume's files into `dir` from the pod as it is now.
pub(super) fn write_downward_api(
    shared: &Shared,
    namespace: &str,
    name: &str,
    volume: &str,
    source: &DownwardAPIVolumeSource,
    dir: &Path,
) -> Result<(), String> {
    let pod = shared
        .lock()
        .objects
        .get(&(Kind::Pod, namespace.to_owned(), name.to_owned()))
        .cloned()
        .unwrap_or(Value::Null);
    for item in source.items.iter().flatten() {
        let value = item
            .field_ref
            .as_ref()
            .and_then(|field| field_value(&pod, &field.field_path))
            .ok_or_else(|| {
                format!(
                    "volume {volume}: item {}: the stand-in resolves only fieldRef to metadata.name, metadata.namespace, metadata.uid, metadata.labels['…'] and metadata.annotations['…']",
                    item.path
                )
            })?;
        let path = dir.join(&item.path);
        // Atomically, as the atomic writer does: a reader never sees half a file.
        let temporary = dir.join(format!("..{}.tmp", item.path));
        std::fs::write(&temporary, value).map_err(|e| format!("volume {volume}: {e}"))?;
        std::fs::rename(&temporary, &path).map_err(|e| format!("volume {volume}: {e}"))?;
        let mode = item.mode.or(source.default_mode).unwrap_or(0o644) as u32;
        let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode));
    }
    Ok(())
}

/// Rewrites the pod's downward-API volume files every refresh period until the pod is gone.
pub(super) fn refresh_downward_api(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    spec: &PodSpec,
    volumes: &HashMap<String, PathBuf>,
) {
    let sources: Vec<(String, DownwardAPIVolumeSource, PathBuf)> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let source = v.downward_api.clone()?;
            Some((v.name.clone(), source, volumes.get(&v.name)?.clone()))
        })
        .collect();
    if sources.is_empty() {
        return;
    }
    let (shared, namespace, name, uid) = (
        shared.clone(),
        namespace.to_owned(),
        name.to_owned(),
        uid.to_owned(),
    );
    tokio::spawn(async move {
        loop {
            let period = shared.lock().kubelet.refresh;
            tokio::time::sleep(period).await;
            if pod_gone_or_deleting(&shared, &namespace, &name, &uid) {
                return;
            }
            for (volume, source, dir) in &sources {
                let _ = write_downward_api(&shared, &namespace, &name, volume, source, dir);
            }
        }
    });
}
