//! A Kubernetes API server stand-in, written from the API's wire format (k8s-openapi types,
//! JSON over HTTP, newline-delimited watch events), with a scheduler (an EC2 node pool and
//! Fargate profiles) and a kubelet that runs containers as real processes under bubblewrap.
//!
//! What it serves, under `/api/v1`: pods, secrets and events in namespaces, and namespaces
//! (module `namespaces`: any namespace exists until a test adds one); create, get, list and watch (resourceVersion, bookmarks, `timeoutSeconds`, label
//! and field selectors, across all namespaces too), merge patch, replace, and delete with a
//! grace period; ownerReference garbage collection (Background); and pod logs. Every request
//! is recorded so tests can count them. RBAC is enforced once a Role is loaded (module `rbac`).
//! Under `/apis/coordination.k8s.io/v1`: Leases with resourceVersion conflicts (module `leases`).
//! Under `/apis/policy/v1`: PodDisruptionBudgets, which the Eviction API respects (module `pdb`).
//!
//! The kubelet runs init containers in order, then the containers together. An image is
//! either the host's root (read-only), or an empty root holding named host files (a
//! `scratch` image), or an image whose pull fails; unmapped images fail to pull. `emptyDir`,
//! `secret` and `downwardAPI` volumes are bind-mounted at their `mountPath` (downward-API
//! values come from the kubelet's copy of the pod: `kubernetes/kubelet_snapshot.rs`);
//! `terminationMessagePath` is a file whose contents become the termination message.
//! Every status it writes carries the pod conditions a kubelet reports (module
//! `pod_conditions`), so `kubectl wait --for=condition=Ready` works.
//! Containers run as their image's USER or security context, Secret files are owned as the
//! kubelet makes them (module `identity`). OOM kills and evictions can be injected, and
//! `activeDeadlineSeconds` is enforced.
//! In benchmark mode the kubelet runs no process and reports the containers as they would
//! be (module `simulated_kubelet`).
//!
//! The code is split by concern: `api` (routing, request records, `Status` answers, injected
//! connection faults), `store` (objects, resourceVersions, change history, garbage
//! collection), `objects` (create, read, patch, replace, delete), `watch` (list and watch,
//! selectors), `scheduler` (EC2 nodes and Fargate), `kubelet` (images, volumes, container
//! statuses, the pod's phase), `sandbox` (a container's bubblewrap process) and `exec` (logs
//! and exec). This file is the public face: [`KubernetesStandIn`] and the types tests use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

mod admission;
mod api;
mod discovery;
mod eviction;
mod exec;
mod fargate_capacity;
mod identity;
mod images;
mod kubelet;
mod kubelet_snapshot;
mod leases;
mod namespaces;
mod objects;
mod pdb;
mod plain_list;
mod pod_conditions;
mod rbac;
mod sandbox;
mod scheduler;
mod simulated_kubelet;
mod store;
pub mod validation;
mod watch;
mod watch_history;

pub use fargate_capacity::CAPACITY_UNAVAILABLE;
pub use kubelet_snapshot::Snapshot;
pub use rbac::Authorization;
pub use simulated_kubelet::SimulatedContainers;
pub use watch_history::WatchOutage;

// The names the concern modules reach as `super::…`.
use api::{QueuedFault, json_body, not_found, record, router, status};
use kubelet::{PodRuntime, container_status, field_value, finish_pod, prepare_volumes, set_status};
use objects::{DeleteQuery, delete, merge_patch, valid_name};
use sandbox::{log_path, signal};
use store::{Inner, Kind, Shared, commit, event, now, pod_gone_or_deleting, remove, update_pod};
use watch::{ListQuery, Selector};

/// What an image name stands for on this stand-in's nodes.
#[derive(Clone, Debug)]
pub enum Image {
    /// The host's root filesystem, read-only: a full distribution image.
    HostRoot,
    /// An empty root holding these host files at these absolute paths: a `scratch` image.
    Files(Vec<(PathBuf, String)>),
    /// Pulling fails (`ErrImagePull`, then `ImagePullBackOff`) with this message.
    PullFails(String),
}

/// A Fargate profile: pods in `namespace` carrying all `labels` go to Fargate.
#[derive(Clone, Debug)]
pub struct FargateProfile {
    /// The profile's name (written to the pod's `eks.amazonaws.com/fargate-profile` label).
    pub name: String,
    /// The selector's namespace.
    pub namespace: String,
    /// The selector's labels (all must match).
    pub labels: BTreeMap<String, String>,
}

/// A failure to inject into a running pod.
#[derive(Clone, Debug)]
pub enum Injection {
    /// The kernel's OOM killer kills this container (exit 137, reason `OOMKilled`).
    OomKill {
        /// The container's name.
        container: String,
    },
    /// The kubelet evicts the pod (phase Failed, reason `Evicted`).
    Evict,
}

/// A request the stand-in received.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Whether it asked for a watch stream.
    pub watch: bool,
}

