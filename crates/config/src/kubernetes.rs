//! `[runners.kubernetes]`: every key of gitlab-runner's Kubernetes executor, with its
//! defaults, plus podrunner's `[runners.kubernetes.fargate]` extension.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::enums::{DnsPolicy, PatchType, PullPolicies};
use crate::fargate::FargateConfig;
use crate::pattern::ConfigRegex;
use crate::quantity::Quantity;
use crate::wildcard::Wildcard;

/// gitlab-runner's default `poll_interval`, in seconds.
pub const DEFAULT_POLL_INTERVAL_SECS: i64 = 3;
/// gitlab-runner's default `poll_timeout`, in seconds.
pub const DEFAULT_POLL_TIMEOUT_SECS: i64 = 180;
/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `[runners.kubernetes]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct KubernetesConfig {
    /// API server URL; empty means in-cluster, then kubeconfig.
    pub host: Option<String>,
    /// kubeconfig context when `host` is empty.
    pub context: Option<String>,
    /// Client certificate (needs `key_file` and `ca_file`).
    pub cert_file: Option<String>,
    /// Client key (needs `cert_file` and `ca_file`).
    pub key_file: Option<String>,
    /// CA bundle of the API server.
    pub ca_file: Option<String>,
    /// Bearer token for the API server.
    pub bearer_token: Option<crate::SecretString>,
    /// Let jobs set `KUBERNETES_BEARER_TOKEN`.
    pub bearer_token_overwrite_allowed: bool,
    /// Default job image.
    pub image: Option<String>,
    /// Namespace of job pods (default `default`).
    pub namespace: Option<String>,
    /// Which `KUBERNETES_NAMESPACE_OVERWRITE` values jobs may use.
    pub namespace_overwrite_allowed: Option<ConfigRegex>,
    /// A namespace `ci-job-<id>` per job.
    pub namespace_per_job: bool,
    /// Run every container privileged.
    pub privileged: Option<bool>,
    /// `allowPrivilegeEscalation` of every container.
    pub allow_privilege_escalation: Option<bool>,
    /// `runtimeClassName` of job pods.
    pub runtime_class_name: Option<String>,

    /// Build container CPU limit.
    pub cpu_limit: Option<Quantity>,
    /// Highest `KUBERNETES_CPU_LIMIT` a job may ask for.
    pub cpu_limit_overwrite_max_allowed: Option<Quantity>,
    /// Build container CPU request.
    pub cpu_request: Option<Quantity>,
    /// Highest `KUBERNETES_CPU_REQUEST` a job may ask for.
    pub cpu_request_overwrite_max_allowed: Option<Quantity>,
    /// Build container memory limit.
    pub memory_limit: Option<Quantity>,
    /// Highest `KUBERNETES_MEMORY_LIMIT` a job may ask for.
    pub memory_limit_overwrite_max_allowed: Option<Quantity>,
    /// Build container memory request.
    pub memory_request: Option<Quantity>,
    /// Highest `KUBERNETES_MEMORY_REQUEST` a job may ask for.
    pub memory_request_overwrite_max_allowed: Option<Quantity>,
    /// Build container ephemeral-storage limit.
    pub ephemeral_storage_limit: Option<Quantity>,
    /// Highest `KUBERNETES_EPHEMERAL_STORAGE_LIMIT` a job may ask for.
    pub ephemeral_storage_limit_overwrite_max_allowed: Option<Quantity>,
    /// Build container ephemeral-storage request.
    pub ephemeral_storage_request: Option<Quantity>,
    /// Highest `KUBERNETES_EPHEMERAL_STORAGE_REQUEST` a job may ask for.
    pub ephemeral_storage_request_overwrite_max_allowed: Option<Quantity>,

    /// Helper (podrunner: init) container CPU limit.
    pub helper_cpu_limit: Option<Quantity>,
    /// Highest `KUBERNETES_HELPER_CPU_LIMIT`.
    pub helper_cpu_limit_overwrite_max_allowed: Option<Quantity>,
    /// Helper container CPU request.
    pub helper_cpu_request: Option<Quantity>,
    /// Highest `KUBERNETES_HELPER_CPU_REQUEST`.
    pub helper_cpu_request_overwrite_max_allowed: Option<Quantity>,
    /// Helper container memory limit.
    pub helper_memory_limit: Option<Quantity>,
    /// Highest `KUBERNETES_HELPER_MEMORY_LIMIT`.
    pub helper_memory_limit_overwrite_max_allowed: Option<Quantity>,
    /// Helper container memory request.
    pub helper_memory_request: Option<Quantity>,
    /// Highest `KUBERNETES_HELPER_MEMORY_REQUEST`.
    pub helper_memory_request_overwrite_max_allowed: Option<Quantity>,
    /// Helper container ephemeral-storage limit.
    pub helper_ephemeral_storage_limit: Option<Quantity>,
    /// Highest `KUBERNETES_HELPER_EPHEMERAL_STORAGE_LIMIT`.
    pub helper_ephemeral_storage_limit_overwrite_max_allowed: Option<Quantity>,
    /// Helper container ephemeral-storage request.
    pub helper_ephemeral_storage_request: Option<Quantity>,
    /// Highest `KUBERNETES_HELPER_EPHEMERAL_STORAGE_REQUEST`.
    pub helper_ephemeral_storage_request_overwrite_max_allowed: Option<Quantity>,

    /// Service container CPU limit.
    pub service_cpu_limit: Option<Quantity>,
    /// Highest `KUBERNETES_SERVICE_CPU_LIMIT`.
    pub service_cpu_limit_overwrite_max_allowed: Option<Quantity>,
    /// Service container CPU request.
    pub service_cpu_request: Option<Quantity>,
    /// Highest `KUBERNETES_SERVICE_CPU_REQUEST`.
    pub service_cpu_request_overwrite_max_allowed: Option<Quantity>,
    /// Service container memory limit.
    pub service_memory_limit: Option<Quantity>,
    /// Highest `KUBERNETES_SERVICE_MEMORY_LIMIT`.
    pub service_memory_limit_overwrite_max_allowed: Option<Quantity>,
    /// Service container memory request.
    pub service_memory_request: Option<Quantity>,
    /// Highest `KUBERNETES_SERVICE_MEMORY_REQUEST`.
    pub service_memory_request_overwrite_max_allowed: Option<Quantity>,
    /// Service container ephemeral-storage limit.
    pub service_ephemeral_storage_limit: Option<Quantity>,
    /// Highest `KUBERNETES_SERVICE_EPHEMERAL_STORAGE_LIMIT`.
    pub service_ephemeral_storage_limit_overwrite_max_allowed: Option<Quantity>,
    /// Service container ephemeral-storage request.
    pub service_ephemeral_storage_request: Option<Quantity>,
    /// Highest `KUBERNETES_SERVICE_EPHEMERAL_STORAGE_REQUEST`.
    pub service_ephemeral_storage_request_overwrite_max_allowed: Option<Quantity>,

    /// Pod-level CPU limit.
    pub pod_cpu_limit: Option<Quantity>,
    /// Highest `KUBERNETES_POD_CPU_LIMIT`.
    pub pod_cpu_limit_overwrite_max_allowed: Option<Quantity>,
    /// Pod-level CPU request.
    pub pod_cpu_request: Option<Quantity>,
    /// Highest `KUBERNETES_POD_CPU_REQUEST`.
    pub pod_cpu_request_overwrite_max_allowed: Option<Quantity>,
    /// Pod-level memory limit.
    pub pod_memory_limit: Option<Quantity>,
    /// Highest `KUBERNETES_POD_MEMORY_LIMIT`.
    pub pod_memory_limit_overwrite_max_allowed: Option<Quantity>,
    /// Pod-level memory request.
    pub pod_memory_request: Option<Quantity>,
    /// Highest `KUBERNETES_POD_MEMORY_REQUEST`.
    pub pod_memory_request_overwrite_max_allowed: Option<Quantity>,

    /// Image patterns jobs may use (empty = all).
    pub allowed_images: Vec<Wildcard>,
    /// Service image patterns jobs may use (empty = all).
    pub allowed_services: Vec<Wildcard>,
    /// Pull policies jobs may ask for (empty = all).
    pub allowed_pull_policies: PullPolicies,
    /// UIDs jobs may run as (empty = all).
    pub allowed_users: Vec<String>,
    /// GIDs jobs may run as (empty = all).
    pub allowed_groups: Vec<String>,
    /// Pull policy, or policies tried in order.
    pub pull_policy: PullPolicies,
    /// `nodeSelector` of job pods.
    pub node_selector: BTreeMap<String, String>,
    /// Which `KUBERNETES_NODE_SELECTOR_*` values jobs may add.
    pub node_selector_overwrite_allowed: Option<ConfigRegex>,
    /// Tolerations as `"key[=value]" = "Effect"`.
    pub node_tolerations: BTreeMap<String, String>,
    /// Which `KUBERNETES_NODE_TOLERATIONS_*` values jobs may add.
    pub node_tolerations_overwrite_allowed: Option<ConfigRegex>,
    /// `[runners.kubernetes.affinity]`.
    pub affinity: Option<Affinity>,
    /// Image pull secrets of job pods.
    pub image_pull_secrets: Vec<String>,
    /// Rely on the service account's pull secrets.
    pub use_service_account_image_pull_secrets: bool,
    /// gitlab-runner's helper image (podrunner has no helper container).
    pub helper_image: Option<String>,
    /// gitlab-runner's helper image flavor.
    pub helper_image_flavor: Option<String>,
    /// Pick the helper image for the runner's own OS and architecture.
    pub helper_image_autoset_arch_and_os: bool,
    /// `terminationGracePeriodSeconds` of job pods.
    pub pod_termination_grace_period_seconds: Option<i64>,
    /// Grace period when deleting a finished pod.
    pub cleanup_grace_period_seconds: Option<i64>,
    /// Time allowed for cleaning up a job's resources.
    pub cleanup_resources_timeout: GoDuration,
    /// Seconds between pod status checks while waiting (≤ 0 means 3).
    pub poll_interval: i64,
    /// Seconds to wait for a pod to start (≤ 0 means 180).
    pub poll_timeout: i64,
    /// Checks for the service account and pull secrets before creating a pod (negative means 5).
    pub resource_availability_check_max_attempts: i64,
    /// Kubernetes API retries.
    pub retry_limit: i64,
    /// Longest back-off between API retries, in milliseconds (at least 500).
    pub retry_backoff_max: i64,
    /// Retries per error-message substring.
    pub retry_limits: BTreeMap<String, i64>,
    /// Labels of job pods (values expanded with job variables).
    pub pod_labels: BTreeMap<String, String>,
    /// Which `KUBERNETES_POD_LABELS_*` jobs may set.
    pub pod_labels_overwrite_allowed: Option<ConfigRegex>,
    /// Annotations of job pods (values expanded with job variables).
    pub pod_annotations: BTreeMap<String, String>,
    /// Which `KUBERNETES_POD_ANNOTATIONS_*` jobs may set.
    pub pod_annotations_overwrite_allowed: Option<ConfigRegex>,
    /// `schedulerName` of job pods.
    pub scheduler_name: Option<String>,
    /// Service account of job pods.
    pub service_account: Option<String>,
    /// Which `KUBERNETES_SERVICE_ACCOUNT_OVERWRITE` values jobs may use.
    pub service_account_overwrite_allowed: Option<ConfigRegex>,
    /// `automountServiceAccountToken` of job pods.
    pub automount_service_account_token: Option<bool>,
    /// Pod security context.
    pub pod_security_context: Option<PodSecurityContext>,
    /// Security context of the build container.
    pub build_container_security_context: Option<ContainerSecurityContext>,
    /// Security context of the helper container.
    pub helper_container_security_context: Option<ContainerSecurityContext>,
    /// Security context of service containers.
    pub service_container_security_context: Option<ContainerSecurityContext>,
    /// Security context of the init container.
    pub init_permissions_container_security_context: Option<ContainerSecurityContext>,
    /// Capabilities added to every container.
    pub cap_add: Vec<String>,
    /// Capabilities dropped from every container (`NET_RAW` is dropped unless added).
    pub cap_drop: Vec<String>,
    /// `[runners.kubernetes.volumes]`.
    pub volumes: Volumes,
    /// Extra `/etc/hosts` entries.
    pub host_aliases: Vec<HostAlias>,
    /// Services added to every job, before the job's own.
    pub services: Vec<ServiceConfig>,
    /// DNS policy of job pods.
    pub dns_policy: Option<DnsPolicy>,
    /// DNS config of job pods.
    pub dns_config: Option<DnsConfig>,
    /// Lifecycle hooks of the build container.
    pub container_lifecycle: Option<ContainerLifecycle>,
    /// `priorityClassName` of job pods.
    pub priority_class_name: Option<String>,
    /// Pod spec patches (needs `FF_USE_ADVANCED_POD_SPEC_CONFIGURATION`).
    pub pod_spec: Vec<PodSpecPatch>,
    /// Prefix of the log directory.
    pub logs_base_dir: Option<String>,
    /// Prefix of the scripts directory.
    pub scripts_base_dir: Option<String>,
    /// Write the pod's warning events to the trace (default true).
    pub print_pod_warning_events: Option<bool>,
    /// Create a PodDisruptionBudget per job pod.
    pub pod_disruption_budget: Option<bool>,
    /// Size of the PVC of suspendable environments.
    pub suspend_pvc_size: Option<Quantity>,
    /// Storage class of the PVC of suspendable environments.
    pub suspend_pvc_storage_class: Option<String>,
    /// Pause-pod pre-warming.
    pub autoscaler: Option<KubernetesAutoscaler>,
    /// podrunner's Fargate model: declared profiles, prices, refusal of unsupported pods.
    pub fargate: Option<FargateConfig>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            host: None,
            context: None,
            cert_file: None,
            key_file: None,
            ca_file: None,
            bearer_token: None,
            bearer_token_overwrite_allowed: false,
            image: None,
            namespace: None,
            namespace_overwrite_allowed: None,
            namespace_per_job: false,
            privileged: None,
            allow_privilege_escalation: None,
            runtime_class_name: None,
            cpu_limit: None,
            cpu_limit_overwrite_max_allowed: None,
            cpu_request: None,
            cpu_request_overwrite_max_allowed: None,
            memory_limit: None,
            memory_limit_overwrite_max_allowed: None,
            memory_request: None,
            memory_request_overwrite_max_allowed: None,
            ephemeral_storage_limit: None,
            ephemeral_storage_limit_overwrite_max_allowed: None,
            ephemeral_storage_request: None,
            ephemeral_storage_request_overwrite_max_allowed: None,
            helper_cpu_limit: None,
            helper_cpu_limit_overwrite_max_allowed: None,
            helper_cpu_request: None,
            helper_cpu_request_overwrite_max_allowed: None,
            helper_memory_limit: None,
            helper_memory_limit_overwrite_max_allowed: None,
            helper_memory_request: None,
            helper_memory_request_overwrite_max_allowed: None,
            helper_ephemeral_storage_limit: None,
            helper_ephemeral_storage_limit_overwrite_max_allowed: None,
            helper_ephemeral_storage_request: None,
            helper_ephemeral_storage_request_overwrite_max_allowed: None,
            service_cpu_limit: None,
            service_cpu_limit_overwrite_max_allowed: None,
            service_cpu_request: None,
            service_cpu_request_overwrite_max_allowed: None,
            service_memory_limit: None,
            service_memory_limit_overwrite_max_allowed: None,
            service_memory_request: None,
            service_memory_request_overwrite_max_allowed: None,
            service_ephemeral_storage_limit: None,
            service_ephemeral_storage_limit_overwrite_max_allowed: None,
            service_ephemeral_storage_request: None,
            service_ephemeral_storage_request_overwrite_max_allowed: None,
            pod_cpu_limit: None,
            pod_cpu_limit_overwrite_max_allowed: None,
            pod_cpu_request: None,
            pod_cpu_request_overwrite_max_allowed: None,
            pod_memory_limit: None,
            pod_memory_limit_overwrite_max_allowed: None,
            pod_memory_request: None,
            pod_memory_request_overwrite_max_allowed: None,
            allowed_images: Vec::new(),
            allowed_services: Vec::new(),
            allowed_pull_policies: PullPolicies::default(),
            allowed_users: Vec::new(),
            allowed_groups: Vec::new(),
            pull_policy: PullPolicies::default(),
            node_selector: BTreeMap::new(),
            node_selector_overwrite_allowed: None,
            node_tolerations: BTreeMap::new(),
            node_tolerations_overwrite_allowed: None,
            affinity: None,
            image_pull_secrets: Vec::new(),
            use_service_account_image_pull_secrets: false,
            helper_image: None,
            helper_image_flavor: None,
            helper_image_autoset_arch_and_os: false,
            pod_termination_grace_period_seconds: None,
            cleanup_grace_period_seconds: None,
            cleanup_resources_timeout: GoDuration::from_secs(300),
            poll_interval: DEFAULT_POLL_INTERVAL_SECS,
            poll_timeout: DEFAULT_POLL_TIMEOUT_SECS,
            resource_availability_check_max_attempts: 0,
            retry_limit: 5,
            retry_backoff_max: 2000,
            retry_limits: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
            pod_labels_overwrite_allowed: None,
            pod_annotations: BTreeMap::new(),
            pod_annotations_overwrite_allowed: None,
            scheduler_name: None,
            service_account: None,
            service_account_overwrite_allowed: None,
            automount_service_account_token: None,
            pod_security_context: None,
            build_container_security_context: None,
            helper_container_security_context: None,
            service_container_security_context: None,
            init_permissions_container_security_context: None,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            volumes: Volumes::default(),
            host_aliases: Vec::new(),
            services: Vec::new(),
            dns_policy: None,
            dns_config: None,
            container_lifecycle: None,
            priority_class_name: None,
            pod_spec: Vec::new(),
            logs_base_dir: None,
            scripts_base_dir: None,
            print_pod_warning_events: None,
            pod_disruption_budget: None,
            suspend_pvc_size: None,
            suspend_pvc_storage_class: None,
            autoscaler: None,
            fargate: None,
        }
    }
}

/// Which container a resource setting applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRole {
    /// The `build` container (the job's image).
    Build,
    /// gitlab-runner's helper container; in podrunner, the init container.
    Helper,
    /// Every service container.
    Service,
    /// The pod-level `resources`.
    Pod,
}

impl ContainerRole {
    /// Every role, in display order.
    pub const ALL: [ContainerRole; 4] = [
        ContainerRole::Build,
        ContainerRole::Helper,
        ContainerRole::Service,
        ContainerRole::Pod,
    ];

    /// The key prefix in `[runners.kubernetes]` (`""`, `helper_`, `service_`, `pod_`).
    pub fn key_prefix(&self) -> &'static str {
        match self {
            ContainerRole::Build => "",
            ContainerRole::Helper => "helper_",
            ContainerRole::Service => "service_",
            ContainerRole::Pod => "pod_",
        }
    }
}

/// A resource kind of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// CPU cores.
    Cpu,
    /// Memory bytes.
    Memory,
    /// Ephemeral-storage bytes.
    EphemeralStorage,
}

impl ResourceKind {
    /// Every kind.
    pub const ALL: [ResourceKind; 3] = [
        ResourceKind::Cpu,
        ResourceKind::Memory,
        ResourceKind::EphemeralStorage,
    ];

    /// The key part (`cpu`, `memory`, `ephemeral_storage`).
    pub fn key(&self) -> &'static str {
        match self {
            ResourceKind::Cpu => "cpu",
            ResourceKind::Memory => "memory",
            ResourceKind::EphemeralStorage => "ephemeral_storage",
        }
    }

    /// The Kubernetes resource name.
    pub fn kubernetes_name(&self) -> &'static str {
        match self {
            ResourceKind::Cpu => "cpu",
            ResourceKind::Memory => "memory",
            ResourceKind::EphemeralStorage => "ephemeral-storage",
        }
    }
}

/// The request and limit of one resource of one container role, and how far jobs may raise them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourceSetting {
    /// The request.
    pub request: Option<Quantity>,
    /// The limit.
    pub limit: Option<Quantity>,
    /// Highest request a job may ask for (`None`: jobs may not change it).
    pub request_overwrite_max: Option<Quantity>,
    /// Highest limit a job may ask for.
    pub limit_overwrite_max: Option<Quantity>,
}

impl KubernetesConfig {
    /// The namespace of job pods (`default` when unset).
    pub fn namespace(&self) -> &str {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => DEFAULT_NAMESPACE,
        }
    }

    /// `poll_interval` in seconds, with gitlab-runner's default for zero or less.
    pub fn poll_interval_secs(&self) -> u64 {
        positive_or(self.poll_interval, DEFAULT_POLL_INTERVAL_SECS)
    }

    /// `poll_timeout` in seconds, with gitlab-runner's default for zero or less.
    pub fn poll_timeout_secs(&self) -> u64 {
        positive_or(self.poll_timeout, DEFAULT_POLL_TIMEOUT_SECS)
    }

    /// `retry_backoff_max` in milliseconds, at least 500.
    pub fn retry_backoff_max_ms(&self) -> u64 {
        self.retry_backoff_max.max(500) as u64
    }

    /// `resource_availability_check_max_attempts`: negative means 5.
    pub fn resource_availability_check_attempts(&self) -> u64 {
        if self.resource_availability_check_max_attempts < 0 {
            5
        } else {
            self.resource_availability_check_max_attempts as u64
        }
    }

    /// Whether pod warning events go to the trace (default true).
    pub fn print_pod_warning_events(&self) -> bool {
        self.print_pod_warning_events.unwrap_or(true)
    }

    /// Whether each job pod gets a PodDisruptionBudget (default false, as gitlab-runner's
    /// `GetPodDisruptionBudget` in `common/config.go`).
    pub fn pod_disruption_budget(&self) -> bool {
        self.pod_disruption_budget.unwrap_or(false)
    }

    /// The resource setting of `role` and `kind` (`None` for pod-level ephemeral storage,
    /// which gitlab-runner does not have).
    pub fn resource(&self, role: ContainerRole, kind: ResourceKind) -> Option<ResourceSetting> {
        use ContainerRole as R;
        use ResourceKind as K;
        let s = |request: &Option<Quantity>,
                 request_max: &Option<Quantity>,
                 limit: &Option<Quantity>,
                 limit_max: &Option<Quantity>| {
            Some(ResourceSetting {
                request: request.clone(),
                limit: limit.clone(),
                request_overwrite_max: request_max.clone(),
                limit_overwrite_max: limit_max.clone(),
            })
        };
        match (role, kind) {
            (R::Build, K::Cpu) => s(
                &self.cpu_request,
                &self.cpu_request_overwrite_max_allowed,
                &self.cpu_limit,
                &self.cpu_limit_overwrite_max_allowed,
            ),
            (R::Build, K::Memory) => s(
                &self.memory_request,
                &self.memory_request_overwrite_max_allowed,
                &self.memory_limit,
                &self.memory_limit_overwrite_max_allowed,
            ),
            (R::Build, K::EphemeralStorage) => s(
                &self.ephemeral_storage_request,
                &self.ephemeral_storage_request_overwrite_max_allowed,
                &self.ephemeral_storage_limit,
                &self.ephemeral_storage_limit_overwrite_max_allowed,
            ),
            (R::Helper, K::Cpu) => s(
                &self.helper_cpu_request,
                &self.helper_cpu_request_overwrite_max_allowed,
                &self.helper_cpu_limit,
                &self.helper_cpu_limit_overwrite_max_allowed,
            ),
            (R::Helper, K::Memory) => s(
                &self.helper_memory_request,
                &self.helper_memory_request_overwrite_max_allowed,
                &self.helper_memory_limit,
                &self.helper_memory_limit_overwrite_max_allowed,
            ),
            (R::Helper, K::EphemeralStorage) => s(
                &self.helper_ephemeral_storage_request,
                &self.helper_ephemeral_storage_request_overwrite_max_allowed,
                &self.helper_ephemeral_storage_limit,
                &self.helper_ephemeral_storage_limit_overwrite_max_allowed,
            ),
            (R::Service, K::Cpu) => s(
                &self.service_cpu_request,
                &self.service_cpu_request_overwrite_max_allowed,
                &self.service_cpu_limit,
                &self.service_cpu_limit_overwrite_max_allowed,
            ),
            (R::Service, K::Memory) => s(
                &self.service_memory_request,
                &self.service_memory_request_overwrite_max_allowed,
                &self.service_memory_limit,
                &self.service_memory_limit_overwrite_max_allowed,
            ),
            (R::Service, K::EphemeralStorage) => s(
                &self.service_ephemeral_storage_request,
                &self.service_ephemeral_storage_request_overwrite_max_allowed,
                &self.service_ephemeral_storage_limit,
                &self.service_ephemeral_storage_limit_overwrite_max_allowed,
            ),
            (R::Pod, K::Cpu) => s(
                &self.pod_cpu_request,
                &self.pod_cpu_request_overwrite_max_allowed,
                &self.pod_cpu_limit,
                &self.pod_cpu_limit_overwrite_max_allowed,
            ),
            (R::Pod, K::Memory) => s(
                &self.pod_memory_request,
                &self.pod_memory_request_overwrite_max_allowed,
                &self.pod_memory_limit,
                &self.pod_memory_limit_overwrite_max_allowed,
            ),
            (R::Pod, K::EphemeralStorage) => None,
        }
    }
}

fn positive_or(value: i64, default: i64) -> u64 {
    if value > 0 {
        value as u64
    } else {
        default as u64
    }
}

/// `[runners.kubernetes.affinity]`, the Kubernetes shapes in snake_case.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Affinity {
    /// Node affinity.
    pub node_affinity: Option<NodeAffinity>,
    /// Pod affinity.
    pub pod_affinity: Option<PodAffinity>,
    /// Pod anti-affinity.
    pub pod_anti_affinity: Option<PodAffinity>,
}

/// Node affinity.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct NodeAffinity {
    /// Hard requirement.
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
    /// Soft preferences.
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
}

/// A node selector: any term may match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct NodeSelector {
    /// The terms.
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// One node selector term: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct NodeSelectorTerm {
    /// Requirements on node labels.
    pub match_expressions: Vec<SelectorRequirement>,
    /// Requirements on node fields.
    pub match_fields: Vec<SelectorRequirement>,
}

/// `key operator values`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SelectorRequirement {
    /// The label or field.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`.
    pub operator: String,
    /// The values.
    pub values: Vec<String>,
}

