//! Errors and warnings name file:line:column, the key path and the fix.

use crate::{errors, warnings};

const HEAD: &str =
    "concurrent = 1\n[[runners]]\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n";

fn with_kubernetes(line: &str) -> String {
    format!("{HEAD}        namespace = \"ci\"\n{line}\n")
}

fn starts_with(lines: &[String], expected: &str) {
    assert!(
        lines.iter().any(|l| l.starts_with(expected)),
        "no line starts with\n  {expected}\nin\n  {}",
        lines.join("\n  ")
    );
}

#[test]
fn bad_quantity_names_line_column_and_key() {
    let text = format!("{HEAD}        cpu_request = \"2 cores\"\n");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    starts_with(
        &errors,
        "config.toml:5:23: runners[0].kubernetes.cpu_request: \"2 cores\" is not a Kubernetes quantity (examples:",
    );
}

#[test]
fn quantity_written_as_a_number_says_to_quote_it() {
    starts_with(
        &errors(&with_kubernetes("cpu_request = 2")),
        "config.toml:6:15: runners[0].kubernetes.cpu_request: write quantities as strings, as gitlab-runner requires: \"2\" instead of 2",
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    starts_with(
        &errors(&with_kubernetes("poll_timeout = \"600\"")),
        "config.toml:6:16: runners[0].kubernetes.poll_timeout: expected a whole number, found string \"600\"",
    );
    starts_with(
        &errors(&with_kubernetes("privileged = \"yes\"")),
        "config.toml:6:14: runners[0].kubernetes.privileged: expected a boolean, found string \"yes\"",
    );
    starts_with(
        &errors(&with_kubernetes("cap_add = \"NET_ADMIN\"")),
        "config.toml:6:11: runners[0].kubernetes.cap_add: expected a list, found string \"NET_ADMIN\"",
    );
}

#[test]
fn bad_duration_and_regex() {
    starts_with(
        &errors(&with_kubernetes(
            "cleanup_resources_timeout = \"5 minutes\"",
        )),
        "config.toml:6:29: runners[0].kubernetes.cleanup_resources_timeout: \"5 minutes\" is not a duration",
    );
    starts_with(
        &errors(&with_kubernetes("namespace_overwrite_allowed = \"ci-(\"")),
        "config.toml:6:31: runners[0].kubernetes.namespace_overwrite_allowed: \"ci-(\" is not a valid regular expression",
    );
}

#[test]
fn request_above_limit_points_at_the_request() {
    let errors = errors(&format!(
        "{HEAD}    namespace = \"ci\"\n    cpu_request = \"2\"\n    cpu_limit = \"1500m\"\n    memory_request = \"1Gi\"\n    memory_limit = \"512Mi\"\n"
    ));
    assert_eq!(
        errors.len(),
        2,
        "both contradictions are reported: {errors:?}"
    );
    starts_with(
        &errors,
        "config.toml:6:19: runners[0].kubernetes.cpu_request: 2 is above cpu_limit 1500m; Kubernetes refuses such a pod",
    );
    starts_with(
        &errors,
        "config.toml:8:22: runners[0].kubernetes.memory_request: 1Gi is above memory_limit 512Mi",
    );
}

#[test]
fn concurrent_must_be_at_least_one() {
    starts_with(
        &errors("concurrent = 0\n"),
        "config.toml:1:14: concurrent: is 0; it must be at least 1",
    );
    starts_with(
        &errors("check_interval = 3\n"),
        "config.toml:1:1: concurrent: is missing; it must be at least 1 (gitlab-runner will not start either): add `concurrent = 4`",
    );
}

#[test]
fn executors_podrunner_does_not_have() {
    starts_with(
        &errors("concurrent = 1\n[[runners]]\nexecutor = \"docker\"\n"),
        "config.toml:3:12: runners[0].executor: podrunner has no \"docker\" executor; use executor = \"kubernetes\"",
    );
    starts_with(
        &errors("concurrent = 1\n[[runners]]\nname = \"x\"\n"),
        "config.toml:2:1: runners[0].executor: is missing; set executor = \"kubernetes\"",
    );
    starts_with(
        &errors("concurrent = 1\n[[runners]]\nexecutor = \"shell\"\nshell = \"pwsh\"\n"),
        "config.toml:4:9: runners[0].shell: podrunner runs job scripts with bash or sh",
    );
}

#[test]
fn toml_syntax_errors_are_located() {
    let errors = errors("concurrent = 1\n[[runners]\nexecutor = \"shell\"\n");
    assert!(errors[0].starts_with("config.toml:2:"), "{errors:?}");
    let errors = crate::errors("concurrent = 1\nconcurrent = 2\n");
    assert!(
        errors[0].starts_with("config.toml:2:1:") && errors[0].contains("duplicate key"),
        "{errors:?}"
    );
}

#[test]
fn other_contradictions() {
    starts_with(
        &errors(
            "concurrent = 1\n[[runners]]\nexecutor = \"shell\"\nurl = \"gitlab.example.com\"\n",
        ),
        "config.toml:4:7: runners[0].url: \"gitlab.example.com\" is not an http:// or https:// URL",
    );
    starts_with(
        &errors(&with_kubernetes("cert_file = \"/c\"")),
        "config.toml:4:3: runners[0].kubernetes: client certificate authentication needs cert_file, key_file and ca_file; missing: key_file, ca_file",
    );
    starts_with(
        &errors(&with_kubernetes(
            "[runners.kubernetes.node_tolerations]\n\"ci\" = \"NoSchedul\"",
        )),
        "config.toml:7:8: runners[0].kubernetes.node_tolerations.ci: \"NoSchedul\" is not a taint effect",
    );
    starts_with(
        &errors(&with_kubernetes(
            "[runners.kubernetes.pod_labels]\n\"bad label\" = \"x\"",
        )),
        "config.toml:7:15: runners[0].kubernetes.pod_labels.\"bad label\": is not a valid Kubernetes key",
    );
    starts_with(
        &errors(&with_kubernetes(
            "[[runners.kubernetes.host_aliases]]\nip = \"not-ip\"\nhostnames = [\"db\"]",
        )),
        "config.toml:7:6: runners[0].kubernetes.host_aliases[0].ip: \"not-ip\" is not an IP address",
    );
    starts_with(
        &errors(
            "concurrent = 1\n[[runners]]\nexecutor = \"shell\"\nenvironment = [\"A=1\", \"B\"]\n",
        ),
        "config.toml:4:23: runners[0].environment[1]: \"B\" is not KEY=VALUE",
    );
    starts_with(
        &errors("concurrent = 1\n[[runners]]\nexecutor = \"shell\"\nlimit = -1\n"),
        "config.toml:4:9: runners[0].limit: is -1; use 0 for no limit",
    );
    starts_with(
        &errors("concurrent = 1\nlisten_address = \"9252\"\n"),
        "config.toml:2:18: listen_address: \"9252\" is not host:port",
    );
}

#[test]
fn fargate_profiles_are_checked() {
    let text = with_kubernetes(
        "[runners.kubernetes.fargate]\nusd_per_gb_hour = -1.0\n[[runners.kubernetes.fargate.profiles]]\nname = \"ci\"\n[[runners.kubernetes.fargate.profiles.selectors]]\nlabels = { a = \"b\" }\n[[runners.kubernetes.fargate.profiles]]\nname = \"ci\"\n",
    );
    let errors = errors(&text);
    starts_with(
        &errors,
        "config.toml:7:19: runners[0].kubernetes.fargate.usd_per_gb_hour: -1 is not a price",
    );
    starts_with(
        &errors,
        "config.toml:10:1: runners[0].kubernetes.fargate.profiles[0].selectors[0].namespace: is missing: every Fargate selector names a namespace",
    );
    starts_with(
        &errors,
        "config.toml:13:8: runners[0].kubernetes.fargate.profiles[1].name: \"ci\" is declared twice",
    );
    starts_with(
        &errors,
        "config.toml:12:1: runners[0].kubernetes.fargate.profiles[1].selectors: is empty",
    );
}

#[test]
fn unknown_keys_are_warnings_with_suggestions() {
    let text =
        format!("{HEAD}        namespace = \"ci\"\n    cpu_requets = \"1\"\n  namespace_x = 1\n");
    let warnings = warnings(&text);
    starts_with(
        &warnings,
        "config.toml:6:5: runners[0].kubernetes.cpu_requets: unknown key \"cpu_requets\" is ignored (gitlab-runner ignores it too); did you mean \"cpu_request\"?",
    );
    starts_with(
        &warnings,
        "config.toml:7:3: runners[0].kubernetes.namespace_x: unknown key",
    );
    let misplaced = crate::warnings(
        "concurrent = 1\n[[runners]]\nexecutor = \"kubernetes\"\nnamespace = \"ci\"\n[runners.kubernetes]\nnamespace = \"ci\"\n",
    );
    starts_with(
        &misplaced,
        "config.toml:4:1: runners[0].namespace: unknown key \"namespace\" is ignored (gitlab-runner ignores it too); it belongs in [runners.kubernetes]",
    );
}

#[test]
fn settings_that_work_but_probably_not_as_meant() {
    let w = warnings(
        "concurrent = 2\n[[runners]]\nexecutor = \"kubernetes\"\nlimit = 5\nunhealthy_interval = 300\n[runners.feature_flags]\nFF_TIMESTAMP = false\n",
    );
    starts_with(
        &w,
        "config.toml:4:9: runners[0].limit: 5 can never be reached: concurrent is 2",
    );
    starts_with(
        &w,
        "config.toml:5:22: runners[0].unhealthy_interval: 300 is read as 300 nanoseconds",
    );
    starts_with(
        &w,
        "config.toml:7:16: runners[0].feature_flags.FF_TIMESTAMP: is not a feature flag podrunner knows; did you mean \"FF_TIMESTAMPS\"?",
    );
    starts_with(
        &w,
        "config.toml:2:1: runners[0].kubernetes: is missing, so job pods go to namespace \"default\"",
    );
    starts_with(&w, "config.toml:2:1: runners[0].url: is not set");
    let w = warnings(&format!(
        "{HEAD}    cpu_request = \"1\"\n    cpu_request_overwrite_max_allowed = \"500m\"\n    [runners.kubernetes.pod_labels]\n      \"manager.runner.gitlab.com/name\" = \"x\"\n"
    ));
    starts_with(
        &w,
        "config.toml:4:3: runners[0].kubernetes.namespace: is not set, so job pods go to namespace \"default\"",
    );
    starts_with(
        &w,
        "config.toml:6:41: runners[0].kubernetes.cpu_request_overwrite_max_allowed: 500m is below cpu_request 1, so jobs can only lower it",
    );
    starts_with(
        &w,
        "config.toml:8:42: runners[0].kubernetes.pod_labels.\"manager.runner.gitlab.com/name\": is one of the runner's own labels",
    );
    // Tables of other executors are listed as read but not honoured, not as warnings.
    let loaded = crate::load(
        "concurrent = 1\n[[runners]]\nexecutor = \"shell\"\n[runners.docker]\nimage = \"x\"\n",
    )
    .unwrap();
    assert!(
        !loaded
            .warnings
            .iter()
            .any(|w| w.to_string().contains("docker")),
        "{:?}",
        loaded.warnings
    );
    assert_eq!(
        loaded.not_honoured[0].to_string(),
        "config.toml:4:1: runners[0].docker — used by gitlab-runner's docker executor; podrunner runs the kubernetes and shell executors only",
    );
}

#[test]
fn unreadable_file_names_the_path() {
    let error = podrunner_config::load_file(
        std::path::Path::new("/nonexistent/config.toml"),
        &crate::test_env(),
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("cannot read /nonexistent/config.toml: "),
        "{error}"
    );
}

#[test]
fn pod_spec_patches_that_cannot_be_read_or_will_not_apply() {
    let patch = "[[runners.kubernetes.pod_spec]]\n  name = \"p\"\n  patch = 'hostname: [a'\n";
    let errors = errors(&with_kubernetes(patch));
    assert!(
        errors.iter().any(
            |e| e.contains("runners[0].kubernetes.pod_spec[0].patch: is neither YAML nor JSON")
        ),
        "{errors:?}"
    );
    let off = with_kubernetes("[[runners.kubernetes.pod_spec]]\n  patch = 'hostname: ci'\n");
    assert!(
        warnings(&off).iter().any(|w| w.contains(
            "runners[0].kubernetes.pod_spec: applies only to jobs that turn FF_USE_ADVANCED_POD_SPEC_CONFIGURATION on"
        )),
        "{:?}",
        warnings(&off)
    );
    let on = off.replace(
        "  executor = \"kubernetes\"\n",
        "  executor = \"kubernetes\"\n  environment = [\"FF_USE_ADVANCED_POD_SPEC_CONFIGURATION=true\"]\n",
    );
    assert!(
        !warnings(&on).iter().any(|w| w.contains("pod_spec")),
        "{:?}",
        warnings(&on)
    );
}
