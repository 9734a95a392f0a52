//! The one place that decides, for every key the model reads, whether podrunner honours it or
//! reads it without effect — and, for the latter, what to do instead. Only keys a file really
//! sets are reported: a default is not a setting.
//!
//! Keys are written as their table path with array indexes dropped (`runners.kubernetes.cpu_request`,
//! `runners.kubernetes.volumes.host_path.name`), in the file's own spelling (`runners.tls-ca-file`,
//! `runners.cache.s3.BucketName`). A segment may hold `*` for a family of keys
//! (`runners.kubernetes.helper_cpu_*`). An entry also covers the keys below it; below an ignored
//! entry everything is ignored, else the deepest entry decides.

use std::fmt;

use serde::Serialize;

use crate::diagnostics::{KeyPath, Location, Segment, SourceText, SpanIndex};
use crate::validate::Mode;

/// What podrunner does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// The product uses it. `by` is the code that reads it, as written in the product's source
    /// outside crates/config (whitespace aside); a test checks it is there.
    Honoured {
        /// The accessor or field expression that reads the key.
        by: &'static str,
    },
    /// Read so that the file loads, without effect.
    Ignored {
        /// What to do instead.
        advice: &'static str,
    },
}

/// One entry of [`SETTINGS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The key or key family, e.g. `runners.kubernetes.pod_spec`.
    pub key: &'static str,
    /// What podrunner does with it.
    pub treatment: Treatment,
}

impl Setting {
    /// The advice, when the key is ignored.
    pub fn advice(&self) -> Option<&'static str> {
        match self.treatment {
            Treatment::Ignored { advice } => Some(advice),
            Treatment::Honoured { .. } => None,
        }
    }
}

/// A key the file sets that podrunner reads but does not honour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredSetting {
    /// Where the key is written.
    pub location: Option<Location>,
    /// The key as written, e.g. `runners[0].kubernetes.pod_spec`.
    pub path: KeyPath,
    /// The entry of [`SETTINGS`] that covers it.
    pub key: &'static str,
    /// What to do instead.
    pub advice: &'static str,
}

impl fmt::Display for IgnoredSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        write!(f, "{} — {}", self.path, self.advice)
    }
}

/// The heading under which ignored settings are listed.
pub const HEADING: &str = "read but not honoured by podrunner";

const fn honoured(key: &'static str, by: &'static str) -> Setting {
    Setting {
        key,
        treatment: Treatment::Honoured { by },
    }
}

const fn ignored(key: &'static str, advice: &'static str) -> Setting {
    Setting {
        key,
        treatment: Treatment::Ignored { advice },
    }
}

const NO_HELPER_IMAGE: &str =
    "podrunner needs no helper image: the agent runs in the build container";
const FLAG_NOT_READ: &str = "podrunner does not read this feature flag: setting it changes nothing";
const SUSPEND: &str =
    "suspendable environments (experimental in gitlab-runner) are not offered by podrunner";
const NO_LABELS: &str = "not used by podrunner: labels are added to no job, log line or metric";

