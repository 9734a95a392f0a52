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
//! Containers run as their image's USER or security context, Secret files are owned as the
//! kubelet makes them (module `identity`). OOM kills and evictions can be injected, and
//! `activeDeadlineSeconds` is enforced.
//! In benchmark mode the kubelet runs no process and reports the containers as they would
//! be (module `simulated_kubelet`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast};

mod admission;
mod discovery;
mod eviction;
mod fargate_capacity;
mod identity;
mod images;
mod kubelet_snapshot;
mod leases;
mod namespaces;
mod pdb;
mod plain_list;
mod rbac;
mod simulated_kubelet;
pub mod validation;
mod watch_history;

pub use fargate_capacity::CAPACITY_UNAVAILABLE;
pub use kubelet_snapshot::Snapshot;
pub use rbac::Authorization;
pub use simulated_kubelet::SimulatedContainers;
pub use watch_history::WatchOutage;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Pod,
    Secret,
    Event,
    /// Cluster-scoped: stored under the namespace `""` (module `namespaces`).
    Namespace,
    /// `policy/v1`, served by module `pdb` only.
    PodDisruptionBudget,
}

impl Kind {
    fn from_resource(resource: &str) -> Option<Kind> {
        match resource {
            "pods" => Some(Kind::Pod),
            "secrets" => Some(Kind::Secret),
            "events" => Some(Kind::Event),
            "namespaces" => Some(Kind::Namespace),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
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
struct Change {
    resource_version: u64,
    kind: Kind,
    namespace: String,
    kind_of_change: &'static str,
    object: Value,
}

/// Runtime handles of one pod on the kubelet.
#[derive(Default)]
struct PodRuntime {
    /// Host PIDs of running containers, by container name.
    pids: HashMap<String, u32>,
    /// Containers killed by an injected OOM.
    oom_killed: Vec<String>,
    /// Why the kubelet stopped the pod (eviction, deadline), if it did.
    stopped: Option<(String, String)>,
    /// Woken when the pod is deleted or stopped.
    stop: Arc<Notify>,
    /// Containers the benchmark kubelet reports running (module `simulated_kubelet`).
    simulated_running: usize,
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

/// A queued connection fault for the next request with this method and path part.
#[derive(Clone, Debug)]
struct QueuedFault {
    method: String,
    path_contains: String,
    fault: ConnectionFault,
}

#[derive(Default)]
struct Inner {
    faults: Vec<QueuedFault>,
    /// How long a Fargate node takes to start after the pod is scheduled.
    fargate_boot: Duration,
    resource_version: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<Change>,
    images: HashMap<String, Image>,
    profiles: Vec<FargateProfile>,
    ec2_nodes: usize,
    ec2_cpu_millis: f64,
    /// EC2 node index and CPU millis of each scheduled pod, by uid.
    ec2_used: HashMap<String, (usize, f64)>,
    next_ip: u32,
    requests: Vec<ApiRequest>,
    runtimes: HashMap<String, PodRuntime>,
    /// When each container started running, by (namespace, pod, container).
    started: HashMap<(String, String, String), std::time::SystemTime>,
    uid_counter: u64,
    /// The USER (uid, gid) of images that declare one.
    image_users: HashMap<String, (i64, i64)>,
    /// Whether NamespaceLifecycle admission is on (module `namespaces`).
    namespace_lifecycle: namespaces::Lifecycle,
    /// Namespace labels (PodSecurity admission reads them).
    namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// The message of an injected Fargate capacity shortage, while it lasts.
    fargate_capacity_shortage: Option<String>,
    /// The watch history's window and watch outages.
    watch_history: watch_history::WatchHistory,
    /// Tokens, RBAC objects and authorisation decisions.
    rbac: rbac::Rbac,
    /// The kubelet's snapshot delay, downward-API refresh period and snapshots taken.
    kubelet: kubelet_snapshot::KubeletSettings,
    /// The benchmark kubelet's containers, when it replaces the process kubelet.
    simulated: Option<SimulatedContainers>,
    /// Leases by (namespace, name) (module `leases`).
    leases: BTreeMap<(String, String), Value>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Change>,
    work_dir: Arc<PathBuf>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
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

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(discovery::api))
        .route("/apis", get(discovery::apis))
        .route("/api/v1", get(discovery::core_v1))
        .route("/apis/{group}/{version}", get(discovery::group_version))
        .route("/api/v1/{resource}", get(list_or_watch_all))
        .route(
            "/api/v1/namespaces",
            get(list_or_watch_all_namespaces).post(namespaces::create),
        )
        .route(
            "/api/v1/namespaces/{name}",
            get(namespaces::read)
                .delete(namespaces::delete)
                .patch(namespaces::patch),
        )
        .route(
            "/api/v1/namespaces/{namespace}/{resource}",
            get(list_or_watch).post(create),
        )
        .route(
            "/api/v1/namespaces/{namespace}/{resource}/{name}",
            get(read).delete(delete).patch(patch).put(replace),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/log",
            get(pod_log),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            get(pod_exec),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/eviction",
            axum::routing::post(eviction::evict),
        )
        .merge(leases::routes())
        .merge(pdb::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            rbac::filter,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            connection_faults,
        ))
        .with_state(shared)
}

/// Carries out queued [`ConnectionFault`]s: the connection's task unwinds, so the client sees
/// the connection close without an answer.
async fn connection_faults(
    State(shared): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let fault = {
        let mut inner = shared.lock();
        let method = request.method().as_str();
        let path = request.uri().path();
        let found = inner
            .faults
            .iter()
            .position(|f| f.method == method && path.contains(&f.path_contains));
        found.map(|i| inner.faults.remove(i).fault)
    };
    let drop_connection =
        || -> ! { std::panic::resume_unwind(Box::new("injected connection fault")) };
    match fault {
        Some(ConnectionFault::DropBeforeHandling) => drop_connection(),
        Some(ConnectionFault::DropAfterHandling) => {
            let _ = next.run(request).await;
            drop_connection()
        }
        Some(ConnectionFault::EtcdTimeout) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcdserver: request timed out",
        ),
        None => next.run(request).await,
    }
}

fn record(shared: &Shared, method: &Method, uri: &Uri) {
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    shared.lock().requests.push(ApiRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        watch,
    });
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// Records the request and resolves the resource it names, or answers 404.
fn accept(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    resource: &str,
) -> Result<Kind, Box<Response>> {
    record(shared, method, uri);
    // Namespaces are cluster-scoped: `/api/v1/namespaces/{ns}/namespaces` does not exist.
    let namespaced_path = uri.path().starts_with("/api/v1/namespaces/");
    Kind::from_resource(resource)
        .filter(|kind| !(namespaced_path && *kind == Kind::Namespace))
        .ok_or_else(|| {
            Box::new(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ))
        })
}

/// A JSON request body, or a 400 answer.
fn json_body(body: &[u8]) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("invalid JSON: {e}"),
        ))
    })
}

fn not_found(kind: Kind, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", kind.name().to_lowercase()),
    )
}

