//! The pod plan: the job Pod (and the names of its Secrets) exactly as the executor creates
//! it, built purely from the runner's configuration and the job payload, so that it can be
//! printed (`podrunner plan`), golden-tested and validated against Kubernetes' schemas.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource,
    HostAlias, HostPathVolumeSource, KeyToPath, NFSVolumeSource, PersistentVolumeClaimVolumeSource,
    Pod, PodDNSConfig, PodDNSConfigOption, PodSecurityContext, PodSpec, ResourceRequirements,
    SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podrunner_config::kubernetes::{
    ContainerRole, ContainerSecurityContext, KubernetesConfig, ResourceKind,
};
use podrunner_config::{Quantity, RunnerConfig, Wildcard};
use podrunner_gitlab::JobPayload;

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
    /// A pull policy is not allowed or not known.
    #[error(
        "pull policy {0:?} is not allowed (allowed_pull_policies) or not one of always, if-not-present, never"
    )]
    PullPolicy(String),
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
    /// Name of the registry-credentials Secret, when the job has registry credentials.
    pub registry_secret: Option<String>,
    /// Overwrites that were ignored, and similar notes for the trace.
    pub warnings: Vec<String>,
}

/// The job's variables, last one of a name winning, for expansion and overwrites.
struct JobVariables(Vec<(String, String)>);