/// A weighted node preference.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PreferredSchedulingTerm {
    /// 1 to 100.
    pub weight: i32,
    /// The preferred term.
    pub preference: NodeSelectorTerm,
}

/// Pod affinity or anti-affinity.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PodAffinity {
    /// Hard requirements.
    pub required_during_scheduling_ignored_during_execution: Vec<PodAffinityTerm>,
    /// Soft preferences.
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodAffinityTerm>,
}

/// A pod affinity term.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PodAffinityTerm {
    /// Which pods.
    pub label_selector: Option<LabelSelector>,
    /// In which namespaces.
    pub namespaces: Vec<String>,
    /// The topology domain key.
    pub topology_key: String,
    /// Which namespaces, by label.
    pub namespace_selector: Option<LabelSelector>,
}

/// A weighted pod affinity term.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct WeightedPodAffinityTerm {
    /// 1 to 100.
    pub weight: i32,
    /// The term.
    pub pod_affinity_term: PodAffinityTerm,
}

/// A label selector.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct LabelSelector {
    /// Exact labels.
    pub match_labels: BTreeMap<String, String>,
    /// Requirements.
    pub match_expressions: Vec<SelectorRequirement>,
}

/// A seccomp or AppArmor profile.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SecurityProfile {
    /// `RuntimeDefault`, `Localhost` or `Unconfined`.
    #[serde(rename = "type")]
    pub profile_type: Option<String>,
    /// The profile on the node, for `Localhost`.
    pub localhost_profile: Option<String>,
}

