//! Where the scheduler may put the pod: its node selector (`node_selector`,
//! `KUBERNETES_NODE_SELECTOR_*`) and affinity. Tolerations are [`super::tolerations`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Affinity;
use podrunner_config::kubernetes::KubernetesConfig;

use super::overwrites::{MapKind, map_overwrites};
use super::{JobVariables, PlanError};

/// The pod's node selector: the configured one, with the job's allowed overwrites.
pub(super) fn node_selector(
    config: &KubernetesConfig,
    variables: &JobVariables,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, String>, PlanError> {
    let mut node_selector = config.node_selector.clone();
    for (key, value) in &node_selector {
        MapKind::NodeSelector.check("node_selector", key, value)?;
    }
    map_overwrites(
        variables,
        "KUBERNETES_NODE_SELECTOR_",
        MapKind::NodeSelector,
        config.node_selector_overwrite_allowed.as_ref(),
        &mut node_selector,
        warnings,
    )?;
    Ok(node_selector)
}

/// The configured affinity, in Kubernetes' terms.
pub(super) fn affinity(config: &KubernetesConfig) -> Option<Affinity> {
    config
        .affinity
        .as_ref()
        .and_then(|a| serde_json::to_value(a).ok())
        .and_then(|v| serde_json::from_value(camel_case(v)).ok())
}

/// snake_case keys (as config.toml writes affinity) to Kubernetes' camelCase.
fn camel_case(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                .map(|(k, v)| {
                    let mut out = String::new();
                    let mut upper = false;
                    for c in k.chars() {
                        if c == '_' {
                            upper = true;
                        } else if upper {
                            out.push(c.to_ascii_uppercase());
                            upper = false;
                        } else {
                            out.push(c);
                        }
                    }
                    (out, camel_case(v))
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(camel_case).collect())
        }
        other => other,
    }
}