/// Every key the model reads, honoured or not.
pub const SETTINGS: &[Setting] = &[
    // The global section.
    honoured("concurrent", "self.config.concurrent.max(1)"),
    honoured("check_interval", "self.config.check_interval as u64"),
    honoured("log_level", "loaded.config.log_level"),
    honoured("log_format", "loaded.config.log_format"),
    honoured("listen_address", "config.listen_address.as_deref()"),
    honoured("shutdown_timeout", "self.config.shutdown_timeout as u64"),
    ignored(
        "connection_max_age",
        "not applied: podrunner's HTTP client keeps idle connections to GitLab for 90 s",
    ),
    ignored(
        "sentry_dsn",
        "errors are not sent to Sentry: collect the manager's log instead (log_format = \"json\")",
    ),
    ignored(
        "user",
        "not applied: the shell executor runs jobs as the user running podrunner; on Kubernetes set run_as_user in [runners.kubernetes.pod_security_context]",
    ),
    ignored("labels", NO_LABELS),
    ignored(
        "session_server",
        "interactive web terminals are not offered: remove [session_server]",
    ),
    // [[runners]]
    honoured("runners.name", "runner.name.clone().unwrap_or_default()"),
    honoured("runners.url", "runner.url.clone().unwrap_or_default()"),
    // Written by `register`, which keeps the runner's registration as gitlab-runner does.
    honoured("runners.id", "id: credentials.id"),
    honoured("runners.token", "runner.token.as_deref()"),
    honoured(
        "runners.token_obtained_at",
        "token_obtained_at: now_rfc3339()",
    ),
    honoured("runners.token_expires_at", "token_expires_at: credentials"),
    honoured(
        "runners.tls-ca-file",
        "runner.tls_ca_file.clone().map(PathBuf::from)",
    ),
    honoured(
        "runners.tls-cert-file",
        "runner.tls_cert_file.clone().map(PathBuf::from)",
    ),
    honoured(
        "runners.tls-key-file",
        "runner.tls_key_file.clone().map(PathBuf::from)",
    ),
    honoured("runners.executor", "match runner.executor"),
    honoured(
        "runners.shell",
        "runner.shell.map(|s| s.as_str().to_owned())",
    ),
    honoured("runners.limit", "usize::try_from(runner.limit)"),
    honoured(
        "runners.request_concurrency",
        "runner.request_concurrency.clamp(1, 64)",
    ),
    honoured(
        "runners.strict_check_interval",
        "self.runner.strict_check_interval",
    ),
    honoured("runners.output_limit", "runner.output_limit as u64"),
    honoured(
        "runners.unhealthy_requests_limit",
        "self.runner.unhealthy_requests_limit",
    ),
    honoured(
        "runners.unhealthy_interval",
        "self.runner.unhealthy_interval.get()",
    ),
    honoured(
        "runners.job_status_final_update_retry_limit",
        "runner.job_status_final_update_retry_limit.clamp(1, 100)",
    ),
    honoured("runners.builds_dir", "runner.builds_dir()"),
    honoured("runners.cache_dir", "runner.cache_dir()"),
    honoured(
        "runners.environment",
        "environment: runner.environment.clone()",
    ),
    honoured("runners.clone_url", "clone_url: runner.clone_url.clone()"),
    honoured(
        "runners.pre_get_sources_script",
        "runner.pre_get_sources_script.clone()",
    ),
    honoured(
        "runners.post_get_sources_script",
        "runner.post_get_sources_script.clone()",
    ),
    honoured(
        "runners.pre_build_script",
        "runner.pre_build_script.clone()",
    ),
    honoured(
        "runners.post_build_script",
        "runner.post_build_script.clone()",
    ),
    ignored(
        "runners.prepare_timeout",
        "not applied: the pod's scheduling is bounded by [runners.kubernetes] poll_timeout, the rest by the job timeout",
    ),
    ignored(
        "runners.get_sources_timeout",
        "not applied: fetching sources is bounded by the job timeout",
    ),
    honoured(
        "runners.debug_trace_disabled",
        "debug_trace_disabled: runner.debug_trace_disabled",
    ),
    ignored(
        "runners.safe_directory_checkout",
        "not applied: the agent always marks the checkout as a git safe.directory",
    ),
    ignored(
        "runners.clean_git_config",
        "not applied: the agent does not reset the git configuration after the checkout",
    ),
    honoured(
        "runners.feature_flags.FF_MASK_ALL_DEFAULT_TOKENS",
        "flag(\"FF_MASK_ALL_DEFAULT_TOKENS\")",
    ),
    honoured(
        "runners.feature_flags.FF_TIMESTAMPS",
        "flag(\"FF_TIMESTAMPS\")",
    ),
    honoured(
        "runners.feature_flags.FF_USE_DIRECT_DOWNLOAD",
        "self.spec.feature_flags.get(\"FF_USE_DIRECT_DOWNLOAD\")",
    ),
    honoured(
        "runners.feature_flags.FF_USE_POD_ACTIVE_DEADLINE_SECONDS",
        "runner.feature_flag(\"FF_USE_POD_ACTIVE_DEADLINE_SECONDS\")",
    ),
    ignored(
        "runners.feature_flags.FF_USE_ADVANCED_POD_SPEC_CONFIGURATION",
        "pod_spec is not applied yet: put the fields in the matching [runners.kubernetes] keys",
    ),
    ignored(
        "runners.feature_flags.FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY",
        "podrunner has no attach or exec strategy: the agent runs the job inside the build container",
    ),
    ignored(
        "runners.feature_flags.FF_USE_POWERSHELL_PATH_RESOLVER",
        "podrunner runs bash and sh only",
    ),
    ignored("runners.feature_flags.FF_CONCRETE", FLAG_NOT_READ),
    ignored(
        "runners.feature_flags.FF_DISABLE_AUTOMATIC_TOKEN_ROTATION",
        FLAG_NOT_READ,
    ),
    ignored(
        "runners.feature_flags.FF_DISABLE_UMASK_FOR_KUBERNETES_EXECUTOR",
        FLAG_NOT_READ,
    ),
    ignored(
        "runners.feature_flags.FF_ENABLE_BASH_EXIT_CODE_CHECK",
        FLAG_NOT_READ,
    ),
    ignored("runners.feature_flags.FF_ENABLE_JOB_CLEANUP", FLAG_NOT_READ),
    ignored(
        "runners.feature_flags.FF_GIT_URLS_WITHOUT_TOKENS",
        FLAG_NOT_READ,
    ),
    ignored("runners.feature_flags.FF_HASH_CACHE_KEYS", FLAG_NOT_READ),
    ignored(
        "runners.feature_flags.FF_KUBERNETES_HONOR_ENTRYPOINT",
        FLAG_NOT_READ,
    ),
    ignored(
        "runners.feature_flags.FF_PRINT_POD_EVENTS",
        "podrunner does not read this feature flag: print_pod_warning_events (default true) writes the pod's warning events to the job log",
    ),
    ignored("runners.feature_flags.FF_SCRIPT_SECTIONS", FLAG_NOT_READ),
    ignored(
        "runners.feature_flags.FF_SET_PERMISSIONS_BEFORE_CLEANUP",
        FLAG_NOT_READ,
    ),
    ignored(
        "runners.feature_flags.FF_USE_ADAPTIVE_REQUEST_CONCURRENCY",
        "podrunner does not read this feature flag: it keeps request_concurrency requests in flight",
    ),
    ignored(
        "runners.feature_flags.FF_USE_DUMB_INIT_WITH_KUBERNETES_EXECUTOR",
        "podrunner needs no dumb-init: the agent is PID 1 of the build container",
    ),
    ignored(
        "runners.feature_flags.FF_USE_EXPONENTIAL_BACKOFF_STAGE_RETRY",
        FLAG_NOT_READ,
    ),
    ignored("runners.feature_flags.FF_USE_FASTZIP", FLAG_NOT_READ),
    ignored("runners.feature_flags.FF_USE_JOB_ROUTER", FLAG_NOT_READ),
    ignored(
        "runners.feature_flags.FF_USE_NEW_BASH_EVAL_STRATEGY",
        FLAG_NOT_READ,
    ),
    ignored(
        "runners.feature_flags.FF_USE_PARALLEL_ARTIFACT_TRANSFER",
        FLAG_NOT_READ,
    ),
    ignored(
        "runners.feature_flags.FF_WAIT_FOR_POD_TO_BE_REACHABLE",
        FLAG_NOT_READ,
    ),
    ignored("runners.labels", NO_LABELS),
    honoured(
        "runners.custom_build_dir",
        "runner.custom_build_dir_enabled()",
    ),
    ignored(
        "runners.cache",
        "podrunner does not use a distributed cache yet: jobs run without a shared cache",
    ),
    ignored(
        "runners.artifact.upload_timeout",
        "not applied: every request to GitLab, artifact uploads included, may take up to an hour",
    ),
    ignored(
        "runners.artifact.response_header_timeout",
        "not applied: every request to GitLab, artifact uploads included, may take up to an hour",
    ),
    ignored(
        "runners.docker",
        "used by gitlab-runner's docker executor; podrunner runs the kubernetes and shell executors only",
    ),
    ignored(
        "runners.machine",
        "used by gitlab-runner's docker+machine executor; podrunner runs the kubernetes and shell executors only",
    ),
    ignored(
        "runners.custom",
        "used by gitlab-runner's custom executor; podrunner runs the kubernetes and shell executors only",
    ),
    ignored(
        "runners.ssh",
        "used by gitlab-runner's ssh executor; podrunner runs the kubernetes and shell executors only",
    ),
    ignored(
        "runners.parallels",
        "used by gitlab-runner's parallels executor; podrunner runs the kubernetes and shell executors only",
    ),
    ignored(
        "runners.virtualbox",
        "used by gitlab-runner's virtualbox executor; podrunner runs the kubernetes and shell executors only",
    ),
    ignored(
        "runners.autoscaler",
        "used by gitlab-runner's docker-autoscaler and instance executors; podrunner runs the kubernetes and shell executors only",
    ),
    ignored(
        "runners.referees",
        "metrics referees are not offered: job metrics come from your Prometheus directly",
    ),
    // [runners.kubernetes]
    honoured("runners.kubernetes.host", "settings.host.as_deref()"),
    honoured(
        "runners.kubernetes.context",
        "context: settings.context.clone()",
    ),
    honoured(
        "runners.kubernetes.cert_file",
        "client_certificate: settings.cert_file.clone()",
    ),
    honoured(
        "runners.kubernetes.key_file",
        "client_key: settings.key_file.clone()",
    ),
    honoured(
        "runners.kubernetes.ca_file",
        "certificate_authority: settings.ca_file.clone()",
    ),
    honoured(
        "runners.kubernetes.bearer_token",
        "token: settings.bearer_token.clone()",
    ),
    ignored(
        "runners.kubernetes.bearer_token_overwrite_allowed",
        "not applied yet: jobs cannot set KUBERNETES_BEARER_TOKEN; every job uses the manager's own credentials",
    ),
    honoured("runners.kubernetes.image", "config.image.as_deref()"),
    honoured(
        "runners.kubernetes.namespace",
        "config.namespace().to_owned()",
    ),
    honoured(
        "runners.kubernetes.namespace_overwrite_allowed",
        "match &config.namespace_overwrite_allowed",
    ),
    honoured(
        "runners.kubernetes.namespace_per_job",
        "if config.namespace_per_job",
    ),
    honoured("runners.kubernetes.privileged", ".or(config.privileged)"),
    honoured(
        "runners.kubernetes.allow_privilege_escalation",
        ".or(config.allow_privilege_escalation)",
    ),
    honoured(
        "runners.kubernetes.runtime_class_name",
        "runtime_class_name: config.runtime_class_name.clone()",
    ),
    honoured(
        "runners.kubernetes.cpu_*",
        "resources(&config, ContainerRole::Build",
    ),
    honoured(
        "runners.kubernetes.memory_*",
        "resources(&config, ContainerRole::Build",
    ),
    honoured(
        "runners.kubernetes.ephemeral_storage_*",
        "resources(&config, ContainerRole::Build",
    ),
    // gitlab-runner's helper container resources apply to podrunner's init container.
    honoured(
        "runners.kubernetes.helper_cpu_*",
        "resources(&config, ContainerRole::Helper",
    ),
    honoured(
        "runners.kubernetes.helper_memory_*",
        "resources(&config, ContainerRole::Helper",
    ),
    honoured(
        "runners.kubernetes.helper_ephemeral_storage_*",
        "resources(&config, ContainerRole::Helper",
    ),
    honoured(
        "runners.kubernetes.service_cpu_*",
        "resources(&config, ContainerRole::Service",
    ),
    honoured(
        "runners.kubernetes.service_memory_*",
        "resources(&config, ContainerRole::Service",
    ),
    honoured(
        "runners.kubernetes.service_ephemeral_storage_*",
        "resources(&config, ContainerRole::Service",
    ),
    honoured(
        "runners.kubernetes.pod_cpu_*",
        "resources(&config, ContainerRole::Pod",
    ),
    honoured(
        "runners.kubernetes.pod_memory_*",
        "resources(&config, ContainerRole::Pod",
    ),
    honoured(
        "runners.kubernetes.allowed_images",
        "allowed(&config.allowed_images, &image)",
    ),
    honoured(
        "runners.kubernetes.allowed_services",
        "allowed(&config.allowed_services, &image)",
    ),
    honoured(
        "runners.kubernetes.allowed_pull_policies",
        "config.allowed_pull_policies.0.contains(&parsed)",
    ),
    ignored(
        "runners.kubernetes.allowed_users",
        "not enforced yet: the user of a job's image is not checked; fix the user with run_as_user in pod_security_context or build_container_security_context",
    ),
    ignored(
        "runners.kubernetes.allowed_groups",
        "not enforced yet: the group of a job's image is not checked; fix the group with run_as_group in pod_security_context or build_container_security_context",
    ),
    honoured(
        "runners.kubernetes.pull_policy",
        "config.pull_policy.0.first()",
    ),
    honoured(
        "runners.kubernetes.node_selector",
        "config.node_selector.clone()",
    ),
    honoured(
        "runners.kubernetes.node_selector_overwrite_allowed",
        "config.node_selector_overwrite_allowed.as_ref()",
    ),
    honoured(
        "runners.kubernetes.node_tolerations",
        "config.node_tolerations.iter()",
    ),
    ignored(
        "runners.kubernetes.node_tolerations_overwrite_allowed",
        "not applied yet: jobs cannot add tolerations with KUBERNETES_NODE_TOLERATIONS_*; list them in node_tolerations",
    ),
    honoured(
        "runners.kubernetes.affinity",
        "config.affinity.as_ref().and_then(|a| serde_json::to_value(a).ok())",
    ),
    honoured(
        "runners.kubernetes.image_pull_secrets",
        "config.image_pull_secrets.clone()",
    ),
    honoured(
        "runners.kubernetes.use_service_account_image_pull_secrets",
        "if config.use_service_account_image_pull_secrets",
    ),
    ignored("runners.kubernetes.helper_image", NO_HELPER_IMAGE),
    ignored("runners.kubernetes.helper_image_flavor", NO_HELPER_IMAGE),
    ignored(
        "runners.kubernetes.helper_image_autoset_arch_and_os",
        NO_HELPER_IMAGE,
    ),
    honoured(
        "runners.kubernetes.pod_termination_grace_period_seconds",
        "termination_grace_period_seconds: config.pod_termination_grace_period_seconds",
    ),
    honoured(
        "runners.kubernetes.cleanup_grace_period_seconds",
        ".and_then(|k| k.cleanup_grace_period_seconds)",
    ),
    ignored(
        "runners.kubernetes.cleanup_resources_timeout",
        "not applied: podrunner deletes a job's pod and secrets when the job ends, and its periodic sweep removes any left behind",
    ),
    ignored(
        "runners.kubernetes.poll_interval",
        "not applied: podrunner watches pods instead of polling them; poll_timeout still bounds the wait",
    ),
    honoured(
        "runners.kubernetes.poll_timeout",
        "settings.poll_timeout_secs()",
    ),
    ignored(
        "runners.kubernetes.resource_availability_check_max_attempts",
        "not applied: podrunner does not wait for the service account and image pull secrets to exist before creating the pod",
    ),
    honoured(
        "runners.kubernetes.retry_limit",
        "config.retry_limit.max(1)",
    ),
    honoured(
        "runners.kubernetes.retry_backoff_max",
        "config.retry_backoff_max_ms()",
    ),
    honoured(
        "runners.kubernetes.retry_limits",
        "per_error: config.retry_limits.iter()",
    ),
    honoured("runners.kubernetes.pod_labels", "&config.pod_labels"),
    honoured(
        "runners.kubernetes.pod_labels_overwrite_allowed",
        "config.pod_labels_overwrite_allowed.as_ref()",
    ),
    honoured(
        "runners.kubernetes.pod_annotations",
        "&config.pod_annotations",
    ),
    honoured(
        "runners.kubernetes.pod_annotations_overwrite_allowed",
        "config.pod_annotations_overwrite_allowed.as_ref()",
    ),
    honoured(
        "runners.kubernetes.scheduler_name",
        "scheduler_name: config.scheduler_name.clone()",
    ),
    honoured(
        "runners.kubernetes.service_account",
        "config.service_account.clone()",
    ),
    honoured(
        "runners.kubernetes.service_account_overwrite_allowed",
        "match &config.service_account_overwrite_allowed",
    ),
    honoured(
        "runners.kubernetes.automount_service_account_token",
        "automount_service_account_token: config.automount_service_account_token",
    ),
    honoured(
        "runners.kubernetes.pod_security_context.fs_group",
        "fs_group: p.fs_group",
    ),
    honoured(
        "runners.kubernetes.pod_security_context.run_as_group",
        "run_as_group: p.run_as_group",
    ),
    honoured(
        "runners.kubernetes.pod_security_context.run_as_non_root",
        "run_as_non_root: p.run_as_non_root",
    ),
    honoured(
        "runners.kubernetes.pod_security_context.run_as_user",
        "run_as_user: p.run_as_user",
    ),
    honoured(
        "runners.kubernetes.pod_security_context.supplemental_groups",
        "p.supplemental_groups.clone()",
    ),
    honoured(
        "runners.kubernetes.pod_security_context.selinux_type",
        "p.selinux_type.clone()",
    ),
    ignored(
        "runners.kubernetes.pod_security_context.seccomp_profile",
        "not applied to the pod yet: set seccomp_profile in build_container_security_context and service_container_security_context",
    ),
    ignored(
        "runners.kubernetes.pod_security_context.app_armor_profile",
        "not applied to the pod yet: set app_armor_profile in build_container_security_context and service_container_security_context",
    ),
    // Every field of a container security context is read by the same function.
    honoured(
        "runners.kubernetes.build_container_security_context",
        "config.build_container_security_context.as_ref()",
    ),
    ignored(
        "runners.kubernetes.helper_container_security_context",
        "podrunner has no helper container: set init_permissions_container_security_context for its init container",
    ),
    honoured(
        "runners.kubernetes.service_container_security_context",
        "config.service_container_security_context.as_ref()",
    ),
    honoured(
        "runners.kubernetes.init_permissions_container_security_context",
        "config.init_permissions_container_security_context.as_ref()",
    ),
    honoured("runners.kubernetes.cap_add", "config.cap_add.clone()"),
    honoured("runners.kubernetes.cap_drop", "config.cap_drop.iter()"),
    honoured("runners.kubernetes.volumes", "let v = &config.volumes"),
    honoured(
        "runners.kubernetes.host_aliases",
        "config.host_aliases.iter()",
    ),
    honoured("runners.kubernetes.services", "config.services.iter()"),
    ignored("runners.kubernetes.services.suspend_data_path", SUSPEND),
    honoured(
        "runners.kubernetes.dns_policy",
        "config.dns_policy.map(|d| d.kubernetes_name().to_owned())",
    ),
    honoured(
        "runners.kubernetes.dns_config",
        "config.dns_config.as_ref().map(|d| PodDNSConfig",
    ),
    honoured(
        "runners.kubernetes.container_lifecycle",
        "config.container_lifecycle.as_ref().map(lifecycle)",
    ),
    honoured(
        "runners.kubernetes.priority_class_name",
        "priority_class_name: config.priority_class_name.clone()",
    ),
    ignored(
        "runners.kubernetes.pod_spec",
        "not applied yet; put the fields in the matching [runners.kubernetes] keys",
    ),
    ignored(
        "runners.kubernetes.logs_base_dir",
        "not applied: the agent sends the job log to GitLab itself; there is no log directory to move",
    ),
    ignored(
        "runners.kubernetes.scripts_base_dir",
        "not applied: the agent writes the job's scripts beside the project directory, under builds_dir",
    ),
    honoured(
        "runners.kubernetes.print_pod_warning_events",
        "k.print_pod_warning_events()",
    ),
    ignored(
        "runners.kubernetes.pod_disruption_budget",
        "not created yet: to keep evictions off running jobs, create a PodDisruptionBudget in the job namespace selecting your pod_labels",
    ),
    ignored("runners.kubernetes.suspend_pvc_size", SUSPEND),
    ignored("runners.kubernetes.suspend_pvc_storage_class", SUSPEND),
    ignored(
        "runners.kubernetes.autoscaler",
        "pause-pod pre-warming is not offered: for warm node capacity use your cluster autoscaler's over-provisioning",
    ),
    honoured(
        "runners.kubernetes.fargate.reject_unsupported",
        "config.reject_unsupported",
    ),
    honoured(
        "runners.kubernetes.fargate.usd_per_vcpu_hour",
        "prices.usd_per_vcpu_hour",
    ),
    honoured(
        "runners.kubernetes.fargate.usd_per_gb_hour",
        "prices.usd_per_gb_hour",
    ),
    honoured(
        "runners.kubernetes.fargate.usd_per_extra_storage_gb_hour",
        "prices.usd_per_extra_storage_gb_hour",
    ),
    honoured(
        "runners.kubernetes.fargate.profiles",
        "config.profile_for(&namespace, &labels)",
    ),
];

