//! Where the pod runs and as whom: its namespace (`namespace`, `namespace_per_job`,
//! `KUBERNETES_NAMESPACE_OVERWRITE`) and its service account
//! (`KUBERNETES_SERVICE_ACCOUNT_OVERWRITE`).

use podrunner_config::kubernetes::KubernetesConfig;

use super::{JobVariables, PlanError, names};

/// The namespace of job `job_id`'s pod and Secrets.
pub(super) fn namespace(
    config: &KubernetesConfig,
    variables: &JobVariables,
    job_id: i64,
    warnings: &mut Vec<String>,
) -> Result<String, PlanError> {
    let mut namespace = config.namespace().to_owned();
    if let Some(asked) = variables
        .get("KUBERNETES_NAMESPACE_OVERWRITE")
        .filter(|v| !v.is_empty())
    {
        match &config.namespace_overwrite_allowed {
            Some(gate) if gate.is_match(asked) => namespace = asked.to_owned(),
            Some(gate) => {
                return Err(PlanError::Overwrite {
                    variable: "KUBERNETES_NAMESPACE_OVERWRITE".into(),
                    reason: format!("{asked:?} does not match {:?}", gate.as_str()),
                });
            }
            None => warnings.push(
                "KUBERNETES_NAMESPACE_OVERWRITE is ignored: namespace_overwrite_allowed is not set"
                    .into(),
            ),
        }
    }
    if config.namespace_per_job {
        namespace = crate::namespaces::per_job_name(job_id);
    } else {
        let origin = if namespace == config.namespace() {
            "namespace"
        } else {
            "KUBERNETES_NAMESPACE_OVERWRITE"
        };
        PlanError::check(origin, &namespace, "namespace", names::dns1123_label)?;
    }
    Ok(namespace)
}

/// The pod's service account, the job's overwrite when allowed.
pub(super) fn service_account(
    config: &KubernetesConfig,
    variables: &JobVariables,
    warnings: &mut Vec<String>,
) -> Result<Option<String>, PlanError> {
    let mut service_account = config.service_account.clone();
    if let Some(asked) = variables
        .get("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE")
        .filter(|v| !v.is_empty())
    {
        match &config.service_account_overwrite_allowed {
            Some(gate) if gate.is_match(asked) => {
                PlanError::check("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE", asked, "service account name", names::dns1123_subdomain)?;
                service_account = Some(asked.to_owned());
            }
            Some(gate) => return Err(PlanError::Overwrite { variable: "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE".into(), reason: format!("{asked:?} does not match {:?}", gate.as_str()) }),
            None => warnings.push("KUBERNETES_SERVICE_ACCOUNT_OVERWRITE is ignored: service_account_overwrite_allowed is not set".into()),
        }
    }
    Ok(service_account)
}