async fn version(State(shared): State<Shared>, method: Method, uri: Uri) -> Response {
    record(&shared, &method, &uri);
    axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-eks-stand-in", "platform": "linux/amd64"})).into_response()
}

fn now() -> String {
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
fn commit(
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

async fn create(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let mut object = match json_body(&body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    // The typed model is the schema.
    let typed = match kind {
        Kind::Pod => serde_json::from_value::<Pod>(object.clone()).map(|_| ()),
        Kind::Secret => serde_json::from_value::<Secret>(object.clone()).map(|_| ()),
        Kind::Event => {
            serde_json::from_value::<k8s_openapi::api::core::v1::Event>(object.clone()).map(|_| ())
        }
        Kind::Namespace => {
            serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(object.clone())
                .map(|_| ())
        }
        Kind::PodDisruptionBudget => serde_json::from_value::<
            k8s_openapi::api::policy::v1::PodDisruptionBudget,
        >(object.clone())
        .map(|_| ()),
    };
    if let Err(e) = typed {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("{} is invalid: {e}", kind.name()),
        );
    }
    if object["metadata"]["namespace"]
        .as_str()
        .is_some_and(|n| n != namespace)
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the object does not match the namespace of the request",
        );
    }
    let mut inner = shared.lock();
    let name = match object["metadata"]["name"].as_str() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                inner.uid_counter += 1;
                format!("{prefix}{:05x}", inner.uid_counter * 7919 % 0xfffff)
            }
            None => {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    &format!("{}: metadata.name: Required value", kind.name()),
                );
            }
        },
    };
    // Mutating admission (NamespaceLifecycle among it) runs before validation.
    if let Some(refused) = namespaces::admit(&inner, &namespace, &resource, &name) {
        return refused;
    }
    if !valid_name(&name) {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "{} \"{name}\" is invalid: metadata.name: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                kind.name()
            ),
        );
    }
    if let Err(rejection) = validation::admit(kind.name(), &name, &object) {
        return (rejection.code, axum::Json(rejection.body)).into_response();
    }
    if kind == Kind::Pod
        && let Some(refused) = admission::admit(&inner, &namespace, &name, &object)
    {
        return refused;
    }
    if inner
        .objects
        .contains_key(&(kind, namespace.clone(), name.clone()))
    {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", kind.name().to_lowercase()),
        );
    }
    inner.uid_counter += 1;
    let uid = format!("00000000-0000-4000-8000-{:012x}", inner.uid_counter);
    object["apiVersion"] = json!("v1");
    object["kind"] = json!(kind.name());
    object["metadata"]["name"] = json!(name);
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(uid);
    object["metadata"]["creationTimestamp"] = json!(now());
    if kind == Kind::Pod {
        if object["spec"]["restartPolicy"].is_null() {
            object["spec"]["restartPolicy"] = json!("Always");
        }
        if object["spec"]["schedulerName"].is_null() {
            object["spec"]["schedulerName"] = json!("default-scheduler");
        }
        object["status"] = json!({"phase": "Pending", "qosClass": qos_class(&object)});
        // The Fargate admission webhook.
        if let Some(profile) = fargate_profile(&inner.profiles, &namespace, &object) {
            object["spec"]["schedulerName"] = json!("fargate-scheduler");
            object["metadata"]["labels"]["eks.amazonaws.com/fargate-profile"] = json!(profile);
        }
    }
    let stored = commit(&shared, &mut inner, kind, &namespace, "ADDED", object);
    drop(inner);
    if kind == Kind::Pod {
        tokio::spawn(run_pod(
            shared.clone(),
            namespace.clone(),
            name.clone(),
            uid,
        ));
    }
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn qos_class(pod: &Value) -> &'static str {
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let any = containers
        .iter()
        .any(|c| !c["resources"]["requests"].is_null() || !c["resources"]["limits"].is_null());
    if any { "Burstable" } else { "BestEffort" }
}

fn wildcard(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// The profile (first by name) whose selector matches the pod, unless the pod asks for EC2.
fn fargate_profile(profiles: &[FargateProfile], namespace: &str, pod: &Value) -> Option<String> {
    if pod["metadata"]["annotations"]["eks.amazonaws.com/compute-type"].as_str() == Some("ec2") {
        return None;
    }
    let labels = pod["metadata"]["labels"].as_object();
    let mut matching: Vec<&FargateProfile> = profiles
        .iter()
        .filter(|p| {
            wildcard(&p.namespace, namespace)
                && p.labels.iter().all(|(k, v)| {
                    labels.is_some_and(|l| {
                        l.iter().any(|(lk, lv)| {
                            wildcard(k, lk) && lv.as_str().is_some_and(|lv| wildcard(v, lv))
                        })
                    })
                })
        })
        .collect();
    matching.sort_by(|a, b| a.name.cmp(&b.name));
    matching.first().map(|p| p.name.clone())
}

#[derive(serde::Deserialize)]
struct ListQuery {
    watch: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
    #[serde(rename = "fieldSelector")]
    field_selector: Option<String>,
    #[serde(rename = "allowWatchBookmarks")]
    allow_watch_bookmarks: Option<String>,
    #[serde(rename = "timeoutSeconds")]
    timeout_seconds: Option<u64>,
    #[serde(rename = "sendInitialEvents")]
    send_initial_events: Option<String>,
}

async fn list_or_watch_all(
    state: State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath(resource): UrlPath<String>,
    query: Query<ListQuery>,
) -> Response {
    list_or_watch_in(state, method, uri, None, resource, query).await
}

async fn list_or_watch_all_namespaces(
    state: State<Shared>,
    method: Method,
    uri: Uri,
    query: Query<ListQuery>,
) -> Response {
    list_or_watch_in(state, method, uri, None, "namespaces".into(), query).await
}

async fn list_or_watch(
    state: State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource)): UrlPath<(String, String)>,
    query: Query<ListQuery>,
) -> Response {
    list_or_watch_in(state, method, uri, Some(namespace), resource, query).await
}

/// A parsed label or field selector: every requirement must hold.
struct Selector(Vec<(String, Requirement)>);

enum Requirement {
    Equals(String),
    NotEquals(String),
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
}

impl Selector {
    fn parse(text: Option<&str>) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        let text = text.unwrap_or_default();
        // Split on commas outside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let rest = rest.trim();
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("unable to parse requirement: {part}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
            };
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                (
                    k.trim().to_owned(),
                    Requirement::NotEquals(v.trim().to_owned()),
                )
            } else if let Some((k, v)) = part.split_once("==") {
                (
                    k.trim().to_owned(),
                    Requirement::Equals(v.trim().to_owned()),
                )
            } else if let Some((k, v)) = part.split_once('=') {
                (
                    k.trim().to_owned(),
                    Requirement::Equals(v.trim().to_owned()),
                )
            } else if let Some((k, v)) = part.split_once(" notin ") {
                (k.trim().to_owned(), Requirement::NotIn(set(v)?))
            } else if let Some((k, v)) = part.split_once(" in ") {
                (k.trim().to_owned(), Requirement::In(set(v)?))
            } else if let Some(k) = part.strip_prefix('!') {
                (k.trim().to_owned(), Requirement::NotExists)
            } else {
                (part.to_owned(), Requirement::Exists)
            };
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|(key, requirement)| {
            let value = lookup(key);
            match requirement {
                Requirement::Equals(v) => value.as_deref() == Some(v.as_str()),
                Requirement::NotEquals(v) => value.as_deref() != Some(v.as_str()),
                Requirement::Exists => value.is_some(),
                Requirement::NotExists => value.is_none(),
                Requirement::In(set) => value.is_some_and(|v| set.contains(&v)),
                Requirement::NotIn(set) => value.is_none_or(|v| !set.contains(&v)),
            }
        })
    }
}

