//! The full configuration: every key is read, and every key of the protocol tables exists.

use std::time::Duration;

use podrunner_config::*;
use serde_json::{Value, json};

use crate::load;

const FULL: &str = include_str!("../fixtures/full-config.toml");

/// Keys of gitlab-runner's `[runners.kubernetes]` table (the compatibility contract §3.11),
/// written out here rather than taken from the product's structs.
const KUBERNETES_KEYS: &[&str] = &[
    "host",
    "context",
    "cert_file",
    "key_file",
    "ca_file",
    "bearer_token",
    "bearer_token_overwrite_allowed",
    "image",
    "namespace",
    "namespace_overwrite_allowed",
    "namespace_per_job",
    "privileged",
    "allow_privilege_escalation",
    "runtime_class_name",
    "cpu_limit",
    "cpu_request",
    "memory_limit",
    "memory_request",
    "ephemeral_storage_limit",
    "ephemeral_storage_request",
    "cpu_limit_overwrite_max_allowed",
    "cpu_request_overwrite_max_allowed",
    "memory_limit_overwrite_max_allowed",
    "memory_request_overwrite_max_allowed",
    "ephemeral_storage_limit_overwrite_max_allowed",
    "ephemeral_storage_request_overwrite_max_allowed",
    "helper_cpu_limit",
    "helper_cpu_request",
    "helper_memory_limit",
    "helper_memory_request",
    "helper_ephemeral_storage_limit",
    "helper_ephemeral_storage_request",
    "helper_cpu_limit_overwrite_max_allowed",
    "helper_cpu_request_overwrite_max_allowed",
    "helper_memory_limit_overwrite_max_allowed",
    "helper_memory_request_overwrite_max_allowed",
    "helper_ephemeral_storage_limit_overwrite_max_allowed",
    "helper_ephemeral_storage_request_overwrite_max_allowed",
    "service_cpu_limit",
    "service_cpu_request",
    "service_memory_limit",
    "service_memory_request",
    "service_ephemeral_storage_limit",
    "service_ephemeral_storage_request",
    "service_cpu_limit_overwrite_max_allowed",
    "service_cpu_request_overwrite_max_allowed",
    "service_memory_limit_overwrite_max_allowed",
    "service_memory_request_overwrite_max_allowed",
    "service_ephemeral_storage_limit_overwrite_max_allowed",
    "service_ephemeral_storage_request_overwrite_max_allowed",
    "pod_cpu_limit",
    "pod_cpu_request",
    "pod_memory_limit",
    "pod_memory_request",
    "pod_cpu_limit_overwrite_max_allowed",
    "pod_cpu_request_overwrite_max_allowed",
    "pod_memory_limit_overwrite_max_allowed",
    "pod_memory_request_overwrite_max_allowed",
    "allowed_images",
    "allowed_services",
    "allowed_pull_policies",
    "allowed_users",
    "allowed_groups",
    "pull_policy",
    "node_selector",
    "node_selector_overwrite_allowed",
    "node_tolerations",
    "node_tolerations_overwrite_allowed",
    "affinity",
    "image_pull_secrets",
    "use_service_account_image_pull_secrets",
    "helper_image",
    "helper_image_flavor",
    "helper_image_autoset_arch_and_os",
    "pod_termination_grace_period_seconds",
    "cleanup_grace_period_seconds",
    "cleanup_resources_timeout",
    "poll_interval",
    "poll_timeout",
    "resource_availability_check_max_attempts",
    "retry_limit",
    "retry_backoff_max",
    "retry_limits",
    "pod_labels",
    "pod_labels_overwrite_allowed",
    "pod_annotations",
    "pod_annotations_overwrite_allowed",
    "scheduler_name",
    "service_account",
    "service_account_overwrite_allowed",
    "automount_service_account_token",
    "pod_security_context",
    "build_container_security_context",
    "helper_container_security_context",
    "service_container_security_context",
    "init_permissions_container_security_context",
    "cap_add",
    "cap_drop",
    "volumes",
    "host_aliases",
    "services",
    "dns_policy",
    "dns_config",
    "container_lifecycle",
    "priority_class_name",
    "pod_spec",
    "logs_base_dir",
    "scripts_base_dir",
    "print_pod_warning_events",
    "pod_disruption_budget",
    "suspend_pvc_size",
    "suspend_pvc_storage_class",
    "autoscaler",
];

