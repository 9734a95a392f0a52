//! The pod's tolerations: `node_tolerations` (`"key[=value]" = "effect"`) with the job's
//! `KUBERNETES_NODE_TOLERATIONS_*` overwrites, as gitlab-runner makes them
//! (`executors/kubernetes/overwrites.go`: `evaluateMapOverwrite` with `splitToleration`;
//! `docs/executors/kubernetes/_index.md`, "Overwrite pod tolerations"):
//! - an overwrite is read only when `node_tolerations_overwrite_allowed` is set, and its whole
//!   value must match that pattern;
//! - `"key[=value][:effect]"` adds (or replaces, by `key[=value]`) one toleration; `""`
//!   tolerates every taint;
//! - `key` gives `operator: Exists`, `key=value` gives `Equal`.
//!
//! Each toleration is checked as the API server's `ValidateTolerations`
//! (`pkg/apis/core/validation/validation.go`) checks it, so a bad one names its variable.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use podrunner_config::kubernetes::KubernetesConfig;

use super::{JobVariables, PlanError, names};

/// The variables' prefix.
const PREFIX: &str = "KUBERNETES_NODE_TOLERATIONS_";

/// The effects `ValidateTolerations` accepts (empty: every effect).
const EFFECTS: [&str; 4] = ["", "NoSchedule", "PreferNoSchedule", "NoExecute"];

/// The tolerations of the job's pod.
pub(super) fn plan(
    config: &KubernetesConfig,
    variables: &JobVariables,
    warnings: &mut Vec<String>,
) -> Result<Vec<Toleration>, PlanError> {
    // (key[=value]) → (effect, where it comes from)
    let mut wanted: BTreeMap<String, (String, String)> = config
        .node_tolerations
        .iter()
        .map(|(k, e)| (k.clone(), (e.clone(), "node_tolerations".to_owned())))
        .collect();
    for (variable, value) in variables.with_prefix(PREFIX) {
        let Some(gate) = config.node_tolerations_overwrite_allowed.as_ref() else {
            warnings.push(format!(
                "{variable} is ignored: node_tolerations_overwrite_allowed is not set"
            ));
            continue;
        };
        if !gate.is_match(value) {
            return Err(PlanError::Overwrite {
                variable: variable.to_owned(),
                reason: format!(
                    "{value:?} does not match the allowed pattern {:?}",
                    gate.as_str()
                ),
            });
        }
        let (key_value, effect) = value.split_once(':').unwrap_or((value, ""));
        wanted.insert(
            key_value.to_owned(),
            (effect.to_owned(), variable.to_owned()),
        );
    }
    wanted
        .into_iter()
        .map(|(key_value, (effect, origin))| toleration(&key_value, &effect, &origin))
        .collect()
}

fn toleration(key_value: &str, effect: &str, origin: &str) -> Result<Toleration, PlanError> {
    let (key, value) = key_value
        .split_once('=')
        .map_or((key_value, None), |(k, v)| (k, Some(v)));
    if !key.is_empty() {
        PlanError::check(origin, key, "toleration key", names::qualified_name)?;
    }
    if let Some(value) = value {
        if key.is_empty() {
            return Err(PlanError::Invalid {
                origin: origin.to_owned(),
                value: key_value.to_owned(),
                what: "toleration",
                rule: "operator must be Exists when `key` is empty, which means \"match all values and all keys\"".into(),
            });
        }
        PlanError::check(origin, value, "toleration value", names::label_value)?;
    }
    if !EFFECTS.contains(&effect) {
        return Err(PlanError::Invalid {
            origin: origin.to_owned(),
            value: effect.to_owned(),
            what: "toleration effect",
            rule: "supported values: \"NoExecute\", \"NoSchedule\", \"PreferNoSchedule\"".into(),
        });
    }
    Ok(Toleration {
        key: (!key.is_empty()).then(|| key.to_owned()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.to_owned()),
        value: value.map(str::to_owned),
        effect: (!effect.is_empty()).then(|| effect.to_owned()),
        toleration_seconds: None,
    })
}
