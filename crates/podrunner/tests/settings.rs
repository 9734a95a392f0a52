//! No silent settings: `config check` and `run` name every key a file sets that podrunner
//! reads but does not honour, with what to do instead.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A config.toml setting every key podrunner read without effect when this test was written,
/// written out here rather than taken from the product's table. Each key is paired with a
/// piece of the advice the user must see.
const SILENT: &[(&str, &str)] = &[
    ("connection_max_age", "not applied"),
    ("sentry_dsn", "not sent to Sentry"),
    ("user", "runs jobs as the user running podrunner"),
    ("labels", "not used by podrunner"),
    (
        "session_server",
        "interactive web terminals are not offered",
    ),
    ("runners[0].prepare_timeout", "not applied"),
    ("runners[0].get_sources_timeout", "not applied"),
    ("runners[0].safe_directory_checkout", "safe.directory"),
    ("runners[0].clean_git_config", "not applied"),
    (
        "runners[0].feature_flags.FF_USE_FASTZIP",
        "does not read this feature flag",
    ),
    (
        "runners[0].feature_flags.FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY",
        "no attach or exec strategy",
    ),
    ("runners[0].labels", "not used by podrunner"),
    ("runners[0].artifact.upload_timeout", "not applied"),
    ("runners[0].artifact.response_header_timeout", "not applied"),
    (
        "runners[0].docker",
        "used by gitlab-runner's docker executor",
    ),
    (
        "runners[0].machine",
        "used by gitlab-runner's docker+machine executor",
    ),
    (
        "runners[0].custom",
        "used by gitlab-runner's custom executor",
    ),
    ("runners[0].ssh", "used by gitlab-runner's ssh executor"),
    (
        "runners[0].parallels",
        "used by gitlab-runner's parallels executor",
    ),
    (
        "runners[0].virtualbox",
        "used by gitlab-runner's virtualbox executor",
    ),
    ("runners[0].autoscaler", "docker-autoscaler"),
    ("runners[0].referees", "not offered"),
    (
        "runners[0].kubernetes.helper_image",
        "podrunner needs no helper image: the agent runs in the build container",
    ),
    (
        "runners[0].kubernetes.helper_image_flavor",
        "needs no helper image",
    ),
    (
        "runners[0].kubernetes.helper_image_autoset_arch_and_os",
        "needs no helper image",
    ),
    (
        "runners[0].kubernetes.cleanup_resources_timeout",
        "not applied",
    ),
    ("runners[0].kubernetes.poll_interval", "watches pods"),
    (
        "runners[0].kubernetes.resource_availability_check_max_attempts",
        "not applied",
    ),
    (
        "runners[0].kubernetes.helper_container_security_context",
        "no helper container",
    ),
    ("runners[0].kubernetes.logs_base_dir", "not applied"),
    ("runners[0].kubernetes.scripts_base_dir", "not applied"),
    (
        "runners[0].kubernetes.suspend_pvc_size",
        "suspendable environments",
    ),
    (
        "runners[0].kubernetes.suspend_pvc_storage_class",
        "suspendable environments",
    ),
    (
        "runners[0].kubernetes.services[0].suspend_data_path",
        "suspendable environments",
    ),
    ("runners[0].kubernetes.autoscaler", "pause-pod pre-warming"),
];

const CONFIG: &str = r#"concurrent = 2
log_format = "json"
connection_max_age = "10m"
sentry_dsn = "https://sentry.example.com/1"
user = "gitlab-runner"

[labels]
  team = "ci"

[session_server]
  listen_address = "127.0.0.1:8093"

[[runners]]
  name = "silent"
  url = "http://127.0.0.1:9/"
  token = "glrt-silent"
  executor = "kubernetes"
  prepare_timeout = "10m"
  get_sources_timeout = "10m"
  safe_directory_checkout = false
  clean_git_config = false
  [runners.labels]
    team = "ci"
  [runners.feature_flags]
    FF_TIMESTAMPS = true
    FF_USE_FASTZIP = true
    FF_USE_ADVANCED_POD_SPEC_CONFIGURATION = true
    FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY = false
  [runners.artifact]
    upload_timeout = "30m"
    response_header_timeout = "5m"
  [runners.cache]
    Type = "s3"
    Shared = true
    [runners.cache.s3]
      BucketName = "runner-cache"
  [runners.docker]
    image = "alpine"
  [runners.machine]
    IdleCount = 1
  [runners.custom]
    run_exec = "/bin/run"
  [runners.ssh]
    host = "build.example.com"
  [runners.parallels]
    base_name = "vm"
  [runners.virtualbox]
    base_name = "vm"
  [runners.autoscaler]
    plugin = "aws"
  [runners.referees]
    [runners.referees.metrics]
      prometheus_address = "http://prometheus:9090"
  [runners.kubernetes]
    namespace = "ci"
    poll_timeout = 300
    cpu_request = "1"
    bearer_token_overwrite_allowed = true
    allowed_users = ["1000"]
    allowed_groups = ["1000"]
    node_tolerations_overwrite_allowed = ".*"
    helper_image = "registry.example.com/helper:latest"
    helper_image_flavor = "ubuntu"
    helper_image_autoset_arch_and_os = true
    cleanup_resources_timeout = "10m"
    poll_interval = 5
    resource_availability_check_max_attempts = 3
    logs_base_dir = "/tmp"
    scripts_base_dir = "/tmp"
    pod_disruption_budget = true
    suspend_pvc_size = "30Gi"
    suspend_pvc_storage_class = "gp3"
    [runners.kubernetes.pod_security_context]
      run_as_user = 1000
    [runners.kubernetes.helper_container_security_context]
      run_as_user = 1000
    [[runners.kubernetes.services]]
      name = "postgres:16"
      suspend_data_path = "/var/lib/postgresql/data"
    [[runners.kubernetes.pod_spec]]
      name = "hostname"
      patch = '{"hostname": "ci"}'
      patch_type = "merge"
    [runners.kubernetes.autoscaler]
      max_pause_pods = 2