/// Global keys of §3.12.
const GLOBAL_KEYS: &[&str] = &[
    "concurrent",
    "check_interval",
    "log_level",
    "log_format",
    "listen_address",
    "shutdown_timeout",
    "connection_max_age",
    "sentry_dsn",
    "user",
    "labels",
    "session_server",
];

/// `[[runners]]` keys of §3.12.
const RUNNER_KEYS: &[&str] = &[
    "name",
    "url",
    "id",
    "token",
    "token_obtained_at",
    "token_expires_at",
    "tls-ca-file",
    "tls-cert-file",
    "tls-key-file",
    "executor",
    "shell",
    "limit",
    "request_concurrency",
    "strict_check_interval",
    "output_limit",
    "unhealthy_requests_limit",
    "unhealthy_interval",
    "job_status_final_update_retry_limit",
    "builds_dir",
    "cache_dir",
    "environment",
    "clone_url",
    "pre_get_sources_script",
    "post_get_sources_script",
    "pre_build_script",
    "post_build_script",
    "prepare_timeout",
    "get_sources_timeout",
    "debug_trace_disabled",
    "safe_directory_checkout",
    "clean_git_config",
    "feature_flags",
    "labels",
    "custom_build_dir",
    "cache",
    "artifact",
    "kubernetes",
];

/// Compares every key of `actual` with the same key of `defaults`: a key equal to its
/// default was not read from the fixture (which sets every key to something else).
fn assert_every_key_read(what: &str, actual: &Value, defaults: &Value, not_in_fixture: &[&str]) {
    let actual = actual.as_object().unwrap();
    for (key, default) in defaults.as_object().unwrap() {
        if not_in_fixture.contains(&key.as_str()) {
            continue;
        }
        assert_ne!(
            &actual[key], default,
            "{what}.{key} still has its default: the key was not read"
        );
    }
}

/// No secret of the configuration prints through `Debug`: the runner token, the cache's
/// cloud credentials and the Kubernetes bearer token are redacted.
#[test]
fn debug_prints_no_secret_of_the_configuration() {
    let loaded = load(FULL).unwrap_or_else(|e| panic!("{e}"));
    let printed = format!("{:?}", loaded.config);
    for secret in [
        "glrt-from-env",
        "SecretKey",
        "\"secret\"",
        "\"session\"",
        "\"key\"",
        "k8s-token",
    ] {
        assert!(!printed.contains(secret), "{secret} printed by Debug");
    }
    assert!(printed.contains("[REDACTED]"));
}

#[test]
fn the_full_config_is_valid_without_warnings() {
    let loaded = load(FULL).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        loaded
            .warnings
            .iter()
            .all(|w| w.message.contains("docker.sock") || !w.message.is_empty())
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings, Vec::<String>::new());
}

#[test]
fn every_key_is_read_from_the_file() {
    let config = load(FULL).unwrap().config;
    let json = serde_json::to_value(&config).unwrap();
    assert_every_key_read(
        "global",
        &json,
        &serde_json::to_value(Config::default()).unwrap(),
        &["runners"],
    );
    let runner = &json["runners"][0];
    let foreign = [
        "docker",
        "machine",
        "custom",
        "ssh",
        "parallels",
        "virtualbox",
        "autoscaler",
        "referees",
    ];
    assert_every_key_read(
        "runners[0]",
        runner,
        &serde_json::to_value(RunnerConfig::default()).unwrap(),
        &foreign,
    );
    assert_every_key_read(
        "runners[0].kubernetes",
        &runner["kubernetes"],
        &serde_json::to_value(KubernetesConfig::default()).unwrap(),
        &[],
    );
    assert_every_key_read(
        "runners[0].kubernetes.fargate",
        &runner["kubernetes"]["fargate"],
        &serde_json::to_value(FargateConfig::default()).unwrap(),
        &[],
    );
    for table in ["s3", "gcs", "azure"] {
        let cache = &runner["cache"][table];
        for (key, value) in cache.as_object().unwrap() {
            assert!(
                !value.is_null(),
                "runners[0].cache.{table}.{key} was not read"
            );
        }
    }
}

#[test]
fn every_key_of_the_protocol_tables_is_modelled() {
    let json = serde_json::to_value(load(FULL).unwrap().config).unwrap();
    for key in GLOBAL_KEYS {
        assert!(json.get(key).is_some(), "global key {key} is not modelled");
    }
    for key in RUNNER_KEYS {
        assert!(
            json["runners"][0].get(key).is_some(),
            "[[runners]] key {key} is not modelled"
        );
    }
    for key in KUBERNETES_KEYS {
        assert!(
            json["runners"][0]["kubernetes"].get(key).is_some(),
            "[runners.kubernetes] key {key} is not modelled"
        );
    }
    let k = &json["runners"][0]["kubernetes"];
    for key in [
        "host_path",
        "pvc",
        "config_map",
        "secret",
        "empty_dir",
        "csi",
        "nfs",
    ] {
        assert_eq!(
            k["volumes"][key].as_array().map(Vec::len),
            Some(1),
            "volumes.{key}"
        );
    }
}

