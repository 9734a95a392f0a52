//! The job's images: which image the build container runs (allow-listed), the pull policies
//! of the pod's own containers, and the pull Secrets of the pod.

use std::collections::BTreeMap;

use podrunner_config::kubernetes::KubernetesConfig;
use podrunner_config::{RunnerConfig, Wildcard};
use podrunner_gitlab::JobPayload;
use podrunner_gitlab::payload::JobResponse;

use super::{JobVariables, PlanError};
use crate::pull_policy::PullAttempts;

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

/// The pull policies of the pod's own containers: gitlab-runner's helper and
/// init-permissions containers take the build image's list ([`crate::pull_policy::effective`]),
/// each at the place `attempts` has reached.
pub(super) struct Policies<'a> {
    list: Vec<crate::pull_policy::Policy>,
    attempts: &'a PullAttempts,
}

impl<'a> Policies<'a> {
    pub(super) fn new(
        config: &KubernetesConfig,
        job: &JobResponse,
        attempts: &'a PullAttempts,
    ) -> Result<Self, PlanError> {
        let list = crate::pull_policy::effective(
            "build",
            &job.image.pull_policy,
            &config.pull_policy,
            &config.allowed_pull_policies,
        )?;
        Ok(Policies { list, attempts })
    }

    /// The `imagePullPolicy` of `container` on this attempt (none: the API server's default).
    pub(super) fn for_container(&self, container: &str) -> Option<String> {
        self.attempts
            .policy_for(container, &self.list)
            .and_then(|p| p.image_pull_policy())
    }

    /// Each container's whole list, for the executor's next attempt.
    pub(super) fn lists(&self) -> BTreeMap<String, Vec<crate::pull_policy::Policy>> {
        ["build", "podrunner-init"]
            .into_iter()
            .map(|c| (c.to_owned(), self.list.clone()))
            .collect()
    }
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