struct Filter {
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn matches(&self, namespace: &str, object: &Value) -> bool {
        if self.namespace.as_deref().is_some_and(|n| n != namespace) {
            return false;
        }
        self.labels.matches(|key| {
            object["metadata"]["labels"][key]
                .as_str()
                .map(str::to_owned)
        }) && self.fields.matches(|path| {
            let mut value = object;
            for part in path.split('.') {
                value = &value[part];
            }
            match value {
                Value::String(s) => Some(s.clone()),
                Value::Null => Some(String::new()),
                other => Some(other.to_string()),
            }
        })
    }
}

async fn list_or_watch_in(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    namespace: Option<String>,
    resource: String,
    Query(query): Query<ListQuery>,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let filter = match (
        Selector::parse(query.label_selector.as_deref()),
        Selector::parse(query.field_selector.as_deref()),
    ) {
        (Ok(labels), Ok(fields)) => Filter {
            namespace,
            labels,
            fields,
        },
        (Err(e), _) | (_, Err(e)) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let watch = matches!(query.watch.as_deref(), Some("true" | "1"));
    if !watch {
        let inner = shared.lock();
        let items: Vec<Value> = inner
            .objects
            .iter()
            .filter(|((k, ns, _), v)| *k == kind && filter.matches(ns, v))
            .map(|(_, v)| v.clone())
            .collect();
        return axum::Json(json!({
            "kind": format!("{}List", kind.name()), "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.resource_version.to_string()},
            "items": items,
        }))
        .into_response();
    }
    let bookmarks = matches!(query.allow_watch_bookmarks.as_deref(), Some("true" | "1"));
    let timeout = Duration::from_secs(query.timeout_seconds.unwrap_or(1800));
    // A watch list (`sendInitialEvents=true`, KEP-3157, `staging/src/k8s.io/apiserver/pkg/
    // storage/cacher/cacher.go`): the current objects as ADDED, then a bookmark annotated
    // `k8s.io/initial-events-end`, then the changes; the resource version is a lower bound
    // (`resourceVersionMatch=NotOlderThan`) and the stand-in's state is always the newest.
    let initial_events = matches!(query.send_initial_events.as_deref(), Some("true"));
    let since: Option<u64> = query
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0" && !initial_events)
        .and_then(|rv| rv.parse().ok());
    if let Some(refused) = watch_history::refuse(&shared, since) {
        return refused;
    }
    let mut ended = watch_history::ended(&shared);
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(256);
    let (mut changes, backlog, current) = {
        let inner = shared.lock();
        let changes = shared.changes.subscribe();
        let backlog: Vec<Value> = match since {
            Some(since) => inner
                .history
                .iter()
                .filter(|c| {
                    c.resource_version > since
                        && c.kind == kind
                        && filter.matches(&c.namespace, &c.object)
                })
                .map(|c| json!({"type": c.kind_of_change, "object": c.object}))
                .collect(),
            None => inner
                .objects
                .iter()
                .filter(|((k, ns, _), v)| *k == kind && filter.matches(ns, v))
                .map(|(_, v)| json!({"type": "ADDED", "object": v}))
                .collect(),
        };
        let mut backlog = backlog;
        if initial_events {
            backlog.push(json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": "v1", "metadata": {
                "resourceVersion": inner.resource_version.to_string(),
                "annotations": {"k8s.io/initial-events-end": "true"}}}}));
        }
        (changes, backlog, inner.resource_version)
    };
    let shared_for_task = shared.clone();
    tokio::spawn(async move {
        let line = |value: &Value| {
            let mut bytes = serde_json::to_vec(value).unwrap_or_default();
            bytes.push(b'\n');
            Bytes::from(bytes)
        };
        for event in backlog {
            if sender.send(line(&event)).await.is_err() {
                return;
            }
        }
        let mut last = current.max(since.unwrap_or(0));
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        loop {
            tokio::select! {
                () = &mut deadline => return,
                _ = ended.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = shared_for_task.lock().resource_version.max(last);
                    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}});
                    if sender.send(line(&bookmark)).await.is_err() { return; }
                }
                change = changes.recv() => match change {
                    Ok(change) => {
                        if change.resource_version <= last { continue; }
                        last = change.resource_version;
                        if change.kind == kind && filter.matches(&change.namespace, &change.object) {
                            let event = json!({"type": change.kind_of_change, "object": change.object});
                            if sender.send(line(&event)).await.is_err() { return; }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version"}});
                        let _ = sender.send(line(&gone)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|item| item.map(Ok::<Bytes, std::convert::Infallible>))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn read(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource, name)): UrlPath<(String, String, String)>,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    match shared.lock().objects.get(&(kind, namespace, name.clone())) {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => not_found(kind, &name),
    }
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    if let Some(map) = target.as_object_mut() {
                        map.remove(key);
                    }
                } else {
                    merge_patch(&mut target[key], value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

async fn patch(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    UrlPath((namespace, resource, name)): UrlPath<(String, String, String)>,
    body: Bytes,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !matches!(
        content_type,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the stand-in accepts merge patches only, not {content_type:?}"),
        );
    }
    let patch = match json_body(&body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    let mut inner = shared.lock();
    let Some(mut object) = inner
        .objects
        .get(&(kind, namespace.clone(), name.clone()))
        .cloned()
    else {
        return not_found(kind, &name);
    };
    let identity = (
        object["metadata"]["uid"].clone(),
        object["metadata"]["name"].clone(),
    );
    merge_patch(&mut object, &patch);
    object["metadata"]["uid"] = identity.0;
    object["metadata"]["name"] = identity.1;
    let stored = commit(&shared, &mut inner, kind, &namespace, "MODIFIED", object);
    axum::Json(stored).into_response()
}

async fn replace(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource, name)): UrlPath<(String, String, String)>,
    body: Bytes,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let mut object = match json_body(&body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    let mut inner = shared.lock();
    let Some(current) = inner
        .objects
        .get(&(kind, namespace.clone(), name.clone()))
        .cloned()
    else {
        return not_found(kind, &name);
    };
    if let Some(rv) = object["metadata"]["resourceVersion"].as_str()
        && Some(rv) != current["metadata"]["resourceVersion"].as_str()
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    for key in ["uid", "name", "namespace", "creationTimestamp"] {
        object["metadata"][key] = current["metadata"][key].clone();
    }
    object["apiVersion"] = json!("v1");
    object["kind"] = json!(kind.name());
    if kind == Kind::Pod {
        object["spec"] = current["spec"].clone();
        object["status"] = current["status"].clone();
    }
    let stored = commit(&shared, &mut inner, kind, &namespace, "MODIFIED", object);
    axum::Json(stored).into_response()
}

#[derive(serde::Deserialize, Default)]
struct DeleteQuery {
    #[serde(rename = "gracePeriodSeconds")]
    grace_period_seconds: Option<i64>,
}

async fn delete(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, resource, name)): UrlPath<(String, String, String)>,
    Query(query): Query<DeleteQuery>,
    body: Bytes,
) -> Response {
    let kind = match accept(&shared, &method, &uri, &resource) {
        Ok(kind) => kind,
        Err(response) => return *response,
    };
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let grace = options["gracePeriodSeconds"]
        .as_i64()
        .or(query.grace_period_seconds);
    let mut inner = shared.lock();
    let Some(mut object) = inner
        .objects
        .get(&(kind, namespace.clone(), name.clone()))
        .cloned()
    else {
        return not_found(kind, &name);
    };
    let uid = object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let running = kind == Kind::Pod
        && inner
            .runtimes
            .get(&uid)
            .is_some_and(|r| !r.pids.is_empty() || r.simulated_running > 0);
    if running {
        let grace = grace
            .or(object["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0);
        if object["metadata"]["deletionTimestamp"].is_null() {
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let stored = commit(&shared, &mut inner, kind, &namespace, "MODIFIED", object);
            if let Some(runtime) = inner.runtimes.get(&uid) {
                runtime.stop.notify_waiters();
                let pids: Vec<u32> = runtime.pids.values().copied().collect();
                tokio::spawn(async move {
                    for pid in &pids {
                        signal(*pid, rustix::process::Signal::TERM);
                    }
                    tokio::time::sleep(Duration::from_secs(grace as u64)).await;
                    for pid in &pids {
                        signal(*pid, rustix::process::Signal::KILL);
                    }
                });
            }
            return axum::Json(stored).into_response();
        }
        return axum::Json(object).into_response();
    }
    remove(&shared, &mut inner, kind, &namespace, object.clone());
    axum::Json(object).into_response()
}

/// Removes an object and, by Background propagation, everything it owns.
fn remove(shared: &Shared, inner: &mut Inner, kind: Kind, namespace: &str, object: Value) {
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

async fn pod_log(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    record(&shared, &method, &uri);
    let Some(pod) = shared
        .lock()
        .objects
        .get(&(Kind::Pod, namespace.clone(), name.clone()))
        .cloned()
    else {
        return not_found(Kind::Pod, &name);
    };
    let container = match query.get("container") {
        Some(c) => c.clone(),
        None => pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let text = std::fs::read(log_path(&shared, &namespace, &name, &container)).unwrap_or_default();
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from(text))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `exec` over WebSocket (`v5.channel.k8s.io`, also `v4`): runs the command inside the
/// container's namespaces with `nsenter`. Frames carry a channel byte: 0 stdin, 1 stdout,
/// 2 stderr, 3 the final Status (JSON), and in v5 255 closes a channel (`[255, 0]`: stdin).
async fn pod_exec(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    record(&shared, &method, &uri);
    let mut command = Vec::new();
    let mut container = None;
    let mut stdin = false;
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "command" => command.push(value.into_owned()),
            "container" => container = Some(value.into_owned()),
            "stdin" => stdin = value == "true" || value == "1",
            _ => {}
        }
    }
    if command.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    let (pod, pids) = {
        let inner = shared.lock();
        let Some(pod) = inner
            .objects
            .get(&(Kind::Pod, namespace.clone(), name.clone()))
            .cloned()
        else {
            return not_found(Kind::Pod, &name);
        };
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let pids = inner
            .runtimes
            .get(&uid)
            .map(|r| r.pids.clone())
            .unwrap_or_default();
        (pod, pids)
    };
    let container = container.unwrap_or_else(|| {
        pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    // The kubelet knows the host PID of the container's PID 1 (or of its bubblewrap).
    let target = pids.get(&container).and_then(|pid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if comm.trim() != "bwrap" {
            return Some(*pid);
        }
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse::<u32>()
            .ok()
    });
    let Some(target) = target else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("container {container} is not running"),
        );
    };
    let v5 = upgrade
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == b"v5.channel.k8s.io");
    upgrade
        .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| exec_session(socket, target, command, stdin, v5))
}

