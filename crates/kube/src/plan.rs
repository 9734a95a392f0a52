//! The pod plan: the job Pod (and the names of its Secrets) exactly as the executor creates
//! it, built purely from the runner's configuration and the job payload, so that it can be
//! printed (`podrunner plan`), golden-tested and validated against Kubernetes' schemas.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource,
    HostAlias, HostPathVolumeSource, KeyToPath, NFSVolumeSource, PersistentVolumeClaimVolumeSource,
    Pod, PodDNSConfig, PodDNSConfigOption, PodSecurityContext, PodSpec, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podrunner_config::kubernetes::{ContainerRole, ContainerSecurityContext, KubernetesConfig};
use podrunner_config::{Quantity, RunnerConfig, Wildcard};

pub use pod_spec_patch::FLAG as ADVANCED_POD_SPEC_FLAG;
use podrunner_gitlab::JobPayload;

use crate::pull_policy::PullAttempts;

mod names;
mod overwrites;
mod pod_spec_patch;
mod services;
mod strategic_merge;
mod tolerations;
mod users;

use overwrites::{MapKind, bearer_token, in_runner_label_namespace, map_overwrites, resources};

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
}

/// The job's variables as the job sees them (expanded in order, the last of a name winning),
/// as gitlab-runner's `GetAllVariables()` gives them to overwrites and expansion.
struct JobVariables(podrunner_agent::variables::Variables);

impl JobVariables {
    fn new(payload: &JobPayload) -> Self {
        let mut variables = podrunner_agent::variables::Variables::new();
        for variable in &payload.job.variables {
            variables.push(podrunner_agent::variables::Variable::from_payload(variable));
        }
        JobVariables(variables)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn expand(&self, text: &str) -> String {
        expand_like_runner(&self.0, text)
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .effective()
            .into_iter()
            .filter(move |v| v.key.starts_with(prefix))
            .map(|v| (v.key.as_str(), v.value.as_str()))
    }
}

/// `text` expanded with `variables` as gitlab-runner's `Variables.ExpandValue` does
/// (`os.Expand` with `Variables.Get`, `common/spec/variables.go`): `$$` gives `$`, the other
/// shell specials (`$*`, `$1`...) give nothing.
fn expand_like_runner(variables: &podrunner_agent::variables::Variables, text: &str) -> String {
    podrunner_config::expand_with(text, |name| match name {
        "$" => Some("$".to_owned()),
        "*" | "#" | "@" | "!" | "?" => None,
        _ if name.len() == 1 && name.as_bytes()[0].is_ascii_digit() => None,
        _ => variables.get(name).map(str::to_owned),
    })
}

/// A label value as Kubernetes accepts it: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends; other characters become `_`.
pub fn sanitize_label_value(value: &str) -> String {
    let replaced: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = replaced.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut cut: String = trimmed.chars().take(63).collect();
    while cut.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        cut.pop();
    }
    cut
}

fn kube_quantity(q: &Quantity) -> KubeQuantity {
    KubeQuantity(q.to_string())
}

