//! The pod plan: the job Pod (and the names of its Secrets) exactly as the executor creates
//! it, built purely from the runner's configuration and the job payload, so that it can be
//! printed (`podrunner plan`), golden-tested and validated against Kubernetes' schemas.
//!
//! [`plan`] puts the pod together; each concern is a child module: `namespace` (where and as
//! whom), `images`, `metadata` (labels and annotations), `scheduling` and `tolerations`,
//! `volumes`, `containers`, `security`, `services`, `network` (DNS and host aliases),
//! `overwrites` (the job's `KUBERNETES_*` variables) and `pod_spec_patch` (applied last).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podrunner_config::kubernetes::ContainerRole;
use podrunner_config::{Quantity, RunnerConfig};

pub use pod_spec_patch::FLAG as ADVANCED_POD_SPEC_FLAG;
use podrunner_gitlab::JobPayload;

use crate::pull_policy::PullAttempts;

mod containers;
mod images;
mod metadata;
mod names;
mod namespace;
mod network;
mod overwrites;
mod pod_spec_patch;
mod scheduling;
mod security;
mod services;
mod strategic_merge;
mod tolerations;
mod users;
mod variables;
mod volumes;

use images::allowed;
use overwrites::{bearer_token, resources};
use security::security_context;
use variables::{JobVariables, expand_like_runner};

pub use metadata::sanitize_label_value;
pub use names::derived_aliases;

/// Label every job pod of a manager carries, for the shared watch.
pub const MANAGER_LABEL: &str = "podrunner.io/manager";
/// Label with the job ID.
pub const JOB_LABEL: &str = "podrunner.io/job-id";
/// Where the agent binary is installed in the pod.
pub const AGENT_BIN_DIR: &str = "/podrunner/bin";
/// Where the init container sees the agent's volume. Not under `/podrunner`: in the init
/// image that path is the podrunner binary itself.
pub const AGENT_INSTALL_DIR: &str = "/podrunner-install";
/// Where the job spec Secret is mounted.
pub const SPEC_DIR: &str = "/podrunner/spec";
/// Where the build container sees the live trace prelude (a downward-API volume).
pub const HANDOVER_DIR: &str = "/podrunner/handover";
/// Extra seconds past the job timeout before the kubelet stops the pod: the agent enforces
/// the timeout itself and reports; the deadline is only the backstop.
pub const DEADLINE_GRACE_SECS: i64 = 120;

/// Why no pod can be planned for a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Neither the job nor the config names an image.
    #[error(
        "no image specified and no default set in config: set image in [runners.kubernetes] or in the job"
    )]
    NoImage,
    /// The job's image is not in `allowed_images`.
    #[error("the image {0:?} is not allowed by allowed_images")]
    ImageNotAllowed(String),
    /// A service image is not in `allowed_services`.
    #[error("the service image {0:?} is not allowed by allowed_services")]
    ServiceNotAllowed(String),
    /// A `KUBERNETES_*` variable asks for something the configuration does not allow.
    #[error("{variable}: {reason}")]
    Overwrite {
        /// The variable.
        variable: String,
        /// Why it is refused.
        reason: String,
    },
    /// A pull policy is not allowed or not known ([`crate::pull_policy`]).
    #[error(transparent)]
    PullPolicy(#[from] crate::pull_policy::PullPolicyError),
    /// A value from the job, an overwrite or the configuration that the API server would
    /// refuse in the pod (checked as apimachinery checks it, before anything is created).
    #[error("{origin}: {value:?} is not a valid {what}: {rule}")]
    Invalid {
        /// Where the value comes from: the variable or the setting.
        origin: String,
        /// The value.
        value: String,
        /// What it was to be (a label key, a namespace...).
        what: &'static str,
        /// The API server's rule, in its own words.
        rule: String,
    },
    /// A resource request is above its limit, which the API server refuses
    /// (`ValidateResourceRequirements` in `pkg/apis/core/validation/validation.go`).
    #[error(
        "{request_origin} = {request} is above {limit_origin} = {limit}: a request must be less than or equal to its limit"
    )]
    RequestAboveLimit {
        /// The variable or setting of the request.
        request_origin: String,
        /// The request.
        request: String,
        /// The variable or setting of the limit.
        limit_origin: String,
        /// The limit.
        limit: String,
    },
    /// The job's `executor_opts` hold options gitlab-runner does not know, or a bad value.
    #[error("{0}")]
    ExecutorOptions(String),
    /// A `[[runners.kubernetes.pod_spec]]` patch cannot be applied or is refused.
    #[error("pod_spec {name:?}: {reason}")]
    PodSpecPatch {
        /// The patch's `name` (or its place in the list).
        name: String,
        /// Why.
        reason: String,
    },
    /// The pod's annotations are larger than the API server allows.
    #[error(
        "{origin}: the pod's annotations would take {size} bytes, more than the {limit} bytes the API server allows"
    )]
    AnnotationsTooLarge {
        /// The settings and variables that gave annotations.
        origin: String,
        /// Their total size (keys and values).
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl PlanError {
    fn check(
        origin: impl Into<String>,
        value: &str,
        what: &'static str,
        rule: fn(&str) -> Result<(), String>,
    ) -> Result<(), PlanError> {
        rule(value).map_err(|rule| PlanError::Invalid {
            origin: origin.into(),
            value: value.to_owned(),
            what,
            rule,
        })
    }
}

/// What a plan needs besides the config and the payload.
#[derive(Debug, Clone)]
pub struct PlanContext<'a> {
    /// The manager's system ID.
    pub system_id: &'a str,
    /// The image of the init container that installs the agent.
    pub init_image: &'a str,
    /// The runner's short token (labels).
    pub runner_short_token: &'a str,
}