/// The entry of [`SETTINGS`] that decides a key, given as its segments without indexes, with
/// how many leading segments that entry's key has.
pub(crate) fn resolve<S: AsRef<str>>(segments: &[S]) -> Option<(usize, &'static Setting)> {
    let mut deepest = None;
    for len in 1..=segments.len() {
        if let Some(setting) = entry_at(&segments[..len]) {
            if setting.advice().is_some() {
                return Some((len, setting));
            }
            deepest = Some((len, setting));
        }
    }
    deepest
}

/// The entry whose key is exactly `segments`: a literal key before a family.
fn entry_at<S: AsRef<str>>(segments: &[S]) -> Option<&'static Setting> {
    let mut family = None;
    for setting in SETTINGS {
        match key_matches(setting.key, segments) {
            Some(true) => return Some(setting),
            Some(false) if family.is_none() => family = Some(setting),
            _ => {}
        }
    }
    family
}

/// Whether `key` matches `segments`: `Some(true)` literally, `Some(false)` through a `*`.
pub(crate) fn key_matches<S: AsRef<str>>(key: &str, segments: &[S]) -> Option<bool> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut literal = true;
    for (part, segment) in parts.iter().zip(segments) {
        let segment = segment.as_ref();
        if part == &segment {
            continue;
        }
        let (head, tail) = part.split_once('*')?;
        if segment.len() < head.len() + tail.len()
            || !segment.starts_with(head)
            || !segment.ends_with(tail)
        {
            return None;
        }
        literal = false;
    }
    Some(literal)
}