/// The security context of a container: the role's own context over the runner's
/// `privileged`/`allow_privilege_escalation`, `NET_RAW` dropped unless added, then
/// `cap_add`/`cap_drop` (drop wins).
fn security_context(
    config: &KubernetesConfig,
    own: Option<&ContainerSecurityContext>,
) -> SecurityContext {
    let mut add: Vec<String> = config.cap_add.clone();
    let mut drop: Vec<String> = Vec::new();
    if !add.iter().any(|c| c == "NET_RAW") {
        drop.push("NET_RAW".to_owned());
    }
    drop.extend(config.cap_drop.iter().cloned());
    if let Some(capabilities) = own.and_then(|o| o.capabilities.as_ref()) {
        add.extend(capabilities.add.iter().cloned());
        drop.extend(capabilities.drop.iter().cloned());
    }
    add.retain(|c| !drop.contains(c));
    add.dedup();
    drop.dedup();
    let profile = |p: &podrunner_config::kubernetes::SecurityProfile| {
        (
            p.profile_type.clone().unwrap_or_default(),
            p.localhost_profile.clone(),
        )
    };
    SecurityContext {
        privileged: own.and_then(|o| o.privileged).or(config.privileged),
        allow_privilege_escalation: own
            .and_then(|o| o.allow_privilege_escalation)
            .or(config.allow_privilege_escalation),
        run_as_user: own.and_then(|o| o.run_as_user),
        run_as_group: own.and_then(|o| o.run_as_group),
        run_as_non_root: own.and_then(|o| o.run_as_non_root),
        read_only_root_filesystem: own.and_then(|o| o.read_only_root_filesystem),
        proc_mount: own.and_then(|o| o.proc_mount.as_deref()).map(|p| {
            if p == "unmasked" {
                "Unmasked"
            } else {
                "Default"
            }
            .to_owned()
        }),
        se_linux_options: own.and_then(|o| o.selinux_type.clone()).map(|t| {
            k8s_openapi::api::core::v1::SELinuxOptions {
                type_: Some(t),
                ..Default::default()
            }
        }),
        seccomp_profile: own
            .and_then(|o| o.seccomp_profile.as_ref())
            .map(profile)
            .map(
                |(type_, localhost_profile)| k8s_openapi::api::core::v1::SeccompProfile {
                    type_,
                    localhost_profile,
                },
            ),
        app_armor_profile: own
            .and_then(|o| o.app_armor_profile.as_ref())
            .map(profile)
            .map(
                |(type_, localhost_profile)| k8s_openapi::api::core::v1::AppArmorProfile {
                    type_,
                    localhost_profile,
                },
            ),
        capabilities: Some(Capabilities {
            add: (!add.is_empty()).then_some(add),
            drop: (!drop.is_empty()).then_some(drop),
        }),
        ..Default::default()
    }
}