/// A WebSocket message on `channel` of the exec protocol.
fn frame(channel: u8, bytes: &[u8]) -> axum::extract::ws::Message {
    axum::extract::ws::Message::Binary([&[channel][..], bytes].concat().into())
}

async fn exec_session(
    socket: axum::extract::ws::WebSocket,
    target: u32,
    command: Vec<String>,
    stdin: bool,
    v5: bool,
) {
    use axum::extract::ws::Message;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sender, mut receiver) = socket.split();
    let child = tokio::process::Command::new("nsenter")
        .arg(format!("--target={target}"))
        .args(["--mount", "--uts", "--ipc", "--pid", "--root", "--wd", "--"])
        .args(&command)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(if stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            let failure = json!({"metadata": {}, "status": "Failure", "message": format!("cannot run nsenter: {e}")});
            let _ = sender.send(frame(3, failure.to_string().as_bytes())).await;
            return;
        }
    };
    let mut input = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (mut out_buf, mut err_buf) = ([0u8; 8192], [0u8; 8192]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            read = stdout.read(&mut out_buf), if out_open => match read {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => { let _ = sender.send(frame(1, &out_buf[..n])).await; }
            },
            read = stderr.read(&mut err_buf), if err_open => match read {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => { let _ = sender.send(frame(2, &err_buf[..n])).await; }
            },
            message = receiver.next() => match message {
                Some(Ok(Message::Binary(bytes))) => match bytes.first() {
                    Some(0) => if let Some(pipe) = input.as_mut() { let _ = pipe.write_all(&bytes[1..]).await; },
                    Some(255) if v5 && bytes.get(1) == Some(&0) => input = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { let _ = child.start_kill(); }
                Some(Ok(_)) => {}
            },
        }
    }
    let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
    let result = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    let _ = sender.send(frame(3, result.to_string().as_bytes())).await;
    // A normal close (1000), as the API server's websocket streams end (golang.org/x/net
    // websocket's Close, under `staging/src/k8s.io/apimachinery/pkg/util/httpstream/wsstream`).
    let _ = sender
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

fn log_path(shared: &Shared, namespace: &str, pod: &str, container: &str) -> PathBuf {
    shared
        .work_dir
        .join("logs")
        .join(format!("{namespace}_{pod}_{container}.log"))
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Kubernetes quantities as floating point, enough for scheduling and sizing.
fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0f64.powi(4)),
        ("Pi", 1024.0f64.powi(5)),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("Ei", 1024.0f64.powi(6)),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    text.parse().ok()
}

