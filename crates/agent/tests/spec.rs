//! The spec is one versioned, typed hand-over: what the manager writes the agent reads back
//! whole, and a spec of another version or missing a required field is refused, naming why.

use podrunner_agent::{AgentSpec, Note, SPEC_VERSION, SpecError, TerminationReport};
use podrunner_gitlab::JobPayload;
use podrunner_gitlab::api::{FailureReason, JobState};

fn spec() -> AgentSpec {
    let payload = JobPayload::from_value(serde_json::json!({
        "id": 7,
        "token": "t",
        "job_info": {"name": "build", "project_id": 1, "project_full_path": "g/p"},
        "git_info": {"ref": "main"},
        "a_field_podrunner_does_not_know": {"kept": true},
    }))
    .unwrap();
    AgentSpec {
        job: payload,
        notes: vec![
            Note::info("a line"),
            Note::warning("a warning"),
            Note::FargateSize {
                profile: None,
                vcpu: 2.0,
                memory_gb: 4.0,
                requested_vcpu: 1.5,
                requested_memory_gb: 3.0,
                usd_per_hour: 0.1,
            },
        ],
        ..AgentSpec::default()
    }
}

fn json(spec: &AgentSpec) -> serde_json::Value {
    serde_json::to_value(spec).unwrap()
}

#[test]
fn a_spec_reads_back_whole_with_its_payload_as_gitlab_sent_it() {
    let written = spec();
    let read = AgentSpec::from_json(json(&written).to_string().as_bytes()).unwrap();
    assert_eq!(read.version, SPEC_VERSION);
    assert_eq!(read.job.job.id, 7);
    let tree = |raw: &serde_json::value::RawValue| -> serde_json::Value {
        serde_json::from_str(raw.get()).unwrap()
    };
    assert_eq!(tree(&read.job.raw), tree(&written.job.raw));
    assert_eq!(
        tree(&read.job.raw)["a_field_podrunner_does_not_know"]["kept"],
        true
    );
    assert_eq!(read.notes, written.notes);
    assert_eq!(json(&read), json(&written));
}

#[test]
fn a_spec_of_another_version_is_refused_naming_both_versions() {
    let mut value = json(&spec());
    value["version"] = (SPEC_VERSION + 1).into();
    let error = AgentSpec::from_json(value.to_string().as_bytes()).unwrap_err();
    assert!(
        matches!(error, SpecError::Version { found, expected } if found == SPEC_VERSION + 1 && expected == SPEC_VERSION),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains(&format!("version {}", SPEC_VERSION + 1))
            && text.contains(&format!("reads version {SPEC_VERSION}")),
        "{text}"
    );
    // A spec from before versioning (no `version`) is refused too, before anything else.
    value.as_object_mut().unwrap().remove("version");
    let error = AgentSpec::from_json(value.to_string().as_bytes()).unwrap_err();
    assert!(matches!(error, SpecError::NotASpec(_)), "{error:?}");
    assert!(error.to_string().contains("version"), "{error}");
}

#[test]
fn a_spec_missing_a_required_field_is_refused_naming_it() {
    for field in ["builds_dir", "gitlab", "job", "notes", "executor"] {
        let mut value = json(&spec());
        value.as_object_mut().unwrap().remove(field);
        let error = AgentSpec::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(error, SpecError::Invalid(_)), "{field}: {error:?}");
        assert!(
            error
                .to_string()
                .contains(&format!("missing field `{field}`")),
            "{field}: {error}"
        );
    }
    // Optional fields may be left out.
    let mut value = json(&spec());
    for field in [
        "project_dir",
        "temp_dir",
        "shell",
        "clone_url",
        "termination_report",
    ] {
        value.as_object_mut().unwrap().remove(field);
    }
    AgentSpec::from_json(value.to_string().as_bytes()).unwrap();
}

#[test]
fn a_spec_with_an_unknown_field_or_note_is_refused() {
    let mut value = json(&spec());
    value["trace_start_offset"] = 0.into();
    let error = AgentSpec::from_json(value.to_string().as_bytes()).unwrap_err();
    assert!(error.to_string().contains("trace_start_offset"), "{error}");
    let mut value = json(&spec());
    value["notes"] = serde_json::json!(["WARNING: a string note"]);
    assert!(AgentSpec::from_json(value.to_string().as_bytes()).is_err());
}

#[test]
fn a_termination_report_carries_gitlab_names() {
    let report = TerminationReport {
        final_update_delivered: true,
        state: JobState::Failed,
        failure_reason: Some(FailureReason::JobExecutionTimeout),
        exit_code: None,
        trace_bytes_sent: 10,
        aborted: false,
        fargate: None,
    };
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(value["state"], "failed");
    assert_eq!(value["failure_reason"], "job_execution_timeout");
    let back: TerminationReport = serde_json::from_value(value).unwrap();
    assert_eq!(back, report);
    let unknown = serde_json::json!({"final_update_delivered": true, "state": "failed",
        "failure_reason": "no_such_reason", "exit_code": null, "trace_bytes_sent": 0,
        "aborted": false, "fargate": null});
    assert!(serde_json::from_value::<TerminationReport>(unknown).is_err());
}