fn allowed(patterns: &[Wildcard], image: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(image))
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
    let config = runner.kubernetes_or_default();
    let job = &payload.job;
    let variables = JobVariables::new(payload);
    let mut warnings = Vec::new();

    let mut namespace = config.namespace().to_owned();
    if let Some(asked) = variables
        .get("KUBERNETES_NAMESPACE_OVERWRITE")
        .filter(|v| !v.is_empty())
    {
        match &config.namespace_overwrite_allowed {
            Some(gate) if gate.is_match(asked) => namespace = asked.to_owned(),
            Some(gate) => {
                return Err(PlanError::Overwrite {
                    variable: "KUBERNETES_NAMESPACE_OVERWRITE".into(),
                    reason: format!("{asked:?} does not match {:?}", gate.as_str()),
                });
            }
            None => warnings.push(
                "KUBERNETES_NAMESPACE_OVERWRITE is ignored: namespace_overwrite_allowed is not set"
                    .into(),
            ),
        }
    }
    if config.namespace_per_job {
        namespace = crate::namespaces::per_job_name(job.id);
    } else {
        let origin = if namespace == config.namespace() {
            "namespace"
        } else {
            "KUBERNETES_NAMESPACE_OVERWRITE"
        };
        PlanError::check(origin, &namespace, "namespace", names::dns1123_label)?;
    }
    bearer_token(&config, &variables, &mut warnings)?;
    let mut service_account = config.service_account.clone();
    if let Some(asked) = variables
        .get("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE")
        .filter(|v| !v.is_empty())
    {
        match &config.service_account_overwrite_allowed {
            Some(gate) if gate.is_match(asked) => {
                PlanError::check("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", asked, "service account name", names::dns1123_subdomain)?;
                service_account = Some(asked.to_owned());
            }
            Some(gate) => return Err(PlanError::Overwrite { variable: "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE".into(), reason: format!("{asked:?} does not match {:?}", gate.as_str()) }),
            None => warnings.push("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE is ignored: service_account_overwrite_allowed is not set".into()),
        }
    }

    let default_image = config
        .image
        .as_deref()
        .map(|i| variables.expand(i))
        .filter(|i| !i.is_empty());
    // As gitlab-runner's `expandContainerOptions` (`common/build.go`): the job's image with
    // the job's variables, before the allow-list and the pod.
    let image = Some(variables.expand(&job.image.name))
        .filter(|i| !i.is_empty())
        .or(default_image.clone())
        .ok_or(PlanError::NoImage)?;
    if Some(&image) != default_image.as_ref() && !allowed(&config.allowed_images, &image) {
        return Err(PlanError::ImageNotAllowed(image));
    }

    let pod_name = match attempts.attempt() {
        1 => format!("podrunner-job-{}", job.id),
        n => format!("podrunner-job-{}-{n}", job.id),
    };
    // gitlab-runner's helper and init-permissions containers take the build image's list.
    let image_policies = crate::pull_policy::effective(
        "build",
        &job.image.pull_policy,
        &config.pull_policy,
        &config.allowed_pull_policies,
    )?;
    let policy_for = |container: &str| {
        attempts
            .policy_for(container, &image_policies)
            .and_then(|p| p.image_pull_policy())
    };
    let spec_secret = format!("{pod_name}-spec");
    let info = &job.job_info;
    let full_path = info.project_full_path.trim_matches('/');
    let namespace_path = full_path.rsplit_once('/').map(|(ns, _)| ns).unwrap_or("");
    let root_namespace = full_path.split('/').next().unwrap_or("");
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &config.pod_labels {
        if in_runner_label_namespace(key) {
            warnings.push(format!(
                "pod_labels.{key:?} is ignored: labels in the runner.gitlab.com namespace cannot be overwritten"
            ));
            continue;
        }
        MapKind::Labels.check("pod_labels", key, value)?;
        labels.insert(key.clone(), sanitize_label_value(&variables.expand(value)));
    }
    map_overwrites(
        &variables,
        "KUBERNETES_POD_LABELS_",
        MapKind::Labels,
        config.pod_labels_overwrite_allowed.as_ref(),
        &mut labels,
        &mut warnings,
    )?;
    for (key, value) in &config.pod_annotations {
        MapKind::Annotations.check("pod_annotations", key, value)?;
        annotations.insert(key.clone(), variables.expand(value));
    }
    map_overwrites(
        &variables,
        "KUBERNETES_POD_ANNOTATIONS_",
        MapKind::Annotations,
        config.pod_annotations_overwrite_allowed.as_ref(),
        &mut annotations,
        &mut warnings,
    )?;
    // The runner's own labels cannot be overridden.
    let own_labels = [
        ("project.runner.gitlab.com/id", info.project_id.to_string()),
        ("project.runner.gitlab.com/name", info.project_name.clone()),
        (
            "project.runner.gitlab.com/namespace",
            namespace_path.to_owned(),
        ),
        (
            "project.runner.gitlab.com/namespace-id",
            info.namespace_id.to_string(),
        ),
        (
            "project.runner.gitlab.com/root-namespace",
            root_namespace.to_owned(),
        ),
        (
            "project.runner.gitlab.com/root-namespace-id",
            info.root_namespace_id.to_string(),
        ),
        (
            "manager.runner.gitlab.com/name",
            runner.name.clone().unwrap_or_default(),
        ),
        (
            "manager.runner.gitlab.com/id-short",
            context.runner_short_token.to_owned(),
        ),
        ("job.runner.gitlab.com/pod", pod_name.clone()),
        (MANAGER_LABEL, context.system_id.to_owned()),
        (JOB_LABEL, job.id.to_string()),
    ];
    for (key, value) in own_labels {
        labels.insert(key.to_owned(), sanitize_label_value(&value));
    }
    for (key, value) in [
        ("job.runner.gitlab.com/id", job.id.to_string()),
        (
            "job.runner.gitlab.com/url",
            variables.get("CI_JOB_URL").unwrap_or_default().to_owned(),
        ),
        ("job.runner.gitlab.com/sha", job.git_info.sha.clone()),
        (
            "job.runner.gitlab.com/before_sha",
            job.git_info.before_sha.clone(),
        ),
        ("job.runner.gitlab.com/ref", job.git_info.git_ref.clone()),
        ("job.runner.gitlab.com/name", info.name.clone()),
        (
            "job.runner.gitlab.com/timeout",
            podrunner_config::GoDuration::from_secs(payload.timeout_secs()).to_string(),
        ),
    ] {
        annotations.entry(key.to_owned()).or_insert(value);
    }
    let annotation_size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if annotation_size > names::TOTAL_ANNOTATION_SIZE_LIMIT {
        return Err(PlanError::AnnotationsTooLarge {
            origin: "pod_annotations and KUBERNETES_POD_ANNOTATIONS_*".into(),
            size: annotation_size,
            limit: names::TOTAL_ANNOTATION_SIZE_LIMIT,
        });
    }

    let mut node_selector = config.node_selector.clone();
    for (key, value) in &node_selector {
        MapKind::NodeSelector.check("node_selector", key, value)?;
    }
    map_overwrites(
        &variables,
        "KUBERNETES_NODE_SELECTOR_",
        MapKind::NodeSelector,
        config.node_selector_overwrite_allowed.as_ref(),
        &mut node_selector,
        &mut warnings,
    )?;

    // Volumes: the agent, its spec, the builds directory, then the user's.
    let builds_dir = runner.builds_dir();
    let mut volumes = vec![
        Volume {
            name: "podrunner-bin".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "podrunner-spec".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(spec_secret.clone()),
                // Readable by whatever user the build container runs as: the kubelet writes
                // Secret files root-owned and changes ownership only for fsGroup
                // (kubernetes pkg/volume/volume_linux.go SetVolumeOwnership), so 0400 locks
                // out an image's non-root USER and run_as_user without fs_group. No other pod
                // can read it: the Secret is this pod's alone (named after it, owned by it),
                // and only the containers that mount this volume see the file.
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "builds".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        handover_volume(),
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "podrunner-bin".into(),
            mount_path: AGENT_BIN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "podrunner-spec".into(),
            mount_path: SPEC_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "builds".into(),
            mount_path: builds_dir.clone(),
            ..Default::default()
        },
        VolumeMount {
            name: "podrunner-handover".into(),
            mount_path: HANDOVER_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    let v = &config.volumes;
    let mount = |name: &str,
                 path: &str,
                 sub_path: &Option<String>,
                 read_only: bool,
                 propagation: Option<&String>| VolumeMount {
        name: name.to_owned(),
        mount_path: variables.expand(path),
        sub_path: sub_path.clone(),
        read_only: read_only.then_some(true),
        mount_propagation: propagation.cloned(),
        ..Default::default()
    };
    for h in &v.host_path {
        volumes.push(Volume {
            name: h.name.clone(),
            host_path: Some(HostPathVolumeSource {
                path: h.host_path.clone().unwrap_or_else(|| h.mount_path.clone()),
                type_: None,
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &h.name,
            &h.mount_path,
            &h.sub_path,
            h.read_only,
            h.mount_propagation.as_ref(),
        ));
    }
    for p in &v.pvc {
        let claim = variables.expand(&p.name);
        // The claim names the volume too, so it must be a DNS-1123 label (`ValidateVolumes`).
        PlanError::check(
            format!("volumes.pvc name {:?}", p.name),
            &claim,
            "volume name",
            names::dns1123_label,
        )?;
        volumes.push(Volume {
            name: claim.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: p.read_only.then_some(true),
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &claim,
            &p.mount_path,
            &p.sub_path,
            p.read_only,
            p.mount_propagation.as_ref(),
        ));
    }
    let items = |map: &BTreeMap<String, String>| {
        (!map.is_empty()).then(|| {
            map.iter()
                .map(|(key, path)| KeyToPath {
                    key: key.clone(),
                    path: path.clone(),
                    ..Default::default()
                })
                .collect()
        })
    };
    for c in &v.config_map {
        volumes.push(Volume {
            name: c.name.clone(),
            config_map: Some(ConfigMapVolumeSource {
                name: c.name.clone(),
                items: items(&c.items),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &c.name,
            &c.mount_path,
            &c.sub_path,
            c.read_only,
            None,
        ));
    }
    for s in &v.secret {
        volumes.push(Volume {
            name: s.name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(s.name.clone()),
                items: items(&s.items),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &s.name,
            &s.mount_path,
            &s.sub_path,
            s.read_only,
            None,
        ));
    }
    for e in &v.empty_dir {
        volumes.push(Volume {
            name: e.name.clone(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: e.medium.clone(),
                size_limit: e.size_limit.as_ref().map(kube_quantity),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(&e.name, &e.mount_path, &e.sub_path, false, None));
    }
    for c in &v.csi {
        volumes.push(Volume {
            name: c.name.clone(),
            csi: Some(CSIVolumeSource {
                driver: c.driver.clone(),
                fs_type: c.fs_type.clone(),
                read_only: c.read_only.then_some(true),
                volume_attributes: (!c.volume_attributes.is_empty())
                    .then(|| c.volume_attributes.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &c.name,
            &c.mount_path,
            &c.sub_path,
            c.read_only,
            None,
        ));
    }
    for n in &v.nfs {
        volumes.push(Volume {
            name: n.name.clone(),
            nfs: Some(NFSVolumeSource {
                server: n.server.clone(),
                path: n.path.clone(),
                read_only: n.read_only.then_some(true),
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &n.name,
            &n.mount_path,
            &n.sub_path,
            n.read_only,
            None,
        ));
    }

    let mut build_security =
        security_context(&config, config.build_container_security_context.as_ref());
    users::apply(
        &config,
        &mut build_security,
        config.build_container_security_context.as_ref(),
        &users::job_user(&job.image, &variables)?,
        "build",
        &mut warnings,
    );
    let build = Container {
        name: "build".into(),
        image: Some(image.clone()),
        image_pull_policy: policy_for("build"),
        command: Some(vec![
            format!("{AGENT_BIN_DIR}/podrunner"),
            "agent".into(),
            "--spec".into(),
            format!("{SPEC_DIR}/job.json"),
        ]),
        // What the executor hands the agent through pod annotations, as they are when the
        // container starts: the start of the job's log (the executor sets and updates it while
        // the pod is pending), Fargate's size for the pod and its price.
        env: Some(vec![
            annotation_env(
                podrunner_agent::TRACE_PRELUDE_ENV,
                podrunner_agent::TRACE_PRELUDE_ANNOTATION,
            ),
            annotation_env(podrunner_agent::FARGATE_CAPACITY_ENV, "CapacityProvisioned"),
            annotation_env(
                podrunner_agent::FARGATE_PRICE_ENV,
                podrunner_agent::FARGATE_PRICE_ANNOTATION,
            ),
            // The prelude as the kubelet refreshes it while the container runs.
            k8s_openapi::api::core::v1::EnvVar {
                name: podrunner_agent::TRACE_PRELUDE_FILE_ENV.into(),
                value: Some(format!("{HANDOVER_DIR}/trace-prelude")),
                value_from: None,
            },
        ]),
        resources: resources(&config, ContainerRole::Build, &variables, &mut warnings)?,
        security_context: Some(build_security),
        volume_mounts: Some(mounts),
        lifecycle: config.container_lifecycle.as_ref().map(lifecycle),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("File".into()),
        ..Default::default()
    };
    let init = Container {
        name: "podrunner-init".into(),
        image: Some(context.init_image.to_owned()),
        image_pull_policy: policy_for("podrunner-init"),
        command: Some(vec![
            "/podrunner".into(),
            "install-agent".into(),
            AGENT_INSTALL_DIR.into(),
        ]),
        resources: resources(&config, ContainerRole::Helper, &variables, &mut warnings)?,
        security_context: Some(security_context(
            &config,
            config.init_permissions_container_security_context.as_ref(),
        )),
        volume_mounts: Some(vec![VolumeMount {
            name: "podrunner-bin".into(),
            mount_path: AGENT_INSTALL_DIR.into(),
            ..Default::default()
        }]),
        ..Default::default()
    };

    // Services: the runner's first, then the job's; their host alias comes first, as the
    // hosts file resolves the first match (`createHostAliases` in `host_aliases.go`).
    let services = services::plan(&config, job, &variables, &mut warnings)?;
    let mut containers = vec![build];
    containers.extend(services.containers);
    let all_host_aliases: Vec<HostAlias> = services
        .host_alias
        .into_iter()
        .chain(config.host_aliases.iter().map(|h| HostAlias {
            ip: h.ip.clone(),
            hostnames: Some(h.hostnames.clone()),
        }))
        .collect();

    // One decision: the pull Secret exists when some source names a registry.
    let registry_auth = crate::registry_auth::resolve(payload, &runner.environment);
    warnings.extend(registry_auth.notes.iter().cloned());
    let registry_secret = registry_auth
        .docker_config_json()
        .map(|_| format!("{pod_name}-registry"));
    let mut pull_secrets: Vec<String> = if config.use_service_account_image_pull_secrets {
        Vec::new()
    } else {
        config.image_pull_secrets.clone()
    };
    pull_secrets.extend(registry_secret.iter().cloned());

    let tolerations = tolerations::plan(&config, &variables, &mut warnings)?;
    let pod_security = config
        .pod_security_context
        .as_ref()
        .map(|p| PodSecurityContext {
            fs_group: p.fs_group,
            run_as_group: p.run_as_group,
            run_as_non_root: p.run_as_non_root,
            run_as_user: p.run_as_user,
            supplemental_groups: (!p.supplemental_groups.is_empty())
                .then(|| p.supplemental_groups.clone()),
            se_linux_options: p.selinux_type.clone().map(|t| {
                k8s_openapi::api::core::v1::SELinuxOptions {
                    type_: Some(t),
                    ..Default::default()
                }
            }),
            // Pod-level profiles: what PodSecurity `restricted` asks of every job pod.
            seccomp_profile: p.seccomp_profile.as_ref().map(|profile| {
                k8s_openapi::api::core::v1::SeccompProfile {
                    type_: profile.profile_type.clone().unwrap_or_default(),
                    localhost_profile: profile.localhost_profile.clone(),
                }
            }),
            app_armor_profile: p.app_armor_profile.as_ref().map(|profile| {
                k8s_openapi::api::core::v1::AppArmorProfile {
                    type_: profile.profile_type.clone().unwrap_or_default(),
                    localhost_profile: profile.localhost_profile.clone(),
                }
            }),
            ..Default::default()
        });
    let deadline = runner
        .feature_flag("FF_USE_POD_ACTIVE_DEADLINE_SECONDS")
        .then(|| active_deadline_seconds(payload.timeout_secs()));
    let pod_resources = resources(&config, ContainerRole::Pod, &variables, &mut warnings)?;

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
            affinity: config
                .affinity
                .as_ref()
                .and_then(|a| serde_json::to_value(a).ok())
                .and_then(|v| serde_json::from_value(camel_case(v)).ok()),
            image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
                pull_secrets
                    .into_iter()
                    .map(|name| k8s_openapi::api::core::v1::LocalObjectReference { name })
                    .collect()
            }),
            security_context: pod_security,
            dns_policy: config.dns_policy.map(|d| d.kubernetes_name().to_owned()),
            dns_config: config.dns_config.as_ref().map(|d| PodDNSConfig {
                nameservers: (!d.nameservers.is_empty()).then(|| d.nameservers.clone()),
                searches: (!d.searches.is_empty()).then(|| d.searches.clone()),
                options: (!d.options.is_empty()).then(|| {
                    d.options
                        .iter()
                        .map(|o| PodDNSConfigOption {
                            name: Some(o.name.clone()),
                            value: o.value.clone(),
                        })
                        .collect()
                }),
            }),
            host_aliases: (!all_host_aliases.is_empty()).then_some(all_host_aliases),
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
        .map(|spec| {
            pod_spec_patch::apply(runner, &config.pod_spec, &variables, spec, &mut warnings)
        })
        .transpose()?;
    let pull_policies = ["build", "podrunner-init"]
        .into_iter()
        .map(|c| (c.to_owned(), image_policies.clone()))
        .collect();
    Ok(PodPlan {
        namespace,
        pod,
        spec_secret,
        registry_secret,
        warnings,
        pull_policies,
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

fn lifecycle(
    l: &podrunner_config::kubernetes::ContainerLifecycle,
) -> k8s_openapi::api::core::v1::Lifecycle {
    use k8s_openapi::api::core::v1::{
        ExecAction, HTTPGetAction, HTTPHeader, LifecycleHandler, TCPSocketAction,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let handler = |h: &podrunner_config::kubernetes::LifecycleHandler| LifecycleHandler {
        exec: h.exec.as_ref().map(|e| ExecAction {
            command: Some(e.command.clone()),
        }),
        http_get: h.http_get.as_ref().map(|g| HTTPGetAction {
            host: g.host.clone(),
            port: IntOrString::Int(g.port as i32),
            path: g.path.clone(),
            scheme: g.scheme.clone(),
            http_headers: (!g.http_headers.is_empty()).then(|| {
                g.http_headers
                    .iter()
                    .map(|h| HTTPHeader {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect()
            }),
            ..Default::default()
        }),
        tcp_socket: h.tcp_socket.as_ref().map(|t| TCPSocketAction {
            host: t.host.clone(),
            port: IntOrString::Int(t.port as i32),
        }),
        ..Default::default()
    };
    k8s_openapi::api::core::v1::Lifecycle {
        post_start: l.post_start.as_ref().map(handler),
        pre_stop: l.pre_stop.as_ref().map(handler),
        ..Default::default()
    }
}

/// snake_case keys (as config.toml writes affinity) to Kubernetes' camelCase.
fn camel_case(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                .map(|(k, v)| {
                    let mut out = String::new();
                    let mut upper = false;
                    for c in k.chars() {
                        if c == '_' {
                            upper = true;
                        } else if upper {
                            out.push(c.to_ascii_uppercase());
                            upper = false;
                        } else {
                            out.push(c);
                        }
                    }
                    (out, camel_case(v))
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(camel_case).collect())
        }
        other => other,
    }
}

/// An environment variable with the pod's annotation `annotation` (empty when it is absent).
/// The trace prelude annotation as a file the kubelet rewrites when it syncs the pod: the
/// agent learns from it the lines the manager sent after the build container's environment
/// was resolved.
fn handover_volume() -> Volume {
    use k8s_openapi::api::core::v1::{
        DownwardAPIVolumeFile, DownwardAPIVolumeSource, ObjectFieldSelector,
    };
    Volume {
        name: "podrunner-handover".into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "trace-prelude".into(),
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: format!(
                        "metadata.annotations['{}']",
                        podrunner_agent::TRACE_PRELUDE_ANNOTATION
                    ),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn annotation_env(name: &str, annotation: &str) -> k8s_openapi::api::core::v1::EnvVar {
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: format!("metadata.annotations['{annotation}']"),
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_sanitized() {
        assert_eq!(sanitize_label_value("My Project!"), "My_Project");
        assert_eq!(sanitize_label_value("-a.b-"), "a.b");
        assert_eq!(sanitize_label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(sanitize_label_value("ok-value_1.2"), "ok-value_1.2");
    }
}