/// `pod_security_context`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PodSecurityContext {
    /// `fsGroup`.
    pub fs_group: Option<i64>,
    /// `runAsGroup`.
    pub run_as_group: Option<i64>,
    /// `runAsNonRoot`.
    pub run_as_non_root: Option<bool>,
    /// `runAsUser`.
    pub run_as_user: Option<i64>,
    /// `supplementalGroups`.
    pub supplemental_groups: Vec<i64>,
    /// SELinux type.
    pub selinux_type: Option<String>,
    /// Seccomp profile.
    pub seccomp_profile: Option<SecurityProfile>,
    /// AppArmor profile.
    pub app_armor_profile: Option<SecurityProfile>,
}

/// Capabilities to add and drop.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Capabilities {
    /// Added.
    pub add: Vec<String>,
    /// Dropped.
    pub drop: Vec<String>,
}

/// A container security context.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ContainerSecurityContext {
    /// `privileged`.
    pub privileged: Option<bool>,
    /// `runAsUser`.
    pub run_as_user: Option<i64>,
    /// `runAsGroup`.
    pub run_as_group: Option<i64>,
    /// `runAsNonRoot`.
    pub run_as_non_root: Option<bool>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root_filesystem: Option<bool>,
    /// `allowPrivilegeEscalation`.
    pub allow_privilege_escalation: Option<bool>,
    /// SELinux type.
    pub selinux_type: Option<String>,
    /// `default` or `unmasked`.
    pub proc_mount: Option<String>,
    /// Seccomp profile.
    pub seccomp_profile: Option<SecurityProfile>,
    /// AppArmor profile.
    pub app_armor_profile: Option<SecurityProfile>,
    /// Capabilities.
    pub capabilities: Option<Capabilities>,
}

