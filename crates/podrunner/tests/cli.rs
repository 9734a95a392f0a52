//! The `podrunner` binary as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn podrunner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(args)
        .current_dir(workspace_root())
        .env_remove("CONFIG_FILE")
        .output()
        .expect("run podrunner")
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn config_check_of_the_seed_values() {
    let output = podrunner(&["config", "check", "--values", "examples/seed-values.yaml"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    for expected in [
        "examples/seed-values.yaml: valid",
        "executor kubernetes",
        "namespace:       gitlab-runner",
        "build:           cpu request 2, limit -; memory request 8Gi",
        "pod labels:      use-fargate=true",
        "poll timeout:    600s",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn config_check_json_of_the_seed_values() {
    let output = podrunner(&[
        "config",
        "check",
        "--values",
        "examples/seed-values.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON output");
    assert_eq!(report["valid"], true);
    let k = &report["runners"][0]["kubernetes"];
    assert_eq!(k["namespace"], "gitlab-runner");
    assert_eq!(k["resources"][0]["container"], "build");
    assert_eq!(k["resources"][0]["requests"]["cpu"], "2");
    assert_eq!(k["resources"][0]["requests"]["memory"], "8Gi");
    assert_eq!(k["pod_labels"]["use-fargate"], "true");
    assert_eq!(k["poll_timeout_secs"], 600);
    assert_eq!(report["warnings"][0]["location"]["line"], 7);
}

#[test]
fn invalid_config_exits_1_with_located_errors_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "concurrent = 1\n[[runners]]\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n        cpu_request = \"2 cores\"\n").unwrap();
    let output = podrunner(&["config", "check", "-c", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    let expected = format!(
        "error: {}:5:23: runners[0].kubernetes.cpu_request: \"2 cores\" is not a Kubernetes quantity",
        path.display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(stdout(&output).is_empty());

    let output = podrunner(&[
        "config",
        "check",
        "--config",
        path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(
        report["errors"][0]["path"],
        "runners[0].kubernetes.cpu_request"
    );
    assert_eq!(report["errors"][0]["location"]["column"], 23);
}

#[test]
fn missing_file_exits_1() {
    let output = podrunner(&["config", "check", "-c", "/nonexistent/config.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot read /nonexistent/config.toml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(
        podrunner(&["config", "check", "--format", "xml"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        podrunner(&["config", "check", "-c", "a", "--values", "b"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(podrunner(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(
        podrunner(&["config", "check", "--release-namespace", "x"])
            .status
            .code(),
        Some(2),
        "--release-namespace needs --values"
    );
}

#[test]
fn version_and_help() {
    let output = podrunner(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output).trim(),
        format!("podrunner {}", env!("CARGO_PKG_VERSION"))
    );
    let help = stdout(&podrunner(&["--help"]));
    assert!(help.contains("config"), "{help}");
    let help = stdout(&podrunner(&["config", "check", "--help"]));
    for flag in ["--config", "--values", "--format"] {
        assert!(help.contains(flag), "{help}");
    }
}

#[test]
fn config_from_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "concurrent = 2\n[[runners]]\nexecutor = \"shell\"\nurl = \"https://gitlab.example.com\"\ntoken = \"glrt-x\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["config", "check"])
        .env("CONFIG_FILE", &path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("concurrent 2")
            && text.contains("token:           set")
            && !text.contains("glrt-x"),
        "the token is never printed:\n{text}"
    );
}

#[test]
fn plan_of_the_seed_values_is_a_valid_fargate_bound_pod() {
    let output = podrunner(&[
        "plan",
        "--values",
        "examples/seed-values.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let pod = &plan["runners"][0]["pod"];
    assert_eq!(pod["metadata"]["namespace"], "gitlab-runner");
    assert_eq!(pod["metadata"]["labels"]["use-fargate"], "true");
    assert_eq!(pod["spec"]["containers"][0]["name"], "build");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["requests"],
        serde_json::json!({"cpu": "2", "memory": "8Gi"})
    );

    let yaml = podrunner(&["plan", "--values", "examples/seed-values.yaml"]);
    assert_eq!(yaml.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed-plan.yaml");
    std::fs::write(&file, &yaml.stdout).unwrap();
    let validate =
        std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".to_owned());
    let checked = Command::new(&validate)
        .arg("--strict")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {validate} ({e}): scripts/test installs it"));
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let refused = podrunner(&[
        "plan",
        "--values",
        "examples/seed-values.yaml",
        "--var",
        "KUBERNETES_CPU_REQUEST=4",
    ]);
    assert_eq!(
        refused.status.code(),
        Some(0),
        "an overwrite without a maximum is ignored with a warning"
    );
    assert!(
        stderr(&refused).contains("KUBERNETES_CPU_REQUEST is ignored"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn plan_predicts_the_fargate_size_and_price() {
    let output = podrunner(&[
        "plan",
        "--values",
        "examples/seed-values.yaml",
        "--fargate",
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let fargate = &plan["runners"][0]["fargate"];
    assert_eq!(
        (fargate["vcpu"].as_f64(), fargate["memory_gb"].as_f64()),
        (Some(2.0), Some(9.0))
    );
    assert!(
        (fargate["usd_per_hour"].as_f64().unwrap() - (2.0 * 0.04048 + 9.0 * 0.004445)).abs() < 1e-9
    );
    assert_eq!(fargate["problems"], serde_json::json!([]));
    let without = podrunner(&[
        "plan",
        "--values",
        "examples/seed-values.yaml",
        "--format",
        "json",
    ]);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&without)).unwrap();
    assert!(
        plan["runners"][0]["fargate"].is_null(),
        "no declared profile and no --fargate: not predicted to run on Fargate"
    );

    // Declared profiles decide; a privileged pod is a problem with the fix in the message.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "concurrent = 1\n[[runners]]\n  name = \"dind\"\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n    namespace = \"gitlab-runner\"\n    privileged = true\n    [runners.kubernetes.pod_labels]\n      use-fargate = \"true\"\n    [[runners.kubernetes.fargate.profiles]]\n      name = \"ci\"\n      [[runners.kubernetes.fargate.profiles.selectors]]\n        namespace = \"gitlab-*\"\n        labels = { use-fargate = \"true\" }\n",
    )
    .unwrap();
    let output = podrunner(&["plan", "-c", config.to_str().unwrap(), "--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let fargate = &plan["runners"][0]["fargate"];
    assert_eq!(fargate["profile"], "ci");
    let problems = fargate["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p
            .as_str()
            .unwrap()
            .starts_with("container build: securityContext.privileged is true")
            && p.as_str().unwrap().contains("kaniko or buildah")),
        "{problems:?}"
    );
}