/// The planned objects.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// Namespace of the pod and its Secrets.
    pub namespace: String,
    /// The Pod.
    pub pod: Pod,
    /// Name of the Secret holding the agent's spec (created by the executor, never printed).
    pub spec_secret: String,
    /// Name of the pull Secret, when a source names a registry ([`crate::registry_auth`]).
    pub registry_secret: Option<String>,
    /// Overwrites that were ignored, and similar notes for the trace.
    pub warnings: Vec<String>,
    /// The pull policies each container tries, in order ([`crate::pull_policy::effective`]).
    pub pull_policies: BTreeMap<String, Vec<crate::pull_policy::Policy>>,
    /// The job's `KUBERNETES_BEARER_TOKEN`, when `bearer_token_overwrite_allowed`: the job's
    /// own writes are made with it ([`crate::job_client`]). Never serialised, hidden by `Debug`.
    pub bearer_token: Option<crate::job_client::JobBearerToken>,
}

fn kube_quantity(q: &Quantity) -> KubeQuantity {
    KubeQuantity(q.to_string())
}

/// The job's `KUBERNETES_BEARER_TOKEN` as [`plan`] keeps it in [`PodPlan::bearer_token`], for a
/// job whose pod was made by an earlier run (adopted or taken over): its writes go on with it.
pub fn job_bearer_token(
    runner: &RunnerConfig,
    payload: &JobPayload,
) -> Option<crate::job_client::JobBearerToken> {
    bearer_token(
        &runner.kubernetes_or_default(),
        &JobVariables::new(payload),
        &mut Vec::new(),
    )
}

/// Plans the pod of a job for a kubernetes runner (its first attempt).
pub fn plan(
    runner: &RunnerConfig,
    payload: &JobPayload,
    context: &PlanContext<'_>,
) -> Result<PodPlan, PlanError> {
    plan_attempt(runner, payload, context, &PullAttempts::default())
}