/// `[runners.kubernetes.volumes]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Volumes {
    /// `[[runners.kubernetes.volumes.host_path]]`.
    pub host_path: Vec<HostPathVolume>,
    /// `[[runners.kubernetes.volumes.pvc]]`.
    pub pvc: Vec<PvcVolume>,
    /// `[[runners.kubernetes.volumes.config_map]]`.
    pub config_map: Vec<ItemsVolume>,
    /// `[[runners.kubernetes.volumes.secret]]`.
    pub secret: Vec<ItemsVolume>,
    /// `[[runners.kubernetes.volumes.empty_dir]]`.
    pub empty_dir: Vec<EmptyDirVolume>,
    /// `[[runners.kubernetes.volumes.csi]]`.
    pub csi: Vec<CsiVolume>,
    /// `[[runners.kubernetes.volumes.nfs]]`.
    pub nfs: Vec<NfsVolume>,
}

impl Volumes {
    /// Whether no volume is configured.
    pub fn is_empty(&self) -> bool {
        self.host_path.is_empty()
            && self.pvc.is_empty()
            && self.config_map.is_empty()
            && self.secret.is_empty()
            && self.empty_dir.is_empty()
            && self.csi.is_empty()
            && self.nfs.is_empty()
    }
}

/// A hostPath volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct HostPathVolume {
    /// Volume name.
    pub name: String,
    /// Where it is mounted.
    pub mount_path: String,
    /// Sub-path to mount.
    pub sub_path: Option<String>,
    /// Mount read-only.
    pub read_only: bool,
    /// Path on the node (default: `mount_path`).
    pub host_path: Option<String>,
    /// `None`, `HostToContainer` or `Bidirectional`.
    pub mount_propagation: Option<String>,
}

