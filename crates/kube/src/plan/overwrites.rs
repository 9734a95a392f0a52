//! What the job's `KUBERNETES_*` variables may change in its pod (gitlab-runner's
//! `executors/kubernetes/overwrites.go`), each value checked with the API server's rules:
//! resources within `*_overwrite_max_allowed`, and the label, annotation and node-selector
//! maps.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use podrunner_config::Quantity;
use podrunner_config::kubernetes::{ContainerRole, KubernetesConfig, ResourceKind};

use super::{JobVariables, PlanError, kube_quantity, names, sanitize_label_value};
use crate::job_client::JobBearerToken;

/// The resources of a role, with the job's `KUBERNETES_*` overwrites applied within
/// `*_overwrite_max_allowed`: an overwrite must be a positive quantity, and every request at
/// most its limit, as the API server's `ValidateResourceRequirements` requires.
pub(super) fn resources(
    config: &KubernetesConfig,
    role: ContainerRole,
    variables: &JobVariables,
    warnings: &mut Vec<String>,
) -> Result<Option<ResourceRequirements>, PlanError> {
    let prefix = match role {
        ContainerRole::Build => "KUBERNETES_",
        ContainerRole::Helper => "KUBERNETES_HELPER_",
        ContainerRole::Service => "KUBERNETES_SERVICE_",
        ContainerRole::Pod => "KUBERNETES_POD_",
    };
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for kind in ResourceKind::ALL {
        let Some(setting) = config.resource(role, kind) else {
            continue;
        };
        let kind_name = kind.key().to_ascii_uppercase();
        // (value, where it comes from) of the request and of the limit.
        let mut chosen: [Option<(Quantity, String)>; 2] = [None, None];
        for (is_limit, configured, max) in [
            (false, &setting.request, &setting.request_overwrite_max),
            (true, &setting.limit, &setting.limit_overwrite_max),
        ] {
            let which = if is_limit { "limit" } else { "request" };
            let variable = format!("{prefix}{kind_name}_{}", which.to_ascii_uppercase());
            let mut value = configured
                .clone()
                .map(|q| (q, format!("{}{}_{which}", role.key_prefix(), kind.key())));
            if let Some(asked) = variables.get(&variable).filter(|v| !v.trim().is_empty()) {
                match max {
                    None => warnings.push(format!(
                        "{variable} is ignored: the runner sets no {}{}_{which}_overwrite_max_allowed",
                        role.key_prefix(),
                        kind.key(),
                    )),
                    Some(max) => {
                        let asked_quantity: Quantity = asked.trim().parse().map_err(
                            |e: podrunner_config::QuantityError| PlanError::Overwrite {
                                variable: variable.clone(),
                                reason: e.to_string(),
                            },
                        )?;
                        if asked_quantity <= Quantity::zero() {
                            return Err(PlanError::Overwrite {
                                variable,
                                reason: format!("{asked_quantity} must be greater than 0"),
                            });
                        }
                        if &asked_quantity > max {
                            return Err(PlanError::Overwrite {
                                variable,
                                reason: format!(
                                    "{asked_quantity} is above the allowed maximum {max}"
                                ),
                            });
                        }
                        value = Some((asked_quantity, variable));
                    }
                }
            }
            chosen[usize::from(is_limit)] = value;
        }
        let [request, limit] = chosen;
        if let (Some((request, request_origin)), Some((limit, limit_origin))) = (&request, &limit)
            && request > limit
        {
            return Err(PlanError::RequestAboveLimit {
                request_origin: request_origin.clone(),
                request: request.to_string(),
                limit_origin: limit_origin.clone(),
                limit: limit.to_string(),
            });
        }
        let name = kind.kubernetes_name().to_owned();
        if let Some((request, _)) = request {
            requests.insert(name.clone(), kube_quantity(&request));
        }
        if let Some((limit, _)) = limit {
            limits.insert(name, kube_quantity(&limit));
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Ok(None);
    }
    Ok(Some(ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }))
}

