//! The table: every key the model reads, honoured (with the code that reads it) or ignored
//! (with what to do instead).

use super::{Setting, Treatment};

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
    honoured("runners.shell", "runner.shell.map(|shell| match shell {"),
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
    honoured(
        "runners.feature_flags.FF_USE_ADVANCED_POD_SPEC_CONFIGURATION",
        "if let Some(on) = runner.feature_flags.get(FLAG)",
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
    honoured("runners.cache.Type", "match cache.cache_type"),
    honoured(
        "runners.cache.Path",
        "cache.path.as_deref().unwrap_or(\"\")",
    ),
    honoured("runners.cache.Shared", "cache.shared"),
    honoured(
        "runners.cache.MaxUploadedArchiveSize",
        "cache.max_uploaded_archive_size.max(0) as u64",
    ),
    honoured(
        "runners.cache.s3.ServerAddress",
        "config.server_address.as_deref().filter(|a| !a.is_empty())",
    ),
    honoured("runners.cache.s3.AccessKey", ".access_key"),
    honoured("runners.cache.s3.SecretKey", ".secret_key"),
    honoured("runners.cache.s3.SessionToken", ".session_token"),
    honoured("runners.cache.s3.BucketName", ".bucket_name"),
    honoured("runners.cache.s3.BucketLocation", ".bucket_location"),
    honoured("runners.cache.s3.Insecure", "config.insecure"),
    honoured(
        "runners.cache.s3.AuthenticationType",
        ".authentication_type",
    ),
    honoured(
        "runners.cache.s3.ServerSideEncryption",
        ".server_side_encryption",
    ),
    honoured(
        "runners.cache.s3.ServerSideEncryptionKeyID",
        ".server_side_encryption_key_id",
    ),
    honoured(
        "runners.cache.s3.DualStack",
        "config.dual_stack.unwrap_or(true)",
    ),
    honoured("runners.cache.s3.PathStyle", "match config.path_style"),
    honoured("runners.cache.s3.Accelerate", "config.accelerate"),
    ignored(
        "runners.cache.s3.RoleARN",
        "not applied: the manager signs each job's URLs with its own credentials and hands job pods no STS session; give the manager's role access to the bucket",
    ),
    ignored(
        "runners.cache.s3.UploadRoleARN",
        "not applied: the manager signs each job's URLs with its own credentials and hands job pods no STS session; give the manager's role access to the bucket",
    ),
    honoured("runners.cache.gcs.CredentialsFile", ".credentials_file"),
    honoured("runners.cache.gcs.AccessID", ".access_id"),
    honoured("runners.cache.gcs.PrivateKey", ".private_key"),
    honoured("runners.cache.gcs.BucketName", ".bucket_name"),
    honoured("runners.cache.azure.AccountName", "&config.account_name"),
    honoured("runners.cache.azure.AccountKey", ".account_key"),
    honoured(
        "runners.cache.azure.ContainerName",
        "&config.container_name",
    ),
    honoured(
        "runners.cache.azure.StorageDomain",
        "&config.storage_domain",
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
    honoured(
        "runners.kubernetes.bearer_token_overwrite_allowed",
        "config.bearer_token_overwrite_allowed",
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
        "resources(config, ContainerRole::Build",
    ),
    honoured(
        "runners.kubernetes.memory_*",
        "resources(config, ContainerRole::Build",
    ),
    honoured(
        "runners.kubernetes.ephemeral_storage_*",
        "resources(config, ContainerRole::Build",
    ),
    // gitlab-runner's helper container resources apply to podrunner's init container.
    honoured(
        "runners.kubernetes.helper_cpu_*",
        "resources(config, ContainerRole::Helper",
    ),
    honoured(
        "runners.kubernetes.helper_memory_*",
        "resources(config, ContainerRole::Helper",
    ),
    honoured(
        "runners.kubernetes.helper_ephemeral_storage_*",
        "resources(config, ContainerRole::Helper",
    ),
    honoured(
        "runners.kubernetes.service_cpu_*",
        "resources(config, ContainerRole::Service",
    ),
    honoured(
        "runners.kubernetes.service_memory_*",
        "resources(config, ContainerRole::Service",
    ),
    honoured(
        "runners.kubernetes.service_ephemeral_storage_*",
        "resources(config, ContainerRole::Service",
    ),
    honoured(
        "runners.kubernetes.pod_cpu_*",
        "resources(config, ContainerRole::Pod",
    ),
    honoured(
        "runners.kubernetes.pod_memory_*",
        "resources(config, ContainerRole::Pod",
    ),
    honoured(
        "runners.kubernetes.allowed_images",
        "allowed(&config.allowed_images, &image)",
    ),
    honoured(
        "runners.kubernetes.allowed_services",
        "allowed(&config.allowed_services, &spec.image)",
    ),
    honoured(
        "runners.kubernetes.allowed_pull_policies",
        "&config.allowed_pull_policies,",
    ),
    honoured("runners.kubernetes.allowed_users", "&config.allowed_users"),
    honoured(
        "runners.kubernetes.allowed_groups",
        "&config.allowed_groups",
    ),
    honoured("runners.kubernetes.pull_policy", "&config.pull_policy,"),
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
    honoured(
        "runners.kubernetes.node_tolerations_overwrite_allowed",
        "config.node_tolerations_overwrite_allowed.as_ref()",
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
        "kubernetes_or_default().poll_timeout_secs()",
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
    honoured(
        "runners.kubernetes.pod_security_context.seccomp_profile",
        "seccomp_profile: p.seccomp_profile.as_ref()",
    ),
    honoured(
        "runners.kubernetes.pod_security_context.app_armor_profile",
        "app_armor_profile: p.app_armor_profile.as_ref()",
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
    honoured(
        "runners.kubernetes.pod_spec",
        "pod_spec_patch::apply(runner, &config.pod_spec",
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
    honoured(
        "runners.kubernetes.pod_disruption_budget",
        "if !runner.kubernetes_or_default().pod_disruption_budget()",
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