/// A PersistentVolumeClaim volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PvcVolume {
    /// Claim name (expanded with job variables).
    pub name: String,
    /// Where it is mounted.
    pub mount_path: String,
    /// Sub-path to mount.
    pub sub_path: Option<String>,
    /// Mount read-only.
    pub read_only: bool,
    /// Mount propagation.
    pub mount_propagation: Option<String>,
}

/// A ConfigMap or Secret volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ItemsVolume {
    /// Object name.
    pub name: String,
    /// Where it is mounted.
    pub mount_path: String,
    /// Sub-path to mount.
    pub sub_path: Option<String>,
    /// Mount read-only.
    pub read_only: bool,
    /// Key → file path inside the mount.
    pub items: BTreeMap<String, String>,
}

/// An emptyDir volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct EmptyDirVolume {
    /// Volume name.
    pub name: String,
    /// Where it is mounted.
    pub mount_path: String,
    /// Sub-path to mount.
    pub sub_path: Option<String>,
    /// `""` (disk) or `Memory`.
    pub medium: Option<String>,
    /// Size limit.
    pub size_limit: Option<Quantity>,
}

/// A CSI volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CsiVolume {
    /// Volume name.
    pub name: String,
    /// Where it is mounted.
    pub mount_path: String,
    /// Sub-path to mount.
    pub sub_path: Option<String>,
    /// Mount read-only.
    pub read_only: bool,
    /// CSI driver.
    pub driver: String,
    /// Filesystem type.
    pub fs_type: Option<String>,
    /// Driver attributes.
    pub volume_attributes: BTreeMap<String, String>,
}