/// A failure one API request suffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionFault {
    /// The connection closes before the request is handled: nothing happens.
    DropBeforeHandling,
    /// The request is carried out, then the connection closes before the answer.
    DropAfterHandling,
    /// The API server answers 500 `etcdserver: request timed out` without carrying it out.
    EtcdTimeout,
}

/// A running Kubernetes stand-in.
pub struct KubernetesStandIn {
    shared: Shared,
    url: String,
    task: tokio::task::JoinHandle<()>,
    _work_dir: tempfile::TempDir,
}

impl Drop for KubernetesStandIn {
    fn drop(&mut self) {
        self.task.abort();
        let inner = self.shared.lock();
        for runtime in inner.runtimes.values() {
            for pid in runtime.pids.values() {
                signal(*pid, rustix::process::Signal::KILL);
            }
        }
    }
}

impl KubernetesStandIn {
    /// Starts the stand-in on a loopback port with `ec2_nodes` EC2 nodes of `ec2_cpu` CPUs
    /// each and no Fargate profile.
    pub async fn start(ec2_nodes: usize, ec2_cpu: f64) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let work_dir = tempfile::tempdir().expect("temporary directory for the kubelet");
        // Reachable by the unprivileged sandboxes of non-root containers (module identity).
        let _ = std::fs::set_permissions(
            work_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        );
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                ec2_nodes,
                ec2_cpu_millis: ec2_cpu * 1000.0,
                next_ip: 1,
                ..Inner::default()
            })),
            changes,
            work_dir: Arc::new(work_dir.path().to_owned()),
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let router = router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        KubernetesStandIn {
            shared,
            url,
            task,
            _work_dir: work_dir,
        }
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes a kubeconfig for this API server (context `stand-in`, the admin token) into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        self.write_kubeconfig_with_token(dir, rbac::ADMIN_TOKEN)
    }

    /// Says what `name` stands for when a pod uses it as its image.
    pub fn map_image(&self, name: &str, image: Image) {
        self.shared.lock().images.insert(name.to_owned(), image);
    }

    /// Adds a Fargate profile with one selector.
    pub fn add_fargate_profile(&self, name: &str, namespace: &str, labels: &[(&str, &str)]) {
        self.shared.lock().profiles.push(FargateProfile {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
    }

    /// Injects a failure into the running pod `namespace/name`; false if it is not running.
    pub fn inject(&self, namespace: &str, name: &str, injection: Injection) -> bool {
        let uid = match self.object("Pod", namespace, name) {
            Some(pod) => pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            None => return false,
        };
        let mut inner = self.shared.lock();
        let Some(runtime) = inner.runtimes.get_mut(&uid) else {
            return false;
        };
        match injection {
            Injection::OomKill { container } => {
                let Some(pid) = runtime.pids.get(&container).copied() else {
                    return false;
                };
                runtime.oom_killed.push(container);
                signal(pid, rustix::process::Signal::KILL);
            }
            Injection::Evict => {
                runtime.stopped = Some((
                    "Evicted".into(),
                    "The node was low on resource: memory.".into(),
                ));
                for pid in runtime.pids.values() {
                    signal(*pid, rustix::process::Signal::KILL);
                }
                runtime.stop.notify_waiters();
            }
        }
        true
    }

    /// Makes Fargate nodes take `boot` to start after their pod is scheduled (real ones take
    /// tens of seconds; none by default).
    pub fn set_fargate_boot(&self, boot: Duration) {
        self.shared.lock().fargate_boot = boot;
    }

    /// Makes every request but watches wait `delay` before it is handled, as calls to a
    /// distant API server take their round trip (an EKS endpoint is some milliseconds to tens
    /// of them away; none by default). Not a behaviour of the API server: a test's knob.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.shared.lock().answer_delay = delay;
    }

    /// Makes the next `method` request whose path contains `path_contains` suffer `fault`
    /// (faults queue up and are used once each).
    pub fn fault(&self, method: &str, path_contains: &str, fault: ConnectionFault) {
        self.shared.lock().faults.push(QueuedFault {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            fault,
        });
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.shared.lock().requests.clone()
    }

    /// The stored object of `kind` (`Pod`, `Secret`, `Event`), if it exists.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = Kind::from_resource(&format!("{}s", kind.to_lowercase()))?;
        self.shared
            .lock()
            .objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of `kind` (`Pod`, `Secret`, `Event`) in every namespace.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let Some(kind) = Kind::from_resource(&format!("{}s", kind.to_lowercase())) else {
            return Vec::new();
        };
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// When `container` of pod `namespace/name` started running (kept after the pod is gone).
    pub fn container_started(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
    ) -> Option<std::time::SystemTime> {
        self.shared
            .lock()
            .started
            .get(&(namespace.to_owned(), name.to_owned(), container.to_owned()))
            .copied()
    }

    /// The combined output of `container` of pod `namespace/name`.
    pub fn logs(&self, namespace: &str, name: &str, container: &str) -> String {
        std::fs::read_to_string(log_path(&self.shared, namespace, name, container))
            .unwrap_or_default()
    }
}
