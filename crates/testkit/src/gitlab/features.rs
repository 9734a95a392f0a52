//! Which runner features a job needs, and the drop of a job no runner feature set can run.
//!
//! GitLab keeps a table of features a build needs from its runner (`RUNNER_FEATURES` in
//! gitlabhq/gitlabhq `app/models/ci/build.rb`, plus `EE_RUNNER_FEATURES` in
//! `ee/app/models/ee/ci/build.rb`). When a runner picks a build, `Ci::RegisterJobService`
//! (`app/services/ci/register_job_service.rb`, `pre_assign_runner_checks`) asks
//! `build.supported_runner?(params.dig(:info, :features))`: every needed feature must be true
//! in the runner's `info.features`, or the build is dropped with `runner_unsupported`, never
//! handed to that runner, and the request goes on to the next build in the queue.
//!
//! GitLab decides from the build's `options` (the job's YAML). The stand-in reads the same
//! facts from the payload it will send where the payload carries them (reports, exclude,
//! fallback keys, release steps, refspecs, secrets) and from [`JobOptions`] where only the
//! YAML does (exit codes).

use serde_json::Value;

/// What a job's YAML says that the payload does not carry.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// `allow_failure:exit_codes`.
    pub allow_failure_exit_codes: Vec<i64>,
    /// `retry:exit_codes`.
    pub retry_exit_codes: Vec<i64>,
    /// The pipeline runs for this merge request's ref (`refs/merge-requests/:iid/head`).
    pub merge_request_ref: Option<u64>,
}

/// One row of GitLab's table: a feature and whether a job needs it.
struct Rule {
    feature: &'static str,
    needed: fn(&Value, &JobOptions) -> bool,
}

/// `RUNNER_FEATURES` and `EE_RUNNER_FEATURES`, in the order GitLab lists them.
const RULES: &[Rule] = &[
    // `publishes_artifacts_reports?`: `options[:artifacts][:reports]` is not empty; the
    // presenter (`app/presenters/ci/build_runner_presenter.rb`) sends each report as an
    // `artifacts` entry whose `artifact_type` is the report type.
    Rule {
        feature: "upload_multiple_artifacts",
        needed: |payload, _| {
            entries(payload, "artifacts").any(|a| {
                a["artifact_type"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty() && t != "archive")
            })
        },
    },
    // `merge_request_ref?`.
    Rule {
        feature: "refspecs",
        needed: |_, options| options.merge_request_ref.is_some(),
    },
    // `supports_artifacts_exclude?`: `options[:artifacts][:exclude]` is not empty.
    Rule {
        feature: "artifacts_exclude",
        needed: |payload, _| entries(payload, "artifacts").any(|a| non_empty(&a["exclude"])),
    },
    // `multi_build_steps?`: `options[:release]` is not empty; the presenter sends it as a
    // step named `release`.
    Rule {
        feature: "multi_build_steps",
        needed: |payload, _| entries(payload, "steps").any(|s| s["name"] == "release"),
    },
    // `exit_codes_defined?`: `allow_failure_criteria[:exit_codes]` or `retry[:exit_codes]`.
    Rule {
        feature: "return_exit_code",
        needed: |_, options| {
            !options.allow_failure_exit_codes.is_empty() || !options.retry_exit_codes.is_empty()
        },
    },
    // `fallback_cache_keys_defined?`: a cache entry has `fallback_keys`.
    Rule {
        feature: "fallback_cache_keys",
        needed: |payload, _| entries(payload, "cache").any(|c| non_empty(&c["fallback_keys"])),
    },
    // EE: `ci_secrets_management_available? && secrets?` (the stand-in is licensed).
    Rule {
        feature: "vault_secrets",
        needed: |payload, _| {
            payload["secrets"]
                .as_object()
                .is_some_and(|s| !s.is_empty())
        },
    },
];

fn entries<'a>(payload: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    payload[key].as_array().into_iter().flatten()
}

fn non_empty(value: &Value) -> bool {
    value.as_array().is_some_and(|a| !a.is_empty())
}

/// The features a job needs (`runner_required_feature_names`).
pub fn required(payload: &Value, options: &JobOptions) -> Vec<&'static str> {
    RULES
        .iter()
        .filter(|rule| (rule.needed)(payload, options))
        .map(|rule| rule.feature)
        .collect()
}

/// `supported_runner?`: every needed feature is truthy in the runner's `info.features`.
pub fn supported(needed: &[&str], announced: &Value) -> bool {
    needed
        .iter()
        .all(|feature| super::lifecycle::truthy(&announced[*feature]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_rule_reads_its_own_field() {
        let none = JobOptions::default();
        let cases = [
            (
                json!({"artifacts": [{"artifact_type": "junit", "paths": ["r.xml"]}]}),
                "upload_multiple_artifacts",
            ),
            (
                json!({"artifacts": [{"artifact_type": "archive", "exclude": ["x"]}]}),
                "artifacts_exclude",
            ),
            (json!({"steps": [{"name": "release"}]}), "multi_build_steps"),
            (
                json!({"cache": [{"key": "k", "fallback_keys": ["main"]}]}),
                "fallback_cache_keys",
            ),
            (json!({"secrets": {"DB": {"vault": {}}}}), "vault_secrets"),
        ];
        for (payload, feature) in cases {
            assert_eq!(required(&payload, &none), vec![feature], "{payload}");
        }
        let plain = json!({"artifacts": [{"artifact_type": "archive", "exclude": []}], "cache": [{"fallback_keys": []}], "steps": [{"name": "script"}]});
        assert!(required(&plain, &none).is_empty());
        let exit_codes = JobOptions {
            allow_failure_exit_codes: vec![3],
            ..JobOptions::default()
        };
        assert_eq!(required(&plain, &exit_codes), vec!["return_exit_code"]);
        let mr = JobOptions {
            merge_request_ref: Some(1),
            ..JobOptions::default()
        };
        assert_eq!(required(&plain, &mr), vec!["refspecs"]);
        assert!(supported(&["refspecs"], &json!({"refspecs": true})));
        assert!(!supported(&["refspecs"], &json!({"refspecs": false})));
        assert!(!supported(&["refspecs"], &json!({})));
    }
}
