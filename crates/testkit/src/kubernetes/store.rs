//! The stand-in's state: stored objects by kind, namespace and name, the resourceVersion
//! counter and the change history watches read, the writes every concern shares (commit,
//! pod updates, events), and ownerReference garbage collection.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use super::{
    ApiRequest, FargateProfile, Image, PodRuntime, QueuedFault, SimulatedContainers,
    kubelet_snapshot, namespaces, rbac, watch_history,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Kind {
    Pod,
    Secret,
    Event,
    /// Cluster-scoped: stored under the namespace `""` (module `namespaces`).
    Namespace,
    /// `policy/v1`, served by module `pdb` only.
    PodDisruptionBudget,
}

impl Kind {
    pub(super) fn from_resource(resource: &str) -> Option<Kind> {
        match resource {
            "pods" => Some(Kind::Pod),
            "secrets" => Some(Kind::Secret),
            "events" => Some(Kind::Event),
            "namespaces" => Some(Kind::Namespace),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
            Kind::Event => "Event",
            Kind::Namespace => "Namespace",
            Kind::PodDisruptionBudget => "PodDisruptionBudget",
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Change {
    pub(super) resource_version: u64,
    pub(super) kind: Kind,
    pub(super) namespace: String,
    pub(super) kind_of_change: &'static str,
    pub(super) object: Value,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) faults: Vec<QueuedFault>,
    /// How long every request that is not a watch waits before it is handled.
    pub(super) answer_delay: Duration,
    /// How long a Fargate node takes to start after the pod is scheduled.
    pub(super) fargate_boot: Duration,
    pub(super) resource_version: u64,
    pub(super) objects: BTreeMap<(Kind, String, String), Value>,
    pub(super) history: Vec<Change>,
    pub(super) images: HashMap<String, Image>,
    /// The nodes' image stores (module `images`).
    pub(super) node_images: super::images::NodeImages,
    pub(super) profiles: Vec<FargateProfile>,
    pub(super) ec2_nodes: usize,
    pub(super) ec2_cpu_millis: f64,
    /// EC2 node index and CPU millis of each scheduled pod, by uid.
    pub(super) ec2_used: HashMap<String, (usize, f64)>,
    pub(super) next_ip: u32,
    pub(super) requests: Vec<ApiRequest>,
    pub(super) runtimes: HashMap<String, PodRuntime>,
    /// When each container started running, by (namespace, pod, container).
    pub(super) started: HashMap<(String, String, String), std::time::SystemTime>,
    pub(super) uid_counter: u64,
    /// The USER (uid, gid) of images that declare one.
    pub(super) image_users: HashMap<String, (i64, i64)>,
    /// Whether NamespaceLifecycle admission is on (module `namespaces`).
    pub(super) namespace_lifecycle: namespaces::Lifecycle,
    /// Namespace labels (PodSecurity admission reads them).
    pub(super) namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// The message of an injected Fargate capacity shortage, while it lasts.
    pub(super) fargate_capacity_shortage: Option<String>,
    /// The watch history's window and watch outages.
    pub(super) watch_history: watch_history::WatchHistory,
    /// Tokens, RBAC objects and authorisation decisions.
    pub(super) rbac: rbac::Rbac,
    /// The kubelet's snapshot delay, downward-API refresh period and snapshots taken.
    pub(super) kubelet: kubelet_snapshot::KubeletSettings,
    /// The benchmark kubelet's containers, when it replaces the process kubelet.
    pub(super) simulated: Option<SimulatedContainers>,
    /// Leases by (namespace, name) (module `leases`).
    pub(super) leases: BTreeMap<(String, String), Value>,
}

#[derive(Clone)]
pub(super) struct Shared {
    pub(super) inner: Arc<Mutex<Inner>>,
    pub(super) changes: broadcast::Sender<Change>,
    pub(super) work_dir: Arc<PathBuf>,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn now() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// RFC 3339 in UTC with second precision, as the API server writes times.
fn rfc3339(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Stores a change and tells the watchers; returns the object as stored.
pub(super) fn commit(
    shared: &Shared,
    inner: &mut Inner,
    kind: Kind,
    namespace: &str,
    kind_of_change: &'static str,
    mut object: Value,
) -> Value {
    inner.resource_version += 1;
    let rv = inner.resource_version;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = (kind, namespace.to_owned(), name);
    if kind_of_change == "DELETED" {
        inner.objects.remove(&key);
    } else {
        inner.objects.insert(key, object.clone());
    }
    let change = Change {
        resource_version: rv,
        kind,
        namespace: namespace.to_owned(),
        kind_of_change,
        object: object.clone(),
    };
    inner.history.push(change.clone());
    let _ = shared.changes.send(change);
    object
}

/// Removes an object and, by Background propagation, everything it owns.
pub(super) fn remove(
    shared: &Shared,
    inner: &mut Inner,
    kind: Kind,
    namespace: &str,
    object: Value,
) {
    let uid = object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    commit(shared, inner, kind, namespace, "DELETED", object);
    if kind == Kind::Pod {
        if let Some(runtime) = inner.runtimes.get(&uid) {
            runtime.stop.notify_waiters();
        }
        inner.ec2_used.remove(&uid);
    }
    let owned: Vec<(Kind, String, Value)> = inner
        .objects
        .iter()
        .filter(|(_, v)| {
            v["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str())))
        })
        .map(|((k, ns, _), v)| (*k, ns.clone(), v.clone()))
        .collect();
    for (kind, namespace, object) in owned {
        remove(shared, inner, kind, &namespace, object);
    }
}

pub(super) fn event(
    shared: &Shared,
    namespace: &str,
    pod: &Value,
    type_: &str,
    reason: &str,
    message: &str,
    source: &str,
) {
    let mut inner = shared.lock();
    inner.uid_counter += 1;
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let name = format!("{pod_name}.{:x}", inner.uid_counter);
    let now = now();
    let object = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("event-{}", inner.uid_counter), "creationTimestamp": now},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": namespace, "name": pod_name, "uid": pod["metadata"]["uid"]},
        "type": type_, "reason": reason, "message": message,
        "source": {"component": source},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    commit(shared, &mut inner, Kind::Event, namespace, "ADDED", object);
}

/// Applies `change` to the stored pod if it still exists with this uid; returns it.
pub(super) fn update_pod(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    change: impl FnOnce(&mut Value),
) -> Option<Value> {
    let mut inner = shared.lock();
    let mut pod = inner
        .objects
        .get(&(Kind::Pod, namespace.to_owned(), name.to_owned()))
        .cloned()?;
    if pod["metadata"]["uid"].as_str() != Some(uid) {
        return None;
    }
    change(&mut pod);
    Some(commit(
        shared,
        &mut inner,
        Kind::Pod,
        namespace,
        "MODIFIED",
        pod,
    ))
}

pub(super) fn pod_gone_or_deleting(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
) -> bool {
    let inner = shared.lock();
    match inner
        .objects
        .get(&(Kind::Pod, namespace.to_owned(), name.to_owned()))
    {
        Some(pod) => {
            pod["metadata"]["uid"].as_str() != Some(uid)
                || !pod["metadata"]["deletionTimestamp"].is_null()
        }
        None => true,
    }
}

/// Waits until the pod is deleted (or being deleted).
pub(super) async fn wait_until_gone(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    stop: &Notify,
) {
    while !pod_gone_or_deleting(shared, namespace, name, uid) {
        tokio::select! {
            () = stop.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