/// The pod's effective request of `resource` (max over init containers vs sum of containers).
fn pod_request(pod: &Pod, resource: &str) -> f64 {
    let get = |c: &Container| {
        c.resources
            .as_ref()
            .and_then(|r| {
                r.requests
                    .as_ref()
                    .and_then(|m| m.get(resource))
                    .or(r.limits.as_ref().and_then(|m| m.get(resource)))
            })
            .and_then(|q| quantity(&q.0))
            .unwrap_or(0.0)
    };
    let spec = pod.spec.as_ref();
    let sum: f64 = spec
        .map(|s| s.containers.iter().map(get).sum())
        .unwrap_or(0.0);
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|cs| cs.iter().map(get).fold(0.0, f64::max))
        .unwrap_or(0.0);
    sum.max(init)
}

/// Fargate's size for requests of `cpu` cores and `memory` bytes, as `CapacityProvisioned`.
fn fargate_size(cpu: f64, memory: f64) -> Option<String> {
    let memory_gb = memory / (1024.0 * 1024.0 * 1024.0) + 0.25;
    let sizes: [(f64, Vec<f64>); 7] = [
        (0.25, vec![0.5, 1.0, 2.0]),
        (0.5, vec![1.0, 2.0, 3.0, 4.0]),
        (1.0, (2..=8).map(f64::from).collect()),
        (2.0, (4..=16).map(f64::from).collect()),
        (4.0, (8..=30).map(f64::from).collect()),
        (8.0, (16..=60).step_by(4).map(f64::from).collect()),
        (16.0, (32..=120).step_by(8).map(f64::from).collect()),
    ];
    for (vcpu, memories) in sizes {
        if vcpu + 1e-9 < cpu {
            continue;
        }
        if let Some(gb) = memories.into_iter().find(|gb| *gb + 1e-9 >= memory_gb) {
            return Some(format!("{vcpu}vCPU {gb}GB"));
        }
    }
    None
}