/// What a key/value map of the pod is, for the API server's rules on its entries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum MapKind {
    /// `metadata.labels`: values are sanitized as gitlab-runner's `sanitizeLabel` does.
    Labels,
    /// `metadata.annotations`: values are free.
    Annotations,
    /// `spec.nodeSelector`: values must be label values.
    NodeSelector,
}

impl MapKind {
    /// Checks `key` (and `value`) from `origin` as `ValidateLabels`/`ValidateAnnotations`
    /// (apimachinery) and `ValidatePodSpec`'s node selector do.
    pub(super) fn check(self, origin: &str, key: &str, value: &str) -> Result<(), PlanError> {
        let what = match self {
            MapKind::Labels => "label key",
            MapKind::Annotations => "annotation key",
            MapKind::NodeSelector => "node selector key",
        };
        // `ValidateAnnotations` checks the lower-cased key.
        let checked_key = if self == MapKind::Annotations {
            key.to_ascii_lowercase()
        } else {
            key.to_owned()
        };
        names::qualified_name(&checked_key).map_err(|rule| PlanError::Invalid {
            origin: origin.to_owned(),
            value: key.to_owned(),
            what,
            rule,
        })?;
        if self == MapKind::NodeSelector {
            PlanError::check(origin, value, "node selector value", names::label_value)?;
        }
        Ok(())
    }
}

/// Key/value overwrites of the form `KEY_PREFIX_x: "key=value"`, gated by `gate`, each
/// checked as the API server checks its map.
pub(super) fn map_overwrites(
    variables: &JobVariables,
    prefix: &str,
    kind: MapKind,
    gate: Option<&podrunner_config::ConfigRegex>,
    target: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<(), PlanError> {
    for (variable, value) in variables.with_prefix(prefix) {
        let Some(gate) = gate else {
            warnings.push(format!(
                "{variable} is ignored: the runner does not allow this overwrite"
            ));
            continue;
        };
        let Some((key, val)) = value.split_once('=') else {
            return Err(PlanError::Overwrite {
                variable: variable.to_owned(),
                reason: format!("{value:?} is not key=value"),
            });
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
        if kind == MapKind::Labels && in_runner_label_namespace(key) {
            warnings.push(format!(
                "{variable} is ignored: labels in the runner.gitlab.com namespace cannot be overwritten"
            ));
            continue;
        }
        kind.check(variable, key, val)?;
        let val = if kind == MapKind::Labels {
            sanitize_label_value(val)
        } else {
            val.to_owned()
        };
        target.insert(key.to_owned(), val);
    }
    Ok(())
}

/// Whether a label key is in gitlab-runner's own namespace (`runnerLabelNamespacePattern` of
/// `executors/kubernetes/kubernetes.go`: `runner.gitlab.com` or a subdomain of it, any case).
pub(super) fn in_runner_label_namespace(key: &str) -> bool {
    let domain = key
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    domain == "runner.gitlab.com" || domain.ends_with(".runner.gitlab.com")
}

/// `KUBERNETES_BEARER_TOKEN` (`BearerTokenOverwriteVariableValue` of gitlab-runner's
/// `overwrites.go`): with `bearer_token_overwrite_allowed` set, a non-empty value is the token
/// the job's own writes (its Secrets, Pod and PodDisruptionBudget, and their deletion) are
/// made with ([`crate::job_client`]); without the setting the variable is ignored with a
/// warning (gitlab-runner ignores it at debug level). The value is taken from the expanded
/// variables, as gitlab-runner's `createOverwrites` does, and is never written anywhere.
pub(super) fn bearer_token(
    config: &KubernetesConfig,
    variables: &JobVariables,
    warnings: &mut Vec<String>,
) -> Option<JobBearerToken> {
    const VARIABLE: &str = "KUBERNETES_BEARER_TOKEN";
    let value = variables.get(VARIABLE).filter(|v| !v.is_empty())?;
    if !config.bearer_token_overwrite_allowed {
        warnings.push(format!(
            "{VARIABLE} is ignored: bearer_token_overwrite_allowed is not set"
        ));
        return None;
    }
    Some(JobBearerToken::new(value))
}