/// An NFS volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct NfsVolume {
    /// Volume name.
    pub name: String,
    /// Where it is mounted.
    pub mount_path: String,
    /// Sub-path to mount.
    pub sub_path: Option<String>,
    /// Mount read-only.
    pub read_only: bool,
    /// NFS server.
    pub server: String,
    /// Exported path.
    pub path: String,
}

/// A `/etc/hosts` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct HostAlias {
    /// IP address.
    pub ip: String,
    /// Host names for it.
    pub hostnames: Vec<String>,
}

/// A service every job gets.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ServiceConfig {
    /// Image.
    pub name: String,
    /// Host name(s), space or comma separated.
    pub alias: Option<String>,
    /// Command (arguments).
    pub command: Vec<String>,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// `KEY=VALUE` variables.
    pub environment: Vec<String>,
    /// Data path kept across suspension (experimental).
    pub suspend_data_path: Option<String>,
}

/// `dns_config`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct DnsConfig {
    /// Name servers.
    pub nameservers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Resolver options.
    pub options: Vec<DnsOption>,
}

/// A resolver option.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct DnsOption {
    /// Name.
    pub name: String,
    /// Value.
    pub value: Option<String>,
}

/// `container_lifecycle`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ContainerLifecycle {
    /// Hook after the container starts.
    pub post_start: Option<LifecycleHandler>,
    /// Hook before the container stops.
    pub pre_stop: Option<LifecycleHandler>,
}