#[test]
fn typed_values_are_typed() {
    let config = load(FULL).unwrap().config;
    let runner = &config.runners[0];
    assert_eq!(
        runner.token.as_deref(),
        Some("glrt-from-env"),
        "token is environment expanded"
    );
    assert_eq!(
        runner.token_obtained_at.as_ref().unwrap().to_string(),
        "2025-01-02T03:04:05Z"
    );
    assert_eq!(
        runner.token_expires_at.as_ref().unwrap().to_string(),
        "2026-01-02T03:04:05Z"
    );
    assert_eq!(runner.executor, Some(Executor::Kubernetes));
    assert_eq!(runner.shell, Some(Shell::Sh));
    assert_eq!(runner.unhealthy_interval.get(), Duration::from_secs(1800));
    assert_eq!(
        runner.cache.as_ref().unwrap().cache_type,
        Some(CacheType::S3)
    );
    assert!(!runner.feature_flag("FF_TIMESTAMPS"));
    assert!(runner.feature_flag("FF_PRINT_POD_EVENTS"));
    assert!(
        runner.feature_flag("FF_USE_POD_ACTIVE_DEADLINE_SECONDS"),
        "a flag not in the file keeps its default"
    );
    assert!(!runner.custom_build_dir_enabled());
    let k = runner.kubernetes.as_ref().unwrap();
    assert_eq!(k.cpu_request, Some("2".parse().unwrap()));
    assert_eq!(k.memory_request.as_ref().unwrap().units_ceil(), 8 << 30);
    assert!(
        k.namespace_overwrite_allowed
            .as_ref()
            .unwrap()
            .is_match("ci-123")
    );
    assert!(
        !k.namespace_overwrite_allowed
            .as_ref()
            .unwrap()
            .is_match("prod")
    );
    assert_eq!(
        k.pull_policy,
        PullPolicies(vec![PullPolicy::IfNotPresent, PullPolicy::Always])
    );
    assert_eq!(k.dns_policy, Some(DnsPolicy::ClusterFirstWithHostNet));
    assert_eq!(k.pod_spec[0].patch_type, Some(PatchType::Merge));
    assert!(k.allowed_images[0].matches("alpine:3.20"));
    assert_eq!(k.poll_timeout_secs(), 600);
    assert_eq!(k.retry_backoff_max_ms(), 4000);
    assert_eq!(k.cleanup_resources_timeout.get(), Duration::from_secs(600));
    assert_eq!(
        k.pod_labels["project"], "$CI_PROJECT_NAME",
        "pod label values are expanded per job, not at load"
    );
    let setting = k
        .resource(ContainerRole::Helper, ResourceKind::Memory)
        .unwrap();
    assert_eq!(setting.request.unwrap().to_string(), "256Mi");
    assert_eq!(setting.limit_overwrite_max.unwrap().to_string(), "1Gi");
    let fargate = k.fargate.as_ref().unwrap();
    let pod_labels = k.pod_labels.clone();
    assert_eq!(
        fargate
            .profile_for("gitlab-runner", &pod_labels)
            .map(|p| p.name.as_str()),
        Some("ci-jobs")
    );
    let affinity = serde_json::to_value(k.affinity.as_ref().unwrap()).unwrap();
    assert_eq!(
        affinity["node_affinity"]["preferred_during_scheduling_ignored_during_execution"][0]["preference"]
            ["match_expressions"][0],
        json!({"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["ON_DEMAND"]})
    );
    assert_eq!(config.log_level, LogLevel::Debug);
    assert_eq!(config.log_format, LogFormat::Json);
}

#[test]
fn pull_policy_may_be_a_single_string() {
    let config = load("concurrent = 1\n[[runners]]\nexecutor = \"kubernetes\"\n[runners.kubernetes]\nnamespace = \"ci\"\npull_policy = \"always\"\n").unwrap().config;
    assert_eq!(
        config.runners[0].kubernetes.as_ref().unwrap().pull_policy,
        PullPolicies(vec![PullPolicy::Always])
    );
}
