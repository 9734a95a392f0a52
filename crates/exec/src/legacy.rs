//! A bridge until the pipeline builder lands: today's `Pipeline::parse` result as the
//! resolved `model::Pipeline` the scheduler runs. It carries only what the old parser knows
//! (no `rules`, `when`, `parallel`, `environment`, reports); the push-level predefined
//! variables are read from the local repository as the old payload did.

use std::path::Path;

use podrunner_gitlab::payload::{Artifact, Cache, JobVariable};

use crate::model;
use crate::pipeline::{Pipeline, PipelineJob};

/// Turns the old parser's pipeline into the model; `project` is the project directory.
pub(crate) fn to_model(old: &Pipeline, project: &Path) -> model::Pipeline {
    model::Pipeline {
        stages: old.stages.clone(),
        name: None,
        variables: old.variables.iter().map(variable).collect(),
        predefined: predefined(project),
        jobs: old.jobs.iter().map(|j| job(j, &old.variables)).collect(),
        warnings: old.warnings.clone(),
    }
}

fn variable((key, value, raw): &(String, String, bool)) -> JobVariable {
    JobVariable {
        key: key.clone(),
        value: value.clone(),
        public: true,
        file: false,
        masked: false,
        raw: *raw,
    }
}

/// The job's variables are the global ones then its own (the last of a name wins), as the
/// model's `Job::variables` carries the inherited globals.
fn job(old: &PipelineJob, globals: &[(String, String, bool)]) -> model::Job {
    let artifacts = old
        .artifacts
        .iter()
        .map(|a| Artifact {
            name: a.name.clone().unwrap_or_default(),
            untracked: a.untracked,
            paths: a.paths.clone(),
            exclude: a.exclude.clone(),
            when: a.when.clone().unwrap_or_else(|| "on_success".to_owned()),
            artifact_type: "archive".to_owned(),
            artifact_format: "zip".to_owned(),
            expire_in: a.expire_in.clone().unwrap_or_default(),
        })
        .collect();
    let cache = match &old.cache {
        Some(serde_json::Value::Array(entries)) => entries
            .iter()
            .filter_map(|e| serde_json::from_value::<Cache>(e.clone()).ok())
            .collect(),
        Some(entry @ serde_json::Value::Object(_)) => {
            serde_json::from_value::<Cache>(entry.clone())
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    };
    model::Job {
        name: old.name.clone(),
        base_name: old.name.clone(),
        stage: old.stage.clone(),
        image: old.image.clone(),
        services: Vec::new(),
        variables: globals.iter().chain(&old.variables).map(variable).collect(),
        before_script: old.before_script.clone(),
        script: old.script.clone(),
        after_script: old.after_script.clone(),
        artifacts,
        cache,
        needs: old.needs.as_ref().map(|needs| {
            needs
                .iter()
                .map(|n| model::Need {
                    job: n.clone(),
                    artifacts: true,
                    optional: false,
                })
                .collect()
        }),
        dependencies: old.dependencies.clone(),
        when: model::When::OnSuccess,
        allow_failure: if old.allow_failure {
            model::AllowFailure::Yes
        } else {
            model::AllowFailure::No
        },
        environment: None,
        parallel: None,
        timeout: old.timeout,
        retry: 0,
    }
}

/// `CI_COMMIT_*` and `CI_PROJECT_NAME` from the repository at `project`, as the old payload
/// had them.
fn predefined(project: &Path) -> Vec<JobVariable> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(project)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let sha = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "0".repeat(40));
    let git_ref = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "local".to_owned());
    let project_name = project
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".to_owned());
    let short = sha.get(..8).unwrap_or(&sha).to_owned();
    [
        ("CI_PIPELINE_SOURCE", "push".to_owned()),
        ("CI_PROJECT_NAME", project_name),
        ("CI_COMMIT_SHA", sha),
        ("CI_COMMIT_SHORT_SHA", short),
        ("CI_COMMIT_REF_NAME", git_ref),
    ]
    .into_iter()
    .map(|(key, value)| JobVariable {
        key: key.to_owned(),
        value,
        public: true,
        file: false,
        masked: false,
        raw: true,
    })
    .collect()
}
