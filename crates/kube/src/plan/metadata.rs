//! The pod's labels (the runner's own, `pod_labels`, `KUBERNETES_POD_LABELS_*`) and
//! annotations (`pod_annotations`, `KUBERNETES_POD_ANNOTATIONS_*`, the job's), within the
//! API server's limits.

use std::collections::BTreeMap;

use podrunner_config::RunnerConfig;
use podrunner_config::kubernetes::KubernetesConfig;
use podrunner_gitlab::JobPayload;

use super::overwrites::{MapKind, in_runner_label_namespace, map_overwrites};
use super::{JOB_LABEL, JobVariables, MANAGER_LABEL, PlanContext, PlanError, names};

/// A label value as Kubernetes accepts it: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends; other characters become `_`.
pub fn sanitize_label_value(value: &str) -> String {
    let replaced: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = replaced.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut cut: String = trimmed.chars().take(63).collect();
    while cut.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        cut.pop();
    }
    cut
}

/// The labels and annotations of the pod.
pub(super) struct Metadata {
    /// Its labels.
    pub(super) labels: BTreeMap<String, String>,
    /// Its annotations.
    pub(super) annotations: BTreeMap<String, String>,
}

/// The labels and annotations of pod `pod_name`.
pub(super) fn labels_and_annotations(
    runner: &RunnerConfig,
    config: &KubernetesConfig,
    payload: &JobPayload,
    variables: &JobVariables,
    context: &PlanContext<'_>,
    pod_name: &str,
    warnings: &mut Vec<String>,
) -> Result<Metadata, PlanError> {
    let job = &payload.job;
    let info = &job.job_info;
    let full_path = info.project_full_path.trim_matches('/');
    let namespace_path = full_path.rsplit_once('/').map(|(ns, _)| ns).unwrap_or("");
    let root_namespace = full_path.split('/').next().unwrap_or("");
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &config.pod_labels {
        if in_runner_label_namespace(key) {
            warnings.push(format!(
                "pod_labels.{key:?} is ignored: labels in the runner.gitlab.com namespace cannot be overwritten"
            ));
            continue;
        }
        MapKind::Labels.check("pod_labels", key, value)?;
        labels.insert(key.clone(), sanitize_label_value(&variables.expand(value)));
    }
    map_overwrites(
        variables,
        "KUBERNETES_POD_LABELS_",
        MapKind::Labels,
        config.pod_labels_overwrite_allowed.as_ref(),
        &mut labels,
        warnings,
    )?;
    for (key, value) in &config.pod_annotations {
        MapKind::Annotations.check("pod_annotations", key, value)?;
        annotations.insert(key.clone(), variables.expand(value));
    }
    map_overwrites(
        variables,
        "KUBERNETES_POD_ANNOTATIONS_",
        MapKind::Annotations,
        config.pod_annotations_overwrite_allowed.as_ref(),
        &mut annotations,
        warnings,
    )?;
    // The runner's own labels cannot be overridden.
    let own_labels = [
        ("project.runner.gitlab.com/id", info.project_id.to_string()),
        ("project.runner.gitlab.com/name", info.project_name.clone()),
        (
            "project.runner.gitlab.com/namespace",
            namespace_path.to_owned(),
        ),
        (
            "project.runner.gitlab.com/namespace-id",
            info.namespace_id.to_string(),
        ),
        (
            "project.runner.gitlab.com/root-namespace",
            root_namespace.to_owned(),
        ),
        (
            "project.runner.gitlab.com/root-namespace-id",
            info.root_namespace_id.to_string(),
        ),
        (
            "manager.runner.gitlab.com/name",
            runner.name.clone().unwrap_or_default(),
        ),
        (
            "manager.runner.gitlab.com/id-short",
            context.runner_short_token.to_owned(),
        ),
        ("job.runner.gitlab.com/pod", pod_name.to_owned()),
        (MANAGER_LABEL, context.system_id.to_owned()),
        (JOB_LABEL, job.id.to_string()),
    ];
    for (key, value) in own_labels {
        labels.insert(key.to_owned(), sanitize_label_value(&value));
    }
    for (key, value) in [
        ("job.runner.gitlab.com/id", job.id.to_string()),
        (
            "job.runner.gitlab.com/url",
            variables.get("CI_JOB_URL").unwrap_or_default().to_owned(),
        ),
        ("job.runner.gitlab.com/sha", job.git_info.sha.clone()),
        (
            "job.runner.gitlab.com/before_sha",
            job.git_info.before_sha.clone(),
        ),
        ("job.runner.gitlab.com/ref", job.git_info.git_ref.clone()),
        ("job.runner.gitlab.com/name", info.name.clone()),
        (
            "job.runner.gitlab.com/timeout",
            podrunner_config::GoDuration::from_secs(payload.timeout_secs()).to_string(),
        ),
    ] {
        annotations.entry(key.to_owned()).or_insert(value);
    }
    let annotation_size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if annotation_size > names::TOTAL_ANNOTATION_SIZE_LIMIT {
        return Err(PlanError::AnnotationsTooLarge {
            origin: "pod_annotations and KUBERNETES_POD_ANNOTATIONS_*".into(),
            size: annotation_size,
            limit: names::TOTAL_ANNOTATION_SIZE_LIMIT,
        });
    }
    Ok(Metadata {
        labels,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_sanitized() {
        assert_eq!(sanitize_label_value("My Project!"), "My_Project");
        assert_eq!(sanitize_label_value("-a.b-"), "a.b");
        assert_eq!(sanitize_label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(sanitize_label_value("ok-value_1.2"), "ok-value_1.2");
    }
}
