//! Secret-bearing types print redacted in `Debug`: the job payload, the agent's spec and the
//! runner configuration.

use podrunner_agent::AgentSpec;
use podrunner_config::{Config, RunnerConfig};
use podrunner_gitlab::JobPayload;

const SECRETS: &[&str] = &[
    "glcbt-job-token-1234",
    "masked-value-5678",
    "registry-password-9012",
    "dependency-token-3456",
    "glrt-runner-token-7890",
    "environment-secret-1357",
];

fn raw_payload() -> serde_json::Value {
    serde_json::json!({
        "id": 42,
        "token": "glcbt-job-token-1234",
        "git_info": {"repo_url": "https://gitlab-ci-token:glcbt-job-token-1234@gitlab.example.com/g/p.git"},
        "variables": [
            {"key": "CI_JOB_TOKEN", "value": "glcbt-job-token-1234", "masked": true, "public": false},
            {"key": "SECRET", "value": "masked-value-5678", "masked": true, "public": false}
        ],
        "credentials": [{"type": "registry", "url": "registry.example.com", "username": "u", "password": "registry-password-9012"}],
        "dependencies": [{"id": 41, "token": "dependency-token-3456", "name": "build"}],
    })
}

fn assert_redacted(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} prints {secret}: {text}");
    }
}

#[test]
fn debug_output_never_holds_a_secret() {
    let payload = JobPayload::from_value(raw_payload()).unwrap();
    assert_redacted("JobPayload", &format!("{payload:?}"));
    assert_redacted("JobPayload (pretty)", &format!("{payload:#?}"));

    let spec = AgentSpec {
        job: payload.clone(),
        environment: vec!["API_KEY=environment-secret-1357".into()],
        pre_build_script: Some("export X=environment-secret-1357".into()),
        ..AgentSpec::default()
    };
    let text = format!("{spec:?}");
    assert_redacted("AgentSpec", &text);
    assert!(
        text.contains("API_KEY") && text.contains("job 42"),
        "{text}"
    );

    let runner = RunnerConfig {
        token: Some("glrt-runner-token-7890".into()),
        ..RunnerConfig::default()
    };
    assert_redacted("RunnerConfig", &format!("{runner:?}"));
    let config = Config {
        runners: vec![runner],
        ..Config::default()
    };
    assert_redacted("Config", &format!("{config:#?}"));
}
