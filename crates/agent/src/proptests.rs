//! Property tests: arbitrary job payloads (any JSON, extreme numbers, odd strings) and
//! spec values go through everything the agent builds from its spec before it runs a
//! stage, and come out as values or errors, never as a panic.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::job::context::{build_variables, deadline_after, job_dirs, log_settings};
use crate::script::{ShellKind, StageScript, render};
use crate::spec::AgentSpec;
use podrunner_gitlab::log::{Stream, Trace};

/// Numbers at and around every edge a payload field can hit.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        Just(json!(0)),
        Just(json!(-1)),
    ]
}

/// Strings a careless user or an attacker would send.
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[./\\\\%2eEfF$ {}\u{0}\n-]{0,24}",
        Just("../../../escape".to_owned()),
        Just("$".to_owned()),
        Just("${".to_owned()),
        Just("$$$A${B}".to_owned()),
        Just("x".repeat(1_000)),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(odd_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn variable() -> impl Strategy<Value = Value> {
    (odd_string(), odd_string(), any::<[bool; 4]>()).prop_map(|(key, value, [public, masked, file, raw])| {
        json!({"key": key, "value": value, "public": public, "masked": masked, "file": file, "raw": raw})
    })
}

/// A payload of the right shape whose every value is hostile.
fn shaped_payload() -> impl Strategy<Value = Value> {
    (
        number(),
        odd_string(),
        number(),
        prop::collection::vec(variable(), 0..6),
        prop::collection::vec(odd_string(), 0..3),
        (odd_string(), odd_string(), odd_string()),
        any_json(),
    )
        .prop_map(|(id, token, timeout, variables, script, (key, fallback, path), wild)| {
            json!({
                "id": id,
                "token": token,
                "job_info": {"name": path, "project_full_path": path, "project_id": id},
                "git_info": {"ref": key, "sha": fallback, "depth": timeout, "refspecs": [key]},
                "runner_info": {"timeout": timeout},
                "variables": variables,
                "steps": [{"name": "script", "script": script, "timeout": timeout, "when": key}],
                "cache": [{"key": key, "fallback_keys": [fallback, path], "paths": [path], "policy": key}],
                "artifacts": [{"name": key, "paths": [path], "expire_in": fallback}],
                "dependencies": [{"id": id, "name": path, "artifacts_file": {"filename": path, "size": timeout}}],
                "features": wild,
            })
        })
}

/// Everything the agent derives from its spec before the first stage.
fn build_everything(spec: Option<AgentSpec>) {
    let Some(spec) = &spec else {
        return;
    };
    let payload = &spec.job;
    let (project_dir, temp_dir) = job_dirs(spec, payload);
    let variables = build_variables(spec, payload, &project_dir, &temp_dir);
    let trace = Trace::new(&log_settings(spec, payload, &variables));
    let _ = deadline_after(std::time::Duration::from_secs(payload.timeout_secs()));
    for raw in payload
        .job
        .cache
        .iter()
        .flat_map(|c| std::iter::once(&c.key).chain(&c.fallback_keys))
    {
        let _ = crate::cache_key::sanitize(&variables.expand(raw));
    }
    let exports: Vec<(String, String)> = variables
        .effective()
        .into_iter()
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect();
    let mut writer = trace.writer(Stream::JOB);
    for step in &payload.job.steps {
        let text = render(&StageScript {
            shell: ShellKind::Bash,
            exports: exports
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            workdir: &project_dir.display().to_string(),
            commands: step.script.iter().map(String::as_str).collect(),
            debug_trace: false,
        });
        let _ = writer.write_bytes(text.as_bytes());
    }
    let _ = writer.flush_all();
}

/// A spec file with `job` as its payload, read as the agent reads it (`None`: refused, which
/// is an error, never a panic).
fn spec_with(job: Value, output_limit_kib: u64) -> Option<AgentSpec> {
    let mut spec = serde_json::to_value(AgentSpec {
        output_limit_kib,
        builds_dir: "/nonexistent/builds".into(),
        ..AgentSpec::default()
    })
    .ok()?;
    spec["job"] = job;
    AgentSpec::from_json(spec.to_string().as_bytes()).ok()
}

/// Cases of [`any_json_payloads_never_panic`].
pub const ANY_JSON_CASES: u32 = 512;
/// Cases of [`shaped_hostile_payloads_never_panic`].
pub const SHAPED_CASES: u32 = 256;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(ANY_JSON_CASES))]
    #[test]
    fn any_json_payloads_never_panic(job in any_json(), limit in any::<u64>()) {
        build_everything(spec_with(job, limit));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(SHAPED_CASES))]
    #[test]
    fn shaped_hostile_payloads_never_panic(job in shaped_payload(), limit in any::<u64>()) {
        build_everything(spec_with(job, limit));
    }
}

#[test]
fn extreme_timeouts_saturate() {
    for seconds in [u64::MAX, i64::MAX as u64, 1 << 40] {
        let deadline = deadline_after(std::time::Duration::from_secs(seconds));
        assert!(deadline > tokio::time::Instant::now());
    }
    let job = json!({"runner_info": {"timeout": i64::MAX}, "token": "t"});
    build_everything(spec_with(job, u64::MAX));
}