impl JobVariables {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn expand(&self, text: &str) -> String {
        podrunner_config::expand_with(text, |name| self.get(name).map(str::to_owned))
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
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

/// Whether `name` is a DNS-1123 label (container names, service aliases).
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn kube_quantity(q: &Quantity) -> KubeQuantity {
    KubeQuantity(q.to_string())
}

/// The resources of a role, with the job's `KUBERNETES_*` overwrites applied within
/// `*_overwrite_max_allowed`.
fn resources(
    config: &KubernetesConfig,
    role: ContainerRole,
    variables: &JobVariables,
    warnings: &mut Vec<String>,
) -> Result<Option<ResourceRequirements>, PlanError> {
    let prefix = match role {
        ContainerRole::Build => "KUBERNETES_",
        ContainerRole::Helper => "KUBERNETES_HELPER_",
        ContainerRole::Service => "KUBERNETES_SERVICE_",
        ContainerRole::Pod => "KUBERNETES_POD_",
    };
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for kind in ResourceKind::ALL {
        let Some(setting) = config.resource(role, kind) else {
            continue;
        };
        let kind_name = kind.key().to_ascii_uppercase();
        for (is_limit, configured, max) in [
            (false, &setting.request, &setting.request_overwrite_max),
            (true, &setting.limit, &setting.limit_overwrite_max),
        ] {
            let variable = format!(
                "{prefix}{kind_name}_{}",
                if is_limit { "LIMIT" } else { "REQUEST" }
            );
            let mut value = configured.clone();
            if let Some(asked) = variables.get(&variable).filter(|v| !v.trim().is_empty()) {
                match max {
                    None => warnings.push(format!(
                        "{variable} is ignored: the runner sets no {}{}_{}_overwrite_max_allowed",
                        role.key_prefix(),
                        kind.key(),
                        if is_limit { "limit" } else { "request" }
                    )),
                    Some(max) => {
                        let asked_quantity: Quantity = asked.trim().parse().map_err(
                            |e: podrunner_config::QuantityError| PlanError::Overwrite {
                                variable: variable.clone(),
                                reason: e.to_string(),
                            },
                        )?;
                        if &asked_quantity > max {
                            return Err(PlanError::Overwrite {
                                variable,
                                reason: format!(
                                    "{asked_quantity} is above the allowed maximum {max}"
                                ),
                            });
                        }
                        value = Some(asked_quantity);
                    }
                }
            }
            if let Some(value) = value {
                let target = if is_limit { &mut limits } else { &mut requests };
                target.insert(kind.kubernetes_name().to_owned(), kube_quantity(&value));
            }
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Ok(None);
    }
    Ok(Some(ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }))
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

fn pull_policy(
    job_policies: &[String],
    config: &KubernetesConfig,
) -> Result<Option<String>, PlanError> {
    let chosen = job_policies
        .first()
        .cloned()
        .or_else(|| config.pull_policy.0.first().map(|p| p.as_str().to_owned()));
    let Some(policy) = chosen else {
        return Ok(None);
    };
    let parsed: podrunner_config::PullPolicy = policy
        .parse()
        .map_err(|_| PlanError::PullPolicy(policy.clone()))?;
    if !config.allowed_pull_policies.0.is_empty()
        && !config.allowed_pull_policies.0.contains(&parsed)
    {
        return Err(PlanError::PullPolicy(policy));
    }
    Ok(Some(parsed.kubernetes_name().to_owned()))
}

fn allowed(patterns: &[Wildcard], image: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(image))
}

/// Aliases gitlab-runner derives from a service image: `registry/group/img:tag` gives
/// `registry__group__img` and `registry-group-img`.
fn image_aliases(image: &str) -> Vec<String> {
    let without_tag = image.rsplit_once('@').map_or(image, |(n, _)| n);
    let without_tag = match without_tag.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => without_tag,
    };
    let mut out = vec![
        without_tag.replace('/', "__"),
        without_tag.replace('/', "-"),
    ];
    out.dedup();
    out
}

/// Key/value overwrites of the form `KEY_PREFIX_x: "key=value"`, gated by `gate`.
fn map_overwrites(
    variables: &JobVariables,
    prefix: &str,
    gate: Option<&podrunner_config::ConfigRegex>,
    target: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<(), PlanError> {
    for (variable, value) in variables.with_prefix(prefix) {
        let Some(gate) = gate else {
            warnings.push(format!(
                "{variable} is ignored: the runner does not allow this overwrite"
            ));
            continue;
        };
        let Some((key, val)) = value.split_once('=') else {
            return Err(PlanError::Overwrite {
                variable: variable.to_owned(),
                reason: format!("{value:?} is not key=value"),
            });
        };
        if !gate.is_match(value) {
            return Err(PlanError::Overwrite {
                variable: variable.to_owned(),
                reason: format!(
                    "{value:?} does not match the allowed pattern {:?}",
                    gate.as_str()
                ),
            });
        }
        target.insert(key.to_owned(), val.to_owned());
    }
    Ok(())
}

/// A service container to add, from the config or the job.
struct ServiceSpec {
    image: String,
    alias: String,
    entrypoint: Vec<String>,
    command: Vec<String>,
    environment: Vec<(String, String)>,
}

/// Plans the pod of a job for a kubernetes runner.
pub fn plan(
    runner: &RunnerConfig,
    payload: &JobPayload,
    context: &PlanContext<'_>,
) -> Result<PodPlan, PlanError> {
    let config = runner.kubernetes_or_default();
    let job = &payload.job;
    let variables = JobVariables(
        job.variables
            .iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect(),
    );
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
        namespace = format!("ci-job-{}", job.id);
    }
    let mut service_account = config.service_account.clone();
    if let Some(asked) = variables
        .get("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE")
        .filter(|v| !v.is_empty())
    {
        match &config.service_account_overwrite_allowed {
            Some(gate) if gate.is_match(asked) => service_account = Some(asked.to_owned()),
            Some(gate) => return Err(PlanError::Overwrite { variable: "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE".into(), reason: format!("{asked:?} does not match {:?}", gate.as_str()) }),
            None => warnings.push("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE is ignored: service_account_overwrite_allowed is not set".into()),
        }
    }

    let default_image = config
        .image
        .as_deref()
        .map(|i| variables.expand(i))
        .filter(|i| !i.is_empty());
    let image = Some(job.image.name.clone())
        .filter(|i| !i.is_empty())
        .or(default_image.clone())
        .ok_or(PlanError::NoImage)?;
    if Some(&image) != default_image.as_ref() && !allowed(&config.allowed_images, &image) {
        return Err(PlanError::ImageNotAllowed(image));
    }

    let pod_name = format!("podrunner-job-{}", job.id);
    let spec_secret = format!("{pod_name}-spec");
    let info = &job.job_info;
    let full_path = info.project_full_path.trim_matches('/');
    let namespace_path = full_path.rsplit_once('/').map(|(ns, _)| ns).unwrap_or("");
    let root_namespace = full_path.split('/').next().unwrap_or("");
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &config.pod_labels {
        labels.insert(key.clone(), sanitize_label_value(&variables.expand(value)));
    }
    map_overwrites(
        &variables,
        "KUBERNETES_POD_LABELS_",
        config.pod_labels_overwrite_allowed.as_ref(),
        &mut labels,
        &mut warnings,
    )?;
    for (key, value) in &config.pod_annotations {
        annotations.insert(key.clone(), variables.expand(value));
    }
    map_overwrites(
        &variables,
        "KUBERNETES_POD_ANNOTATIONS_",
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

    let mut node_selector = config.node_selector.clone();
    map_overwrites(
        &variables,
        "KUBERNETES_NODE_SELECTOR_",
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
                default_mode: Some(0o400),
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

    let build = Container {
        name: "build".into(),
        image: Some(image.clone()),
        image_pull_policy: pull_policy(&job.image.pull_policy, &config)?,
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
        security_context: Some(security_context(
            &config,
            config.build_container_security_context.as_ref(),
        )),
        volume_mounts: Some(mounts),
        lifecycle: config.container_lifecycle.as_ref().map(lifecycle),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("File".into()),
        ..Default::default()
    };
    let init = Container {
        name: "podrunner-init".into(),
        image: Some(context.init_image.to_owned()),
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

    // Services: the runner's first, then the job's; named by alias, else svc-N.
    let mut containers = vec![build];
    let mut host_aliases: Vec<String> = Vec::new();
    let mut unnamed = 0;
    let services: Vec<ServiceSpec> = config
        .services
        .iter()
        .map(|s| ServiceSpec {
            image: variables.expand(&s.name),
            alias: s.alias.clone().unwrap_or_default(),
            entrypoint: s.entrypoint.clone(),
            command: s.command.clone(),
            environment: s
                .environment
                .iter()
                .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect(),
        })
        .chain(job.services.iter().map(|s| {
            ServiceSpec {
                image: s.name.clone(),
                alias: s.alias.clone(),
                entrypoint: s.entrypoint.clone(),
                command: s.command.clone(),
                environment: s
                    .variables
                    .iter()
                    .map(|v| (v.key.clone(), v.value.clone()))
                    .collect(),
            }
        }))
        .collect();
    for ServiceSpec {
        image,
        alias,
        entrypoint,
        command,
        environment,
    } in services
    {
        if !allowed(&config.allowed_services, &image) {
            return Err(PlanError::ServiceNotAllowed(image));
        }
        let aliases: Vec<String> = alias
            .split([' ', ','])
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let used: Vec<String> = containers.iter().map(|c| c.name.clone()).collect();
        let name = aliases
            .iter()
            .find(|a| is_dns_label(a) && !used.contains(a))
            .cloned()
            .unwrap_or_else(|| {
                let name = format!("svc-{unnamed}");
                unnamed += 1;
                name
            });
        host_aliases.extend(aliases.iter().cloned());
        host_aliases.extend(image_aliases(&image));
        containers.push(Container {
            name,
            image: Some(image),
            command: (!entrypoint.is_empty()).then_some(entrypoint),
            args: (!command.is_empty()).then_some(command),
            env: (!environment.is_empty()).then(|| {
                environment
                    .into_iter()
                    .map(|(name, value)| k8s_openapi::api::core::v1::EnvVar {
                        name,
                        value: Some(value.replace('$', "$$")),
                        value_from: None,
                    })
                    .collect()
            }),
            resources: resources(&config, ContainerRole::Service, &variables, &mut warnings)?,
            security_context: Some(security_context(
                &config,
                config.service_container_security_context.as_ref(),
            )),
            ..Default::default()
        });
    }
    host_aliases.sort();
    host_aliases.dedup();
    let mut all_host_aliases: Vec<HostAlias> = config
        .host_aliases
        .iter()
        .map(|h| HostAlias {
            ip: h.ip.clone(),
            hostnames: Some(h.hostnames.clone()),
        })
        .collect();
    if !host_aliases.is_empty() {
        all_host_aliases.push(HostAlias {
            ip: "127.0.0.1".into(),
            hostnames: Some(host_aliases),
        });
    }

    let registry_secret = job
        .credentials
        .iter()
        .any(|c| c.kind == "registry")
        .then(|| format!("{pod_name}-registry"));
    let mut pull_secrets: Vec<String> = if config.use_service_account_image_pull_secrets {
        Vec::new()
    } else {
        config.image_pull_secrets.clone()
    };
    pull_secrets.extend(registry_secret.iter().cloned());

    let tolerations: Vec<Toleration> = config
        .node_tolerations
        .iter()
        .map(|(key, effect)| {
            let (key, value) = key
                .split_once('=')
                .map_or((key.as_str(), None), |(k, v)| (k, Some(v.to_owned())));
            Toleration {
                key: (!key.is_empty()).then(|| key.to_owned()),
                operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
                value,
                effect: (!effect.is_empty()).then(|| effect.clone()),
                toleration_seconds: None,
            }
        })
        .collect();
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
            ..Default::default()
        });
    let deadline = runner
        .feature_flag("FF_USE_POD_ACTIVE_DEADLINE_SECONDS")
        .then(|| payload.timeout_secs() as i64 + DEADLINE_GRACE_SECS);
    let pod_resources = resources(&config, ContainerRole::Pod, &variables, &mut warnings)?;

    let pod = Pod {
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
    Ok(PodPlan {
        namespace,
        pod,
        spec_secret,
        registry_secret,
        warnings,
    })
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
        assert!(
            is_dns_label("postgres")
                && !is_dns_label("Postgres")
                && !is_dns_label("db.local")
                && !is_dns_label("-x")
        );
        assert_eq!(
            image_aliases("registry.example.com/group/postgres:16"),
            [
                "registry.example.com__group__postgres",
                "registry.example.com-group-postgres"
            ]
        );
        assert_eq!(image_aliases("postgres:16"), ["postgres"]);
        assert_eq!(
            image_aliases("localhost:5000/img"),
            ["localhost:5000__img", "localhost:5000-img"]
        );
    }
}
