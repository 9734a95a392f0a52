//! The job's images: which image the build container runs (allow-listed), its pull policy,
//! and the pull Secrets of the pod.

use podrunner_config::kubernetes::KubernetesConfig;
use podrunner_config::{RunnerConfig, Wildcard};
use podrunner_gitlab::JobPayload;
use podrunner_gitlab::payload::JobResponse;

use super::{JobVariables, PlanError};

/// The build container's image: the job's, else the configured default, expanded.
pub(super) fn image(
    config: &KubernetesConfig,
    job: &JobResponse,
    variables: &JobVariables,
) -> Result<String, PlanError> {
    let default_image = config
        .image
        .as_deref()
        .map(|i| variables.expand(i))
        .filter(|i| !i.is_empty());
    // As gitlab-runner's `expandContainerOptions` (`common/build.go`): the job's image with
    // the job's variables, before the allow-list and the pod.
    let image = Some(variables.expand(&job.image.name))
        .filter(|i| !i.is_empty())
        .or(default_image.clone())
        .ok_or(PlanError::NoImage)?;
    if Some(&image) != default_image.as_ref() && !allowed(&config.allowed_images, &image) {
        return Err(PlanError::ImageNotAllowed(image));
    }
    Ok(image)
}

/// The pull policy of an image: the job's first, else the configured one, if allowed.
pub(super) fn pull_policy(
    job_policies: &[String],
    config: &KubernetesConfig,
) -> Result<Option<String>, PlanError> {
    let chosen = job_policies
        .first()
        .cloned()
        .or_else(|| config.pull_policy.0.first().map(|p| p.as_str().to_owned()));
    let Some(policy) = chosen else {
        return Ok(None);
    };
    let parsed: podrunner_config::PullPolicy = policy
        .parse()
        .map_err(|_| PlanError::PullPolicy(policy.clone()))?;
    if !config.allowed_pull_policies.0.is_empty()
        && !config.allowed_pull_policies.0.contains(&parsed)
    {
        return Err(PlanError::PullPolicy(policy));
    }
    Ok(Some(parsed.kubernetes_name().to_owned()))
}

/// Whether `image` is allowed by `patterns` (an empty list allows every image).
pub(super) fn allowed(patterns: &[Wildcard], image: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(image))
}

/// The pod's pull Secrets and the name of the registry Secret the executor makes, if any
/// (with the notes of [`crate::registry_auth::resolve`] in `warnings`).
pub(super) fn pull_secrets(
    runner: &RunnerConfig,
    config: &KubernetesConfig,
    payload: &JobPayload,
    pod_name: &str,
    warnings: &mut Vec<String>,
) -> (Option<String>, Vec<String>) {
    // One decision: the pull Secret exists when some source names a registry.
    let registry_auth = crate::registry_auth::resolve(payload, &runner.environment);
    warnings.extend(registry_auth.notes.iter().cloned());
    let registry_secret = registry_auth
        .docker_config_json()
        .map(|_| format!("{pod_name}-registry"));
    let mut pull_secrets: Vec<String> = if config.use_service_account_image_pull_secrets {
        Vec::new()
    } else {
        config.image_pull_secrets.clone()
    };
    pull_secrets.extend(registry_secret.iter().cloned());
    (registry_secret, pull_secrets)
}