"#;

fn podrunner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(args)
        .env_remove("CONFIG_FILE")
        .output()
        .expect("run podrunner")
}

fn write_config(dir: &Path) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The line of `CONFIG` on which `key` is written, for its location: global keys are looked
/// for before `[[runners]]`, the others after it.
fn line_of(key: &str) -> usize {
    let segments: Vec<&str> = key
        .split('.')
        .map(|s| s.split('[').next().unwrap())
        .collect();
    let last = segments[segments.len() - 1];
    let tail = segments[segments.len().saturating_sub(2)..].join(".");
    let lines: Vec<&str> = CONFIG.lines().collect();
    let runners = lines.iter().position(|l| *l == "[[runners]]").unwrap();
    let range = if key.starts_with("runners[0].") {
        runners..lines.len()
    } else {
        0..runners
    };
    range
        .clone()
        .find(|i| {
            let l = lines[*i].trim();
            l.starts_with(&format!("{last} ="))
                || l.ends_with(&format!(".{tail}]"))
                || l.ends_with(&format!(".{tail}]]"))
                || l == format!("[{tail}]")
        })
        .unwrap_or_else(|| panic!("{key} is not in the config"))
        + 1
}

#[test]
fn config_check_lists_every_silent_key_with_its_advice() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let output = podrunner(&["config", "check", "-c", &config]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, section) = text
        .split_once("\nread but not honoured by podrunner:\n")
        .unwrap_or_else(|| panic!("no \"read but not honoured by podrunner\" section in\n{text}"));
    let lines: Vec<&str> = section
        .lines()
        .take_while(|l| l.starts_with("  "))
        .collect();
    for (key, advice) in SILENT {
        let place = format!("  {config}:{}:", line_of(key));
        let line = lines
            .iter()
            .find(|l| l.contains(&format!(": {key} — ")))
            .unwrap_or_else(|| panic!("{key} is not listed in\n{section}"));
        assert!(line.starts_with(&place), "{key} not at {place}: {line}");
        assert!(line.contains(advice), "{key}: no {advice:?} in {line}");
    }
    assert_eq!(lines.len(), SILENT.len(), "{section}");
    for honoured in [
        "poll_timeout",
        "cpu_request",
        "run_as_user",
        "FF_TIMESTAMPS",
        "namespace",
        "FF_USE_ADVANCED_POD_SPEC_CONFIGURATION",
        "allowed_users",
        "allowed_groups",
        "node_tolerations_overwrite_allowed",
        "bearer_token_overwrite_allowed",
        "pod_spec",
        "Shared",
        "BucketName",
    ] {
        assert!(
            !lines.iter().any(|l| l.contains(&format!(".{honoured} — "))),
            "the honoured {honoured} is listed"
        );
    }
}

#[test]
fn config_check_json_lists_them_with_key_path_and_location() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let output = podrunner(&["config", "check", "-c", &config, "--format", "json"]);
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let listed = report["not_honoured"].as_array().expect("not_honoured");
    assert_eq!(listed.len(), SILENT.len());
    for (key, advice) in SILENT {
        let entry = listed
            .iter()
            .find(|e| e["path"] == *key)
            .unwrap_or_else(|| panic!("{key} is not in {listed:#?}"));
        assert!(entry["advice"].as_str().unwrap().contains(advice));
        assert_eq!(entry["location"]["file"], config.as_str());
        assert_eq!(entry["location"]["line"], line_of(key));
    }
}

/// `run` says each one once at start, as a configuration warning, before reaching GitLab.
#[test]
fn run_says_each_silent_key_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["run", "-c", &config])
        .env_remove("CONFIG_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if sender.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut warnings: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // The TOKEN check against the closed port follows the warnings: stop at it.
    while let Ok(line) = receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let record: serde_json::Value = match serde_json::from_str(&line) {
            Ok(record) => record,
            Err(_) => continue,
        };
        match record["warning"].as_str() {
            Some(warning) => warnings.push(warning.to_owned()),
            None if !warnings.is_empty() => break,
            None => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for (key, advice) in SILENT {
        let said: Vec<&String> = warnings
            .iter()
            .filter(|w| w.contains(&format!(": {key} — ")))
            .collect();
        assert_eq!(
            said.len(),
            1,
            "{key} said {} times in {warnings:#?}",
            said.len()
        );
        assert!(
            said[0].starts_with("read but not honoured by podrunner: "),
            "{}",
            said[0]
        );
        assert!(said[0].contains(advice), "{}", said[0]);
    }
}