/// The keys a loaded file sets that podrunner does not honour, in file order. With Helm
/// values only the first `[[runners]]` entry counts: the chart ignores the rest, and the
/// global section of `runners.config` (the loader says so).
pub(crate) fn ignored_settings(
    source: &SourceText,
    spans: &SpanIndex,
    mode: Mode,
) -> Vec<IgnoredSetting> {
    let mut found: Vec<(usize, IgnoredSetting)> = Vec::new();
    for (path, key_spans) in spans.iter() {
        if !key_spans.holds_value {
            continue;
        }
        if mode == Mode::Helm {
            match path.segments() {
                [Segment::Key(k), Segment::Index(0), ..] if k == "runners" => {}
                _ => continue,
            }
        }
        // Shape segments, each with the path up to its key (indexes after it left out).
        let mut segments: Vec<&str> = Vec::new();
        let mut prefixes: Vec<KeyPath> = Vec::new();
        let mut current = KeyPath::root();
        for segment in path.segments() {
            match segment {
                Segment::Key(k) => {
                    current = current.key(k.clone());
                    segments.push(k);
                    prefixes.push(current.clone());
                }
                Segment::Index(i) => current = current.index(*i),
            }
        }
        let Some((len, setting)) = resolve(&segments) else {
            continue;
        };
        let Some(advice) = setting.advice() else {
            continue;
        };
        let reported = prefixes[len - 1].clone();
        if found.iter().any(|(_, f)| f.path == reported) {
            continue;
        }
        // A key is shown where it is written; a table (or array of tables) written as a
        // `[header]` at its header.
        let text = source.text();
        let header = |offset: usize| {
            let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
            text[offset..].starts_with('[') && text[line_start..offset].trim().is_empty()
        };
        let start = spans.get(&reported).map(|s| {
            let first = spans.get(&reported.index(0)).map(|item| item.value.start);
            if header(s.value.start) {
                s.value.start
            } else if let Some(item) = first.filter(|o| header(*o)) {
                item
            } else {
                s.key.start
            }
        });
        found.push((
            start.unwrap_or(usize::MAX),
            IgnoredSetting {
                location: start.map(|offset| source.location(offset)),
                path: reported,
                key: setting.key,
                advice,
            },
        ));
    }
    found.sort_by_key(|(offset, _)| *offset);
    found.into_iter().map(|(_, f)| f).collect()
}