/// Plans the pod of a job's attempt after `attempts`' pull failures: each container with the
/// pull policy it has reached ([`crate::pull_policy`]); a later attempt's pod (and so its
/// Secrets) has a name of its own, as gitlab-runner's new pod has.
pub fn plan_attempt(
    runner: &RunnerConfig,
    payload: &JobPayload,
    context: &PlanContext<'_>,
    attempts: &PullAttempts,
) -> Result<PodPlan, PlanError> {
    let config = &runner.kubernetes_or_default();
    let job = &payload.job;
    let variables = &JobVariables::new(payload);
    let mut warnings = Vec::new();

    let namespace = namespace::namespace(config, variables, job.id, &mut warnings)?;
    let bearer_token = bearer_token(config, variables, &mut warnings);
    let service_account = namespace::service_account(config, variables, &mut warnings)?;
    let image = images::image(config, job, variables)?;

    let pod_name = match attempts.attempt() {
        1 => format!("podrunner-job-{}", job.id),
        n => format!("podrunner-job-{}-{n}", job.id),
    };
    let policies = images::Policies::new(config, job, attempts)?;
    let spec_secret = format!("{pod_name}-spec");
    let metadata::Metadata {
        labels,
        annotations,
    } = metadata::labels_and_annotations(
        runner,
        config,
        payload,
        variables,
        context,
        &pod_name,
        &mut warnings,
    )?;
    let node_selector = scheduling::node_selector(config, variables, &mut warnings)?;
    let (volumes, mounts) = volumes::plan(runner, config, variables, &spec_secret)?;
    let build = containers::build(
        config,
        job,
        image,
        policies.for_container("build"),
        variables,
        mounts,
        &mut warnings,
    )?;
    let init = containers::init(
        config,
        context.init_image,
        policies.for_container("podrunner-init"),
        variables,
        &mut warnings,
    )?;

    // Services: the runner's first, then the job's.
    let services = services::plan(config, job, variables, &mut warnings)?;
    let mut containers = vec![build];
    containers.extend(services.containers);
    let host_aliases = network::host_aliases(config, services.host_alias);

    // One decision: the pull Secret exists when some source names a registry.
    let (registry_secret, pull_secrets) =
        images::pull_secrets(runner, config, payload, &pod_name, &mut warnings);

    let tolerations = tolerations::plan(config, variables, &mut warnings)?;
    let deadline = runner
        .feature_flag("FF_USE_POD_ACTIVE_DEADLINE_SECONDS")
        .then(|| active_deadline_seconds(payload.timeout_secs()));
    let pod_resources = resources(config, ContainerRole::Pod, variables, &mut warnings)?;

    let mut pod = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: deadline,
            termination_grace_period_seconds: config.pod_termination_grace_period_seconds,
            service_account_name: service_account,
            automount_service_account_token: config.automount_service_account_token,
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            affinity: scheduling::affinity(config),
            image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
                pull_secrets
                    .into_iter()
                    .map(|name| k8s_openapi::api::core::v1::LocalObjectReference { name })
                    .collect()
            }),
            security_context: security::pod_security_context(config),
            dns_policy: config.dns_policy.map(|d| d.kubernetes_name().to_owned()),
            dns_config: network::dns_config(config),
            host_aliases: (!host_aliases.is_empty()).then_some(host_aliases),
            priority_class_name: config.priority_class_name.clone(),
            runtime_class_name: config.runtime_class_name.clone(),
            scheduler_name: config.scheduler_name.clone(),
            init_containers: Some(vec![init]),
            containers,
            volumes: Some(volumes),
            resources: pod_resources,
            ..Default::default()
        }),
        status: None,
    };
    // Last, as gitlab-runner's `setupBuildPod` applies them: the pod_spec patches.
    pod.spec = pod
        .spec
        .take()
        .map(|spec| pod_spec_patch::apply(runner, &config.pod_spec, variables, spec, &mut warnings))
        .transpose()?;
    Ok(PodPlan {
        namespace,
        pod,
        spec_secret,
        registry_secret,
        warnings,
        pull_policies: policies.lists(),
        bearer_token,
    })
}

/// The job timeout plus [`DEADLINE_GRACE_SECS`], saturated at the API server's bound: it
/// refuses an `activeDeadlineSeconds` outside `1..=2^31-1` (`ValidatePodSpec` in
/// `pkg/apis/core/validation/validation.go`).
pub fn active_deadline_seconds(timeout_secs: u64) -> i64 {
    i64::try_from(timeout_secs)
        .unwrap_or(i64::MAX)
        .saturating_add(DEADLINE_GRACE_SECS)
        .clamp(1, i64::from(i32::MAX))
}