/// A lifecycle hook: one of `exec`, `http_get`, `tcp_socket`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct LifecycleHandler {
    /// Run a command.
    pub exec: Option<ExecAction>,
    /// Send an HTTP GET.
    pub http_get: Option<HttpGetAction>,
    /// Open a TCP connection.
    pub tcp_socket: Option<TcpSocketAction>,
}

/// A command hook.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ExecAction {
    /// The command.
    pub command: Vec<String>,
}

/// An HTTP GET hook.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpGetAction {
    /// Host (default: the pod IP).
    pub host: Option<String>,
    /// Port.
    pub port: i64,
    /// Path.
    pub path: Option<String>,
    /// `HTTP` or `HTTPS`.
    pub scheme: Option<String>,
    /// Extra headers.
    pub http_headers: Vec<HttpHeader>,
}

/// An HTTP header.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A TCP hook.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct TcpSocketAction {
    /// Host (default: the pod IP).
    pub host: Option<String>,
    /// Port.
    pub port: i64,
}

/// A `[[runners.kubernetes.pod_spec]]` patch.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PodSpecPatch {
    /// Name, for messages.
    pub name: Option<String>,
    /// Inline YAML or JSON patch.
    pub patch: Option<String>,
    /// File holding the patch.
    pub patch_path: Option<String>,
    /// Patch kind (default strategic).
    pub patch_type: Option<PatchType>,
}

/// `[runners.kubernetes.autoscaler]`: pause pods that keep capacity warm.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct KubernetesAutoscaler {
    /// Most pause pods.
    pub max_pause_pods: Option<i64>,
    /// Pause image (default `registry.k8s.io/pause:3.10`).
    pub pause_pod_image: Option<String>,
    /// Priority class of pause pods.
    pub pause_pod_priority_class_name: Option<String>,
    /// Pull secrets of pause pods.
    pub pause_pod_image_pull_secrets: Vec<String>,
    /// Time-based policies, as gitlab-runner writes them.
    pub policy: Vec<toml::Table>,
}
