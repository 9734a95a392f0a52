//! `[[runners.kubernetes.pod_spec]]`: patches applied to the planned `PodSpec` under
//! `FF_USE_ADVANCED_POD_SPEC_CONFIGURATION`, as gitlab-runner applies them
//! (`executors/kubernetes/kubernetes.go`: `setupBuildPod`, `applyPodSpecMerge`,
//! `doPodSpecMerge`; `common/config.go`: `KubernetesPodSpec.PodSpecPatch`;
//! `docs/executors/kubernetes/_index.md`, "Overwrite generated pod specifications"):
//! - after every other setting and overwrite, in the order of the config, each on the result
//!   of the one before;
//! - `patch` (inline) or `patch_path` (a file read for each job), never both, in YAML or JSON;
//! - `patch_type` `strategic` (the default, [`super::strategic_merge`]), `json` (RFC 6902) or
//!   `merge` (RFC 7386), the last two with the `json-patch` crate.
//!
//! What podrunner adds to gitlab-runner:
//! - the pod must still run the agent: a patch that changes the init container
//!   `podrunner-init`, the build container's command and arguments, the environment and
//!   mounts podrunner gives it, the agent's volumes (`podrunner-bin`, `podrunner-spec`,
//!   `podrunner-handover`) or `restartPolicy` is **refused**, naming the patch and the part,
//!   rather than silently undone: a pod whose job could not start is worse than a clear error;
//! - a field the `PodSpec` does not have (a typo) is refused, where gitlab-runner's
//!   `json.Unmarshal` drops it.

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use podrunner_config::PatchType;
use podrunner_config::RunnerConfig;
use podrunner_config::kubernetes::PodSpecPatch;
use serde_json::Value;

use super::{JobVariables, PlanError, strategic_merge};

/// The feature flag that turns the patches on.
pub const FLAG: &str = "FF_USE_ADVANCED_POD_SPEC_CONFIGURATION";

/// gitlab-runner's warning when the patches are applied (`setupBuildPod`).
const BETA_WARNING: &str = "Advanced Pod Spec configuration enabled, merging the provided PodSpec to the generated one. This is a beta feature and is subject to change.";

/// Whether the flag is on for this job, resolved as gitlab-runner's build settings resolve
/// feature flags (`common/build_settings.go`): the runner's `[runners.feature_flags]` entry
/// when it has one, else the job's variables (the runner's `environment` among them, the
/// job's own last), parsed as Go's `strconv.ParseBool`; a value that is not a boolean leaves
/// the default (off) and says so.
pub(super) fn enabled(
    runner: &RunnerConfig,
    variables: &JobVariables,
    warnings: &mut Vec<String>,
) -> bool {
    if let Some(on) = runner.feature_flags.get(FLAG) {
        return *on;
    }
    let from_environment = runner
        .environment
        .iter()
        .rev()
        .filter_map(|e| e.split_once('='))
        .find(|(k, _)| *k == FLAG)
        .map(|(_, v)| v);
    let Some(raw) = variables.get(FLAG).or(from_environment) else {
        return false;
    };
    match raw {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
        other => {
            warnings.push(format!(
                "{FLAG}: could not parse feature flag, expected bool, got {other:?}"
            ));
            false
        }
    }
}

/// What podrunner needs of the pod, taken before the patches and checked after them.
struct Reserved {
    init: Option<Container>,
    build: Option<Container>,
    volumes: Vec<Volume>,
    restart_policy: Option<String>,
}

/// The agent's volumes.
const AGENT_VOLUMES: [&str; 3] = ["podrunner-bin", "podrunner-spec", "podrunner-handover"];

impl Reserved {
    fn of(spec: &PodSpec) -> Self {
        Reserved {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .find(|c| c.name == "podrunner-init")
                .cloned(),
            build: spec.containers.iter().find(|c| c.name == "build").cloned(),
            volumes: spec
                .volumes
                .iter()
                .flatten()
                .filter(|v| AGENT_VOLUMES.contains(&v.name.as_str()))
                .cloned()
                .collect(),
            restart_policy: spec.restart_policy.clone(),
        }
    }

    /// The first part of what podrunner needs that `spec` no longer has as it was.
    fn broken_in(&self, spec: &PodSpec) -> Option<String> {
        let after = Reserved::of(spec);
        if after.init != self.init {
            return Some("the init container podrunner-init, which installs the agent".into());
        }
        if after.restart_policy != self.restart_policy {
            return Some("restartPolicy (the job's pod never restarts)".into());
        }
        for volume in &self.volumes {
            if !after.volumes.contains(volume) {
                return Some(format!("the volume {}, which the agent needs", volume.name));
            }
        }
        let (Some(before), Some(now)) = (&self.build, &after.build) else {
            return self
                .build
                .as_ref()
                .map(|_| "the build container, in which the agent runs the job".into());
        };
        if now.command != before.command || now.args != before.args {
            return Some("the build container's command and args, which start the agent".into());
        }
        for env in before.env.iter().flatten() {
            if !now.env.iter().flatten().any(|e| e == env) {
                return Some(format!(
                    "the build container's environment variable {}, which the agent reads",
                    env.name
                ));
            }
        }
        for mount in before.volume_mounts.iter().flatten() {
            if AGENT_VOLUMES.contains(&mount.name.as_str())
                && !now.volume_mounts.iter().flatten().any(|m| m == mount)
            {
                return Some(format!(
                    "the build container's mount of {} at {}",
                    mount.name, mount.mount_path
                ));
            }
        }
        None
    }
}

