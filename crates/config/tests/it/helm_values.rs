//! Helm values of the official chart as input.

use podrunner_config::*;

use crate::test_env;

const SEED: &str = include_str!("../../../../examples/seed-values.yaml");

fn helm(text: &str) -> Result<LoadedConfig, ConfigError> {
    load_helm_values("values.yaml", text, &test_env(), &HelmOptions::default())
}

fn helm_errors(text: &str) -> Vec<String> {
    match helm(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

#[test]
fn the_seed_deployment() {
    let loaded = helm(SEED).unwrap_or_else(|e| panic!("{e}"));
    let config = &loaded.config;
    assert_eq!(config.concurrent, 10, "the chart's default");
    assert_eq!(config.runners.len(), 1);
    let runner = &config.runners[0];
    assert_eq!(
        runner.executor,
        Some(Executor::Kubernetes),
        "the chart's default executor"
    );
    let k = runner.kubernetes.as_ref().unwrap();
    assert_eq!(k.namespace(), "gitlab-runner");
    assert_eq!(k.cpu_request, Some("2".parse().unwrap()));
    assert_eq!(k.memory_request, Some("8Gi".parse().unwrap()));
    assert_eq!(
        k.pod_labels.get("use-fargate").map(String::as_str),
        Some("true")
    );
    assert_eq!(k.poll_timeout_secs(), 600);
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "values.yaml:7:5: runners[0].url: is not set, so this runner cannot reach GitLab: set url (or gitlabUrl in Helm values)",
            "values.yaml:7:5: runners[0].token: is not set: run `podrunner register`, or give runnerToken in Helm values",
        ]
    );
}

#[test]
fn chart_values_fill_the_runner_and_the_global_section() {
    let text = format!(
        "gitlabUrl: https://gitlab.example.com/\nrunnerToken: glrt-abc\nconcurrent: 25\ncheckInterval: 7\nlogLevel: debug\nlogFormat: json\nshutdown_timeout: 90\nmetrics:\n  enabled: true\n{SEED}"
    );
    let loaded = helm(&text).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = loaded.config;
    assert_eq!(
        (
            config.concurrent,
            config.check_interval,
            config.shutdown_timeout
        ),
        (25, 7, 90)
    );
    assert_eq!(config.log_level, LogLevel::Debug);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.listen_address.as_deref(), Some(":9252"));
    assert_eq!(
        config.runners[0].url.as_deref(),
        Some("https://gitlab.example.com/")
    );
    assert_eq!(config.runners[0].token.as_deref(), Some("glrt-abc"));
}

#[test]
fn namespace_comes_from_the_toml_then_job_namespace_then_the_release() {
    let toml_less = "runners:\n  jobNamespace: ci-jobs\n  config: |\n    [[runners]]\n      [runners.kubernetes]\n        cpu_request = \"1\"\n";
    assert_eq!(
        helm(toml_less).unwrap().config.runners[0]
            .kubernetes
            .as_ref()
            .unwrap()
            .namespace(),
        "ci-jobs"
    );
    let options = HelmOptions {
        release_namespace: "gitlab".into(),
        ..HelmOptions::default()
    };
    let bare = load_helm_values(
        "values.yaml",
        "runners:\n  config: |\n    [[runners]]\n",
        &test_env(),
        &options,
    )
    .unwrap();
    assert_eq!(
        bare.config.runners[0]
            .kubernetes
            .as_ref()
            .unwrap()
            .namespace(),
        "gitlab"
    );
    // No runners.config at all: the chart's default, rendered with the release namespace.
    let default = load_helm_values(
        "values.yaml",
        "gitlabUrl: https://gitlab.example.com\n",
        &test_env(),
        &options,
    )
    .unwrap();
    let k = default.config.runners[0].kubernetes.clone().unwrap();
    assert_eq!(
        (k.namespace(), k.image.as_deref()),
        ("gitlab", Some("alpine"))
    );
}

#[test]
fn errors_in_runners_config_point_into_the_values_file() {
    let text = "gitlabUrl: https://gitlab.example.com\nrunners:\n  config: |\n    [[runners]]\n      [runners.kubernetes]\n        memory_request = \"8 GB\"\n";
    let errors = helm_errors(text);
    assert!(errors[0].starts_with("values.yaml:6:26: runners[0].kubernetes.memory_request: \"8 GB\" is not a Kubernetes quantity"), "{errors:?}");
}

#[test]
fn template_expressions_beyond_the_subset_are_refused_with_their_place() {
    let text = "runners:\n  config: |\n    [[runners]]\n      [runners.kubernetes]\n        image = \"{{ include \\\"img\\\" . }}\"\n";
    let errors = helm_errors(text);
    assert!(
        errors[0]
            .starts_with("values.yaml:5:18: runners.config: the template expression {{ include"),
        "{errors:?}"
    );
    let rendered = helm("image:\n  tag: v9\nrunners:\n  config: |\n    [[runners]]\n      [runners.kubernetes]\n        namespace = \"{{ .Release.Namespace }}\"\n        image = \"alpine:{{ .Values.image.tag }}\"\n").unwrap();
    let k = rendered.config.runners[0].kubernetes.clone().unwrap();
    assert_eq!(
        (k.namespace(), k.image.as_deref()),
        ("default", Some("alpine:v9"))
    );
}

#[test]
fn values_of_the_wrong_type_are_located() {
    let errors = helm_errors(
        "gitlabUrl: https://gitlab.example.com\nconcurrent: ten\nrunners:\n  executor: 3\n",
    );
    assert!(
        errors.contains(
            &"values.yaml:2:1: concurrent: expected a whole number, found the string \"ten\""
                .to_owned()
        ),
        "{errors:?}"
    );
    assert!(
        errors.contains(
            &"values.yaml:4:3: runners.executor: expected a string, found the number 3".to_owned()
        ),
        "{errors:?}"
    );
    let errors = helm_errors("concurrent: 0\n");
    assert_eq!(
        errors,
        ["values.yaml:1:1: concurrent: is 0; it must be at least 1"]
    );
    let errors = helm_errors("runners:\n  executor: docker\n");
    assert!(
        errors[0]
            .starts_with("values.yaml:2:3: runners.executor: podrunner has no \"docker\" executor"),
        "{errors:?}"
    );
    let errors = helm_errors("runners: [\n");
    assert!(
        errors[0].starts_with("values.yaml:2:1: not valid YAML"),
        "{errors:?}"
    );
}

#[test]
fn template_global_keys_and_extra_runners_are_reported() {
    let text = "runners:\n  config: |\n    concurrent = 99\n    [[runners]]\n      [runners.kubernetes]\n        namespace = \"a\"\n    [[runners]]\n      name = \"second\"\n";
    let loaded = helm(text).unwrap();
    assert_eq!(loaded.config.concurrent, 10, "the chart's concurrent wins");
    assert_eq!(loaded.config.runners.len(), 1);
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert!(warnings.iter().any(|w| w.starts_with("values.yaml:3:5: concurrent: is ignored inside runners.config")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.starts_with("values.yaml:7:5: runners[1]: only the first [[runners]] entry")), "{warnings:?}");
}