/// Why Fargate refuses this pod, if it does.
fn fargate_unsupported(pod: &Pod) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return problems;
    };
    if spec.host_network == Some(true) {
        problems.push("fields not supported: HostNetwork".to_owned());
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            problems.push(format!("volumes not supported: {}", volume.name));
        }
    }
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for container in all {
        let Some(security) = container.security_context.as_ref() else {
            continue;
        };
        if security.privileged == Some(true) {
            problems.push("invalid SecurityContext fields: Privileged".to_owned());
        }
        if let Some(added) = security.capabilities.as_ref().and_then(|c| c.add.as_ref())
            && !added.is_empty()
        {
            problems.push(format!(
                "invalid SecurityContext fields: Capabilities added: {}",
                added
                    .iter()
                    .map(|c| format!("CAP_{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    problems
}

fn event(
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
fn update_pod(
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

fn pod_gone_or_deleting(shared: &Shared, namespace: &str, name: &str, uid: &str) -> bool {
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
async fn wait_until_gone(shared: &Shared, namespace: &str, name: &str, uid: &str, stop: &Notify) {
    while !pod_gone_or_deleting(shared, namespace, name, uid) {
        tokio::select! {
            () = stop.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Leaves the pod Pending: `PodScheduled` false with `reason`, and a FailedScheduling event
/// from the scheduler `source`.
fn failed_scheduling(
    shared: &Shared,
    (namespace, name, uid): (&str, &str, &str),
    stored: &Value,
    reason: &str,
    message: &str,
    source: &str,
) {
    update_pod(shared, namespace, name, uid, |p| {
        p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": reason, "message": message, "lastTransitionTime": now()}]);
    });
    event(
        shared,
        namespace,
        stored,
        "Warning",
        "FailedScheduling",
        message,
        source,
    );
}

/// Scheduler and kubelet for one pod, from creation to its end.
async fn run_pod(shared: Shared, namespace: String, name: String, uid: String) {
    let stop = Arc::new(Notify::new());
    shared.lock().runtimes.insert(
        uid.clone(),
        PodRuntime {
            stop: stop.clone(),
            ..PodRuntime::default()
        },
    );
    schedule_and_run(&shared, &namespace, &name, &uid, &stop).await;
    // A pod being deleted disappears once its containers are gone.
    let mut inner = shared.lock();
    inner.runtimes.remove(&uid);
    inner.ec2_used.remove(&uid);
    if let Some(pod) = inner
        .objects
        .get(&(Kind::Pod, namespace.clone(), name.clone()))
        .cloned()
        && pod["metadata"]["uid"].as_str() == Some(uid.as_str())
        && !pod["metadata"]["deletionTimestamp"].is_null()
    {
        remove(&shared, &mut inner, Kind::Pod, &namespace, pod);
    }
}

async fn schedule_and_run(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    stop: &Arc<Notify>,
) {
    let Some(stored) = shared
        .lock()
        .objects
        .get(&(Kind::Pod, namespace.to_owned(), name.to_owned()))
        .cloned()
    else {
        return;
    };
    let Ok(pod) = serde_json::from_value::<Pod>(stored.clone()) else {
        return;
    };
    let cpu = pod_request(&pod, "cpu");
    let memory = pod_request(&pod, "memory");
    let on_fargate = stored["spec"]["schedulerName"].as_str() == Some("fargate-scheduler");
    // Scheduling.
    if on_fargate {
        let mut problems = fargate_unsupported(&pod);
        let size = fargate_size(cpu, memory);
        if size.is_none() {
            problems.push(format!(
                "the pod's requests ({cpu} vCPU, {memory} bytes) exceed the largest Fargate size"
            ));
        }
        if !problems.is_empty() {
            let message = format!("Pod not supported on Fargate: {}", problems.join(", "));
            failed_scheduling(
                shared,
                (namespace, name, uid),
                &stored,
                "POD_UNSUPPORTED_ON_FARGATE",
                &message,
                "fargate-scheduler",
            );
            wait_until_gone(shared, namespace, name, uid, stop).await;
            return;
        }
        if !fargate_capacity::wait_for_capacity(shared, (namespace, name, uid), &stored, stop).await
        {
            return;
        }
        let ip = {
            let mut inner = shared.lock();
            inner.next_ip += 1;
            format!(
                "192-168-{}-{}",
                inner.next_ip / 250,
                inner.next_ip % 250 + 2
            )
        };
        let node = format!("fargate-ip-{ip}.us-east-1.compute.internal");
        let size = size.unwrap_or_default();
        update_pod(shared, namespace, name, uid, |p| {
            p["metadata"]["annotations"]["CapacityProvisioned"] = json!(size);
            p["spec"]["nodeName"] = json!(node);
            p["status"]["podIP"] = json!(ip.replace('-', "."));
            p["status"]["hostIP"] = json!(ip.replace('-', "."));
            p["status"]["conditions"] =
                json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]);
        });
        event(
            shared,
            namespace,
            &stored,
            "Normal",
            "Scheduled",
            &format!("Successfully assigned {namespace}/{name} to {node}"),
            "fargate-scheduler",
        );
        // The micro-VM boots before its kubelet runs anything.
        let boot = shared.lock().fargate_boot;
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(boot) => {}
        }
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            return;
        }
    } else {
        let mut warned = false;
        loop {
            let chosen = {
                let mut inner = shared.lock();
                let per_node = inner.ec2_cpu_millis;
                let mut used = vec![0.0; inner.ec2_nodes];
                for (index, millis) in inner.ec2_used.values() {
                    if let Some(slot) = used.get_mut(*index) {
                        *slot += millis;
                    }
                }
                let index = used
                    .iter()
                    .position(|u| u + cpu * 1000.0 <= per_node + 1e-6);
                if let Some(index) = index {
                    inner.ec2_used.insert(uid.to_owned(), (index, cpu * 1000.0));
                }
                index
            };
            if let Some(index) = chosen {
                let node = format!("ip-10-0-0-{}.ec2.internal", index + 10);
                update_pod(shared, namespace, name, uid, |p| {
                    p["spec"]["nodeName"] = json!(node);
                    p["status"]["podIP"] = json!(format!("10.0.1.{}", index + 10));
                    p["status"]["hostIP"] = json!(format!("10.0.0.{}", index + 10));
                    p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]);
                });
                event(
                    shared,
                    namespace,
                    &stored,
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {namespace}/{name} to {node}"),
                    "default-scheduler",
                );
                break;
            }
            if !warned {
                let nodes = shared.lock().ec2_nodes;
                let message = format!(
                    "0/{nodes} nodes are available: {nodes} Insufficient cpu. preemption: 0/{nodes} nodes are available: {nodes} No preemption victims found for incoming pod."
                );
                failed_scheduling(
                    shared,
                    (namespace, name, uid),
                    &stored,
                    "Unschedulable",
                    &message,
                    "default-scheduler",
                );
                warned = true;
            }
            tokio::select! {
                () = stop.notified() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if pod_gone_or_deleting(shared, namespace, name, uid) {
                return;
            }
        }
    };
    let simulated = shared.lock().simulated.clone();
    match simulated {
        Some(containers) => {
            simulated_kubelet::run(
                shared, namespace, name, uid, &pod, &stored, stop, containers,
            )
            .await
        }
        None => kubelet(shared, namespace, name, uid, &pod, &stored, stop).await,
    }
}

fn container_status(name: &str, image: &str, state: Value) -> Value {
    json!({"name": name, "image": image, "imageID": "", "ready": state.get("running").is_some(), "restartCount": 0, "started": state.get("running").is_some(), "state": state})
}

fn valid_image_name(image: &str) -> bool {
    !image.is_empty()
        && !image
            .chars()
            .any(|c| c.is_ascii_uppercase() || c.is_whitespace())
        && !image.starts_with(['/', ':', '.'])
}

async fn kubelet(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    pod: &Pod,
    stored: &Value,
    stop: &Arc<Notify>,
) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    let init_containers: Vec<Container> = spec.init_containers.clone().unwrap_or_default();
    let containers: Vec<Container> = spec.containers.clone();
    let started = tokio::time::Instant::now();
    let deadline = spec
        .active_deadline_seconds
        .map(|s| started + Duration::from_secs(s as u64));
    // Images.
    let images = shared.lock().images.clone();
    let mut pull_failures = Vec::new();
    for container in init_containers.iter().chain(containers.iter()) {
        let image = container.image.clone().unwrap_or_default();
        if !valid_image_name(&image) {
            pull_failures.push((container.name.clone(), image.clone(), "InvalidImageName", format!("Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format")));
            continue;
        }
        match images.get(&image) {
            Some(Image::PullFails(message)) => pull_failures.push((container.name.clone(), image.clone(), "ErrImagePull", message.clone())),
            None => pull_failures.push((container.name.clone(), image.clone(), "ErrImagePull", format!("failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": not found"))),
            Some(_) => {}
        }
    }
    if !pull_failures.is_empty() {
        let set = |reason: &'static str, failures: &[(String, String, &'static str, String)]| {
            let failures = failures.to_vec();
            let init_names: Vec<String> = init_containers.iter().map(|c| c.name.clone()).collect();
            move |p: &mut Value| {
                let status_of = |c: &Value| {
                    let cname = c["name"].as_str().unwrap_or_default();
                    let image = c["image"].as_str().unwrap_or_default();
                    let state = match failures.iter().find(|f| f.0 == cname) {
                        Some(f) if f.2 == "InvalidImageName" => {
                            json!({"waiting": {"reason": f.2, "message": f.3}})
                        }
                        Some(f) => {
                            json!({"waiting": {"reason": reason, "message": if reason == "ImagePullBackOff" { format!("Back-off pulling image \"{}\"", f.1) } else { f.3.clone() }}})
                        }
                        None => {
                            json!({"waiting": {"reason": if init_names.is_empty() { "ContainerCreating" } else { "PodInitializing" }}})
                        }
                    };
                    container_status(cname, image, state)
                };
                let init: Vec<Value> = p["spec"]["initContainers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(status_of)
                    .collect();
                let regular: Vec<Value> = p["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(status_of)
                    .collect();
                if !init.is_empty() {
                    p["status"]["initContainerStatuses"] = json!(init);
                }
                p["status"]["containerStatuses"] = json!(regular);
            }
        };
        update_pod(
            shared,
            namespace,
            name,
            uid,
            set("ErrImagePull", &pull_failures),
        );
        for failure in &pull_failures {
            event(
                shared,
                namespace,
                stored,
                "Warning",
                "Failed",
                &format!("Failed to pull image \"{}\": {}", failure.1, failure.3),
                "kubelet",
            );
        }
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        update_pod(
            shared,
            namespace,
            name,
            uid,
            set("ImagePullBackOff", &pull_failures),
        );
        event(
            shared,
            namespace,
            stored,
            "Normal",
            "BackOff",
            "Back-off pulling image",
            "kubelet",
        );
        wait_until_gone(shared, namespace, name, uid, stop).await;
        return;
    }
    let pod_dir = shared.work_dir.join("pods").join(uid);
    let _ = std::fs::create_dir_all(&pod_dir);
    let _ = std::fs::create_dir_all(shared.work_dir.join("logs"));
    // Like the kubelet, a volume that cannot be set up yet (a Secret created after the pod) is
    // retried until it can, with one FailedMount warning.
    let mut warned = false;
    let volumes = loop {
        match prepare_volumes(shared, namespace, name, spec, &pod_dir) {
            Ok(v) => break v,
            Err(message) => {
                if !warned {
                    event(
                        shared,
                        namespace,
                        stored,
                        "Warning",
                        "FailedMount",
                        &message,
                        "kubelet",
                    );
                    warned = true;
                }
                if pod_gone_or_deleting(shared, namespace, name, uid) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    kubelet_snapshot::refresh_downward_api(shared, namespace, name, uid, spec, &volumes);
    // /etc/hosts as the kubelet writes it: localhost, the pod's name, then hostAliases.
    let mut hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{name}\n");
    for alias in spec.host_aliases.iter().flatten() {
        hosts.push_str(&format!(
            "{}\t{}\n",
            alias.ip,
            alias.hostnames.clone().unwrap_or_default().join("\t")
        ));
    }
    let _ = std::fs::write(pod_dir.join("hosts"), hosts);
    // Init containers, in order.
    let init_names: Vec<String> = init_containers.iter().map(|c| c.name.clone()).collect();
    update_pod(shared, namespace, name, uid, |p| {
        if !init_names.is_empty() {
            p["status"]["initContainerStatuses"] = json!(
                init_containers
                    .iter()
                    .map(|c| container_status(
                        &c.name,
                        c.image.as_deref().unwrap_or_default(),
                        json!({"waiting": {"reason": "PodInitializing"}})
                    ))
                    .collect::<Vec<_>>()
            );
        }
        p["status"]["containerStatuses"] = json!(containers.iter().map(|c| container_status(&c.name, c.image.as_deref().unwrap_or_default(), json!({"waiting": {"reason": if init_names.is_empty() {"ContainerCreating"} else {"PodInitializing"}}}))).collect::<Vec<_>>());
        p["status"]["startTime"] = json!(now());
    });
    for (index, container) in init_containers.iter().enumerate() {
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            return;
        }
        let snapshot = kubelet_snapshot::take(shared, namespace, name, &container.name).await;
        let run = start_container(
            shared, namespace, name, container, &images, &volumes, &pod_dir, &snapshot,
        );
        let exit_code = match run {
            Ok(child) => {
                supervise(
                    shared, namespace, name, uid, container, child, true, index, deadline, stop,
                    &pod_dir,
                )
                .await
            }
            Err(_) => 128,
        };
        if exit_code != 0 {
            let reason = shared
                .lock()
                .runtimes
                .get(uid)
                .and_then(|r| r.stopped.clone());
            finish_pod(shared, namespace, name, uid, reason);
            return;
        }
    }
    // Containers, together; the pod is Running once one of them runs.
    let mut tasks = Vec::new();
    for (index, container) in containers.iter().enumerate() {
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            break;
        }
        let snapshot = kubelet_snapshot::take(shared, namespace, name, &container.name).await;
        if pod_gone_or_deleting(shared, namespace, name, uid) {
            break;
        }
        match start_container(
            shared, namespace, name, container, &images, &volumes, &pod_dir, &snapshot,
        ) {
            Ok(child) => {
                let shared = shared.clone();
                let (namespace, name, uid, container, stop, pod_dir) = (
                    namespace.to_owned(),
                    name.to_owned(),
                    uid.to_owned(),
                    container.clone(),
                    stop.clone(),
                    pod_dir.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    supervise(
                        &shared, &namespace, &name, &uid, &container, child, false, index,
                        deadline, &stop, &pod_dir,
                    )
                    .await
                }));
            }
            Err(message) => {
                let (cname, image) = (
                    container.name.clone(),
                    container.image.clone().unwrap_or_default(),
                );
                update_pod(shared, namespace, name, uid, |p| {
                    p["status"]["containerStatuses"][index] = container_status(
                        &cname,
                        &image,
                        json!({"waiting": {"reason": "CreateContainerError", "message": message}}),
                    );
                });
                event(
                    shared,
                    namespace,
                    stored,
                    "Warning",
                    "Failed",
                    &format!("Error: {message}"),
                    "kubelet",
                );
            }
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let reason = shared
        .lock()
        .runtimes
        .get(uid)
        .and_then(|r| r.stopped.clone());
    finish_pod(shared, namespace, name, uid, reason);
}

/// Sets the pod's final phase from its container states.
fn finish_pod(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    stopped: Option<(String, String)>,
) {
    update_pod(shared, namespace, name, uid, |p| {
        let statuses = p["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let init = p["status"]["initContainerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let failed = statuses.iter().chain(init.iter()).any(|s| {
            s["state"]["terminated"]["exitCode"]
                .as_i64()
                .is_some_and(|c| c != 0)
                || s["state"].get("waiting").is_some()
        });
        p["status"]["phase"] = json!(if failed || stopped.is_some() {
            "Failed"
        } else {
            "Succeeded"
        });
        if let Some((reason, message)) = &stopped {
            p["status"]["reason"] = json!(reason);
            p["status"]["message"] = json!(message);
        }
    });
}

/// Host directories behind the pod's volumes, by volume name.
fn prepare_volumes(
    shared: &Shared,
    namespace: &str,
    name: &str,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    pod_dir: &Path,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut volumes = HashMap::new();
    for volume in spec.volumes.iter().flatten() {
        let dir = pod_dir.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("volume {}: {e}", volume.name))?;
        if volume.empty_dir.is_some() {
            // Writable by any user, like the kubelet's emptyDir.
            let _ =
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777));
        } else if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.clone().unwrap_or_default();
            let secret = shared
                .lock()
                .objects
                .get(&(Kind::Secret, namespace.to_owned(), secret_name.clone()))
                .cloned();
            let Some(secret) = secret.and_then(|s| serde_json::from_value::<Secret>(s).ok()) else {
                return Err(format!(
                    "MountVolume.SetUp failed for volume \"{}\" : secret \"{secret_name}\" not found",
                    volume.name
                ));
            };
            let data = secret.data.unwrap_or_default();
            let items: Vec<(String, String)> = match &source.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            let mut files = Vec::new();
            for (key, path) in items {
                let Some(bytes) = data.get(&key) else {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume \"{}\" : references non-existent secret key: {key}",
                        volume.name
                    ));
                };
                std::fs::write(dir.join(&path), &bytes.0)
                    .map_err(|e| format!("volume {}: {e}", volume.name))?;
                files.push(dir.join(&path));
            }
            let mode = source.default_mode.unwrap_or(0o644) as u32;
            let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
            identity::own_secret_volume(&dir, &files, mode, fs_group)
                .map_err(|e| format!("volume {}: {e}", volume.name))?;
        } else if let Some(source) = &volume.downward_api {
            kubelet_snapshot::write_downward_api(
                shared,
                namespace,
                name,
                &volume.name,
                source,
                &dir,
            )?;
        } else {
            return Err(format!(
                "volume {}: the stand-in's kubelet mounts emptyDir, secret and downwardAPI volumes only",
                volume.name
            ));
        }
        volumes.insert(volume.name.clone(), dir);
    }
    Ok(volumes)
}

/// The downward API's value of `path` for `pod`: a missing label or annotation is empty.
fn field_value(pod: &Value, path: &str) -> Option<String> {
    let metadata = &pod["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match path {
        "metadata.name" | "metadata.namespace" | "metadata.uid" => {
            Some(text(&metadata[path.trim_start_matches("metadata.")]))
        }
        _ => {
            let (map, key) = path
                .strip_prefix("metadata.labels['")
                .map(|rest| ("labels", rest))
                .or_else(|| {
                    path.strip_prefix("metadata.annotations['")
                        .map(|rest| ("annotations", rest))
                })?;
            let key = key.strip_suffix("']")?;
            Some(text(&metadata[map][key]))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn start_container(
    shared: &Shared,
    namespace: &str,
    name: &str,
    container: &Container,
    images: &HashMap<String, Image>,
    volumes: &HashMap<String, PathBuf>,
    pod_dir: &Path,
    pod: &Value,
) -> Result<tokio::process::Child, String> {
    let image = images
        .get(container.image.as_deref().unwrap_or_default())
        .cloned()
        .ok_or("image vanished")?;
    let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
    argv.extend(container.args.clone().unwrap_or_default());
    if argv.is_empty() {
        return Err(format!(
            "container {}: no command specified (the stand-in's images have no entrypoint)",
            container.name
        ));
    }
    let mut command = identity::sandbox_for(shared, namespace, name, container);
    command.args([
        "--die-with-parent",
        "--unshare-pid",
        "--as-pid-1",
        "--unshare-ipc",
        "--unshare-uts",
    ]);
    // A pod's hostname is its name.
    command.args(["--hostname", name]);
    match &image {
        Image::HostRoot => {
            // A writable tmpfs root with the host's top-level entries bound read-only, so
            // mount points for volumes can be created anywhere at the top.
            command.args(["--tmpfs", "/"]);
            let entries = std::fs::read_dir("/").map_err(|e| format!("cannot list /: {e}"))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if matches!(name, "proc" | "dev" | "sys" | "tmp" | "run") {
                    continue;
                }
                let path = format!("/{name}");
                match std::fs::read_link(&path) {
                    Ok(target) => {
                        command.arg("--symlink").arg(target).arg(&path);
                    }
                    Err(_) => {
                        command.arg("--ro-bind").arg(&path).arg(&path);
                    }
                }
            }
            command.args(["--tmpfs", "/tmp"]);
        }
        Image::Files(files) => {
            command.args(["--tmpfs", "/"]);
            for (host, path) in files {
                command.arg("--ro-bind").arg(host).arg(path);
            }
            command.args(["--dir", "/tmp"]);
        }
        Image::PullFails(_) => return Err("image cannot be pulled".into()),
    }
    command.args(["--proc", "/proc", "--dev", "/dev"]);
    let hosts = pod_dir.join("hosts");
    if hosts.is_file() {
        command.arg("--ro-bind").arg(&hosts).arg("/etc/hosts");
    }
    for mount in container.volume_mounts.iter().flatten() {
        let Some(host) = volumes.get(&mount.name) else {
            return Err(format!(
                "container {}: volumeMount {} names no volume",
                container.name, mount.name
            ));
        };
        let flag = if mount.read_only == Some(true) {
            "--ro-bind"
        } else {
            "--bind"
        };
        command.arg(flag).arg(host).arg(&mount.mount_path);
    }
    let message_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    let message_file = pod_dir.join(format!("{}.termination-log", container.name));
    std::fs::write(&message_file, b"").map_err(|e| e.to_string())?;
    identity::termination_message_file(&message_file).map_err(|e| e.to_string())?;
    command.arg("--bind").arg(&message_file).arg(&message_path);
    if let Some(dir) = &container.working_dir {
        command.args(["--chdir", dir]);
    }
    command.arg("--").args(&argv);
    command.env_clear();
    command.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    command.env("HOSTNAME", name);
    command.env("KUBERNETES_SERVICE_HOST", "10.100.0.1");
    command.env("KUBERNETES_SERVICE_PORT", "443");
    // Like the kubelet, downward-API values are read once, from the pod as the kubelet had
    // it when it created the container (`kubelet_snapshot`).
    for var in container.env.iter().flatten() {
        match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let value = from
                    .field_ref
                    .as_ref()
                    .and_then(|field| field_value(pod, &field.field_path))
                    .ok_or_else(|| {
                        format!(
                            "container {}: env {}: the stand-in resolves only fieldRef to metadata.name, metadata.namespace, metadata.uid, metadata.labels['…'] and metadata.annotations['…']",
                            container.name, var.name
                        )
                    })?;
                command.env(&var.name, value);
            }
            (value, None) => {
                command.env(&var.name, value.clone().unwrap_or_default());
            }
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(shared, namespace, name, &container.name))
        .map_err(|e| e.to_string())?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    command
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    command.kill_on_drop(true);
    command
        .spawn()
        .map_err(|e| format!("cannot start bwrap: {e}"))
}

/// The host PID of bwrap's only child: the container's PID 1.
fn container_pid(bwrap: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{bwrap}/task/{bwrap}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    shared: &Shared,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &Container,
    mut child: tokio::process::Child,
    init: bool,
    index: usize,
    deadline: Option<tokio::time::Instant>,
    stop: &Arc<Notify>,
    pod_dir: &Path,
) -> i32 {
    let started_at = now();
    let image = container.image.clone().unwrap_or_default();
    let field = if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    // Wait until bwrap has started the container, so signals reach it.
    let bwrap = child.id().unwrap_or(0);
    let mut pid = None;
    for _ in 0..200 {
        pid = container_pid(bwrap);
        if pid.is_some() {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shared.lock().started.insert(
        (
            namespace.to_owned(),
            name.to_owned(),
            container.name.clone(),
        ),
        std::time::SystemTime::now(),
    );
    if let Some(pid) = pid {
        shared
            .lock()
            .runtimes
            .entry(uid.to_owned())
            .or_default()
            .pids
            .insert(container.name.clone(), pid);
    }
    let cname = container.name.clone();
    update_pod(shared, namespace, name, uid, |p| {
        p["status"][field][index] = container_status(
            &cname,
            &image,
            json!({"running": {"startedAt": started_at}}),
        );
        if !init {
            p["status"]["phase"] = json!("Running");
        }
    });
    let status = loop {
        let until_deadline =
            deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            status = child.wait() => break status.ok(),
            () = async { match until_deadline { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {
                {
                    let mut inner = shared.lock();
                    if let Some(runtime) = inner.runtimes.get_mut(uid) {
                        runtime.stopped.get_or_insert(("DeadlineExceeded".into(), "Pod was active on the node longer than the specified deadline".into()));
                        for pid in runtime.pids.values() {
                            signal(*pid, rustix::process::Signal::KILL);
                        }
                    }
                }
                break child.wait().await.ok();
            }
            () = stop.notified() => continue,
        }
    };
    let code = status.and_then(|s| s.code()).unwrap_or(137);
    let oom = {
        let mut inner = shared.lock();
        let runtime = inner.runtimes.entry(uid.to_owned()).or_default();
        runtime.pids.remove(&container.name);
        runtime.oom_killed.contains(&container.name)
    };
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let code = if oom { 137 } else { code };
    let mut message = std::fs::read(pod_dir.join(format!("{}.termination-log", container.name)))
        .unwrap_or_default();
    message.truncate(4096);
    let message = String::from_utf8_lossy(&message).into_owned();
    let finished_at = now();
    let cname = container.name.clone();
    update_pod(shared, namespace, name, uid, |p| {
        let mut terminated = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at});
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        p["status"][field][index] =
            container_status(&cname, &image, json!({"terminated": terminated}));
    });
    code
}