/// Every key the model reads, as `SETTINGS` writes keys: the fields of every table the loader
/// knows, down to the tables it has no field list for, and each known feature flag.
#[cfg(test)]
pub(crate) fn model_keys() -> Vec<String> {
    fn walk(shape: &str, key: &str, out: &mut Vec<String>) {
        let Some(fields) = crate::load::known_fields(shape) else {
            return;
        };
        for field in fields {
            let child_shape = if shape.is_empty() {
                (*field).to_owned()
            } else {
                format!("{shape}.{field}")
            };
            let child_key = if key.is_empty() {
                (*field).to_owned()
            } else {
                format!("{key}.{field}")
            };
            let array = format!("{child_shape}[]");
            if crate::load::known_fields(&array).is_some() {
                walk(&array, &child_key, out);
            } else if crate::load::known_fields(&child_shape).is_some() {
                walk(&child_shape, &child_key, out);
            } else if child_shape == "runners[].feature_flags" {
                out.extend(
                    crate::feature_flags::KNOWN
                        .iter()
                        .map(|(flag, _)| format!("{child_key}.{flag}")),
                );
            } else {
                out.push(child_key);
            }
        }
    }
    let mut out = Vec::new();
    walk("", "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(key: &str) -> Vec<&str> {
        key.split('.').collect()
    }

    #[test]
    fn families_match_within_a_segment_and_literal_keys_win() {
        assert_eq!(
            key_matches(
                "runners.kubernetes.helper_cpu_*",
                &segments("runners.kubernetes.helper_cpu_limit")
            ),
            Some(false)
        );
        assert_eq!(
            key_matches(
                "runners.kubernetes.helper_cpu_*",
                &segments("runners.kubernetes.helper_cpu_")
            ),
            Some(false)
        );
        assert_eq!(
            key_matches(
                "runners.kubernetes.cpu_*",
                &segments("runners.kubernetes.helper_cpu_limit")
            ),
            None
        );
        assert_eq!(
            key_matches("runners.kubernetes", &segments("runners.kubernetes.image")),
            None
        );
        let (_, setting) = resolve(&segments("runners.kubernetes.helper_image")).unwrap();
        assert_eq!(setting.key, "runners.kubernetes.helper_image");
    }

    #[test]
    fn everything_below_an_ignored_table_is_ignored() {
        let (len, setting) = resolve(&segments("runners.cache.s3.BucketName")).unwrap();
        assert_eq!((len, setting.key), (2, "runners.cache"));
        let (_, setting) = resolve(&segments(
            "runners.kubernetes.helper_container_security_context.privileged",
        ))
        .unwrap();
        assert!(setting.advice().is_some());
        let (_, setting) =
            resolve(&segments("runners.kubernetes.services.suspend_data_path")).unwrap();
        assert!(
            setting.advice().is_some(),
            "the deepest entry decides below an honoured one"
        );
        let (_, setting) = resolve(&segments("runners.kubernetes.services.alias")).unwrap();
        assert!(setting.advice().is_none());
    }

    /// The key-walk test: a key the model reads that is in neither list fails here, so a new
    /// field needs a decision.
    #[test]
    fn every_key_the_model_reads_is_honoured_or_listed() {
        let keys = model_keys();
        assert!(keys.len() > 250, "the walk found only {} keys", keys.len());
        for expected in [
            "concurrent",
            "runners.limit",
            "runners.kubernetes.cpu_request",
            "runners.kubernetes.pod_spec.patch_type",
            "runners.cache.s3.BucketName",
            "runners.docker",
            "session_server.listen_address",
            "runners.feature_flags.FF_TIMESTAMPS",
            "runners.kubernetes.volumes.host_path.mount_propagation",
            "runners.kubernetes.fargate.profiles.selectors.namespace",
        ] {
            assert!(
                keys.iter().any(|k| k == expected),
                "the walk misses {expected}"
            );
        }
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| resolve(&segments(k)).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "neither honoured nor listed as ignored in crates/config/src/honoured.rs: {missing:#?}"
        );
    }

    /// Every entry decides some key the model reads: a renamed or removed key leaves no entry
    /// behind, and no two entries claim the same key.
    #[test]
    fn every_entry_covers_a_model_key_and_none_overlap() {
        let keys = model_keys();
        for setting in SETTINGS {
            let covers = keys.iter().any(|k| {
                let segments = segments(k);
                (1..=segments.len()).any(|len| key_matches(setting.key, &segments[..len]).is_some())
            });
            assert!(covers, "{} matches no key the model reads", setting.key);
            let same = SETTINGS.iter().filter(|s| s.key == setting.key).count();
            assert_eq!(same, 1, "{} is listed {same} times", setting.key);
        }
        for key in &keys {
            let segments = segments(key);
            for len in 1..=segments.len() {
                let families: Vec<&str> = SETTINGS
                    .iter()
                    .filter(|s| key_matches(s.key, &segments[..len]) == Some(false))
                    .map(|s| s.key)
                    .collect();
                assert!(
                    families.len() <= 1,
                    "{key}: several families match: {families:?}"
                );
            }
        }
    }

    /// The text check: each honoured entry's `by` occurs in the product's source outside
    /// crates/config (whitespace ignored, test modules cut off). It is textual: it shows the
    /// key is read there, not what is done with it.
    #[test]
    fn honoured_keys_are_read_by_the_product() {
        let product = product_source();
        for setting in SETTINGS {
            if let Treatment::Honoured { by } = setting.treatment {
                let needle: String = by.chars().filter(|c| !c.is_whitespace()).collect();
                assert!(
                    product.contains(&needle),
                    "{}: {by:?} occurs nowhere in the product's source; the key may no longer be honoured",
                    setting.key
                );
            }
        }
    }

    fn product_source() -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut text = String::new();
        for krate in ["kube", "manager", "agent", "podrunner", "exec", "gitlab"] {
            collect(&root.join(krate).join("src"), &mut text);
        }
        assert!(text.len() > 100_000, "the product's source was not found");
        text
    }

    fn collect(dir: &std::path::Path, text: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                collect(&path, text);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).expect("read source");
                text.extend(
                    without_tests(&source)
                        .chars()
                        .filter(|c| !c.is_whitespace()),
                );
            }
        }
    }

    /// `source` without its `#[cfg(test)]` modules: from the attribute to the next line that is
    /// a lone `}` (rustfmt closes a top-level module there).
    fn without_tests(source: &str) -> String {
        let mut out = String::new();
        let mut in_tests = false;
        let mut lines = source.lines().peekable();
        while let Some(line) = lines.next() {
            if in_tests {
                in_tests = line != "}";
            } else if line == "#[cfg(test)]"
                && lines.peek().is_some_and(|next| next.starts_with("mod "))
            {
                in_tests = true;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}