/// Applies the runner's patches to `spec` when the flag is on; with the flag off they are
/// left out, with a note.
pub(super) fn apply(
    runner: &RunnerConfig,
    patches: &[PodSpecPatch],
    variables: &JobVariables,
    spec: PodSpec,
    warnings: &mut Vec<String>,
) -> Result<PodSpec, PlanError> {
    if patches.is_empty() {
        return Ok(spec);
    }
    if !enabled(runner, variables, warnings) {
        warnings.push(format!(
            "[[runners.kubernetes.pod_spec]] is not applied: {FLAG} is off"
        ));
        return Ok(spec);
    }
    warnings.push(BETA_WARNING.into());
    let reserved = Reserved::of(&spec);
    let mut document = serde_json::to_value(&spec).map_err(|e| PlanError::PodSpecPatch {
        name: String::new(),
        reason: format!("the planned pod spec does not serialize: {e}"),
    })?;
    for (index, patch) in patches.iter().enumerate() {
        let name = patch
            .name
            .clone()
            .unwrap_or_else(|| format!("pod_spec[{index}]"));
        let fail = |reason: String| PlanError::PodSpecPatch {
            name: name.clone(),
            reason,
        };
        let (text, kind) = source(patch).map_err(fail)?;
        document = apply_one(document, &text, kind).map_err(fail)?;
        let patched: PodSpec = serde_json::from_value(document.clone())
            .map_err(|e| fail(format!("the patched pod spec is not a PodSpec: {e}")))?;
        if let Some(unknown) = unknown_field(&document, &serde_json::to_value(&patched).ok()) {
            return Err(fail(format!("{unknown} is not a field of the PodSpec")));
        }
        if let Some(part) = reserved.broken_in(&patched) {
            return Err(fail(format!(
                "it changes {part}: podrunner refuses patches to what runs the agent"
            )));
        }
    }
    serde_json::from_value(document).map_err(|e| PlanError::PodSpecPatch {
        name: String::new(),
        reason: e.to_string(),
    })
}

/// The patch's text and kind (`PodSpecPatch`): `patch` or the file at `patch_path`.
fn source(patch: &PodSpecPatch) -> Result<(String, PatchType), String> {
    let kind = patch.patch_type.unwrap_or(PatchType::Strategic);
    let inline = patch.patch.as_deref().filter(|p| !p.trim().is_empty());
    let path = patch.patch_path.as_deref().filter(|p| !p.is_empty());
    let text = match (inline, path) {
        (Some(_), Some(_)) => {
            return Err("ambiguous patch: both patch path and patch provided".into());
        }
        (Some(text), None) => text.to_owned(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| format!("loading patch file {path}: {e}"))?
        }
        (None, None) => return Err("set patch or patch_path".into()),
    };
    Ok((text, kind))
}

/// One patch on the serialized spec; the text is YAML or JSON (`yaml.YAMLToJSON`).
fn apply_one(mut document: Value, text: &str, kind: PatchType) -> Result<Value, String> {
    let patch: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("converting patch to json: {e}"))?;
    match kind {
        PatchType::Strategic => strategic_merge::apply(document, patch),
        PatchType::Merge => {
            json_patch::merge(&mut document, &patch);
            Ok(document)
        }
        PatchType::Json => {
            let operations: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| format!("not a JSON patch (RFC 6902): {e}"))?;
            json_patch::patch(&mut document, &operations).map_err(|e| e.to_string())?;
            Ok(document)
        }
    }
}

/// A key of `patched` (not `null`) that the typed spec dropped, as a JSON path.
fn unknown_field(patched: &Value, typed: &Option<Value>) -> Option<String> {
    fn walk(patched: &Value, typed: Option<&Value>, path: &str) -> Option<String> {
        match (patched, typed) {
            (Value::Object(p), Some(Value::Object(t))) => p.iter().find_map(|(k, v)| {
                let child = format!("{path}.{k}");
                match t.get(k) {
                    _ if v.is_null() => None,
                    None => Some(child),
                    Some(tv) => walk(v, Some(tv), &child),
                }
            }),
            (Value::Array(p), Some(Value::Array(t))) => p
                .iter()
                .zip(t)
                .enumerate()
                .find_map(|(i, (pv, tv))| walk(pv, Some(tv), &format!("{path}[{i}]"))),
            _ => None,
        }
    }
    walk(patched, typed.as_ref(), "spec")
}
