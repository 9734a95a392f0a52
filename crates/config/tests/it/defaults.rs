//! gitlab-runner's defaults for every key the file leaves out.

use std::time::Duration;

use podrunner_config::*;

use crate::load;

const MINIMAL: &str = "concurrent = 1\n[[runners]]\nexecutor = \"kubernetes\"\n[runners.kubernetes]\nnamespace = \"ci\"\n";

#[test]
fn global_defaults() {
    let config = load(MINIMAL).unwrap().config;
    assert_eq!(config.check_interval, 3);
    assert_eq!(config.shutdown_timeout, 30);
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.log_format, LogFormat::Runner);
    assert_eq!(
        config.connection_max_age.get(),
        Duration::from_secs(15 * 60)
    );
    assert_eq!(config.listen_address, None);
    let session = load("concurrent = 1\n[session_server]\nlisten_address = \"0.0.0.0:8093\"\n")
        .unwrap()
        .config
        .session_server
        .unwrap();
    assert_eq!(session.session_timeout, 1800);
}

#[test]
fn runner_defaults() {
    let config = load(MINIMAL).unwrap().config;
    let r = &config.runners[0];
    assert_eq!(r.limit, 0);
    assert_eq!(r.request_concurrency, 1);
    assert!(!r.strict_check_interval);
    assert_eq!(r.output_limit, 4096);
    assert_eq!(r.unhealthy_requests_limit, 3);
    assert_eq!(r.unhealthy_interval.get(), Duration::from_secs(3600));
    assert_eq!(r.job_status_final_update_retry_limit, 10);
    assert_eq!(r.builds_dir(), "/builds");
    assert_eq!(r.cache_dir(), "/cache");
    assert!(r.safe_directory_checkout());
    assert!(r.clean_git_config());
    assert!(r.custom_build_dir_enabled());
    assert_eq!(r.artifact.upload_timeout.get(), Duration::from_secs(3600));
    assert_eq!(
        r.artifact.response_header_timeout.get(),
        Duration::from_secs(600)
    );
    assert_eq!(r.prepare_timeout, None);
    assert_eq!(r.shell, None);
    for (flag, default) in KNOWN_FEATURE_FLAGS {
        assert_eq!(r.feature_flag(flag), *default, "{flag}");
    }
    assert!(
        r.feature_flag("FF_TIMESTAMPS") && r.feature_flag("FF_USE_POD_ACTIVE_DEADLINE_SECONDS")
    );
    assert!(!r.feature_flag("FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY"));
    let shell = load("concurrent = 1\n[[runners]]\nexecutor = \"shell\"\n")
        .unwrap()
        .config;
    assert_eq!(shell.runners[0].builds_dir(), "builds");
}

#[test]
fn kubernetes_defaults() {
    let k = load(MINIMAL).unwrap().config.runners[0]
        .kubernetes
        .clone()
        .unwrap();
    assert_eq!(k.poll_interval_secs(), 3);
    assert_eq!(k.poll_timeout_secs(), 180);
    assert_eq!(k.cleanup_resources_timeout.get(), Duration::from_secs(300));
    assert_eq!(k.resource_availability_check_attempts(), 0);
    assert_eq!(k.retry_limit, 5);
    assert_eq!(k.retry_backoff_max_ms(), 2000);
    assert!(k.print_pod_warning_events());
    assert_eq!(k.privileged, None, "optional booleans stay unset");
    assert_eq!(k.allow_privilege_escalation, None);
    assert_eq!(k.automount_service_account_token, None);
    assert_eq!(k.pod_disruption_budget, None);
    assert!(k.pull_policy.0.is_empty());
    assert!(k.volumes.is_empty());
    assert!(k.allowed_images.is_empty());
    assert_eq!(k.dns_policy, None);
    assert!(k.fargate.is_none());
    assert_eq!(KubernetesConfig::default().namespace(), "default");
}

#[test]
fn zero_or_negative_values_fall_back_like_gitlab_runner() {
    let k = load("concurrent = 1\n[[runners]]\nexecutor = \"kubernetes\"\n[runners.kubernetes]\nnamespace = \"ci\"\npoll_interval = 0\npoll_timeout = -1\nresource_availability_check_max_attempts = -3\n")
        .unwrap()
        .config
        .runners[0]
        .kubernetes
        .clone()
        .unwrap();
    assert_eq!(k.poll_interval_secs(), 3);
    assert_eq!(k.poll_timeout_secs(), 180);
    assert_eq!(k.resource_availability_check_attempts(), 5);
}

#[test]
fn fargate_defaults_are_us_east_1_linux_x86() {
    let text = "concurrent = 1\n[[runners]]\nexecutor = \"kubernetes\"\n[runners.kubernetes]\nnamespace = \"ci\"\n[runners.kubernetes.fargate]\n";
    let f = load(text).unwrap().config.runners[0]
        .kubernetes
        .clone()
        .unwrap()
        .fargate
        .unwrap();
    assert!(f.reject_unsupported);
    assert_eq!(f.usd_per_vcpu_hour, 0.04048);
    assert_eq!(f.usd_per_gb_hour, 0.004445);
    assert_eq!(f.usd_per_extra_storage_gb_hour, 0.000111);
    assert!(f.profiles.is_empty());
}
