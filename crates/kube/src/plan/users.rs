//! The user and group a job asks its build and service containers to run as
//! (`image: {kubernetes: {user: "uid[:gid]"}}`, the payload's `executor_opts`), checked
//! against `allowed_users`/`allowed_groups` as gitlab-runner checks them
//! (`executors/kubernetes/kubernetes.go`: `getSecurityContextWithUIDGID`,
//! `getContainerUIDGID`, `pickSecurityContextID`, `parseAndValidateID`; `common/config.go`:
//! `isUserOrGroupAllowed`; `common/spec/spec.go`: `ImageExecutorOptions`,
//! `ImageKubernetesOptions`, `StringOrInt64`; `docs/executors/kubernetes/_index.md`,
//! "Configure container user and group"):
//! - the container's security context, then the pod's, win over the job: the job's ID is
//!   used only where neither sets `run_as_user` (`run_as_group`), and a job that asks
//!   otherwise is told;
//! - the job's ID must be a non-negative integer in the allow-list; root (0) must be listed
//!   even when the list is empty; an empty list allows every other ID;
//! - a job ID that is refused is not fatal in gitlab-runner's Kubernetes executor: the
//!   container keeps its configured context and the job log says why, in gitlab-runner's
//!   words. podrunner does the same.
//!
//! Options other than `docker.{platform,user}` and `kubernetes.user` fail the job with
//! gitlab-runner's message (`UnsuportedExecutorOptionsError`, checked in `commands/multi.go`).

use k8s_openapi::api::core::v1::SecurityContext;
use podrunner_config::kubernetes::{ContainerSecurityContext, KubernetesConfig};
use podrunner_gitlab::payload::Image;
use serde_json::Value;

use super::{JobVariables, PlanError};

/// The user the job asks `image` to run as (`kubernetes.user`, expanded with the job's
/// variables), `""` when it asks none; refuses options gitlab-runner does not know.
pub(super) fn job_user(image: &Image, variables: &JobVariables) -> Result<String, PlanError> {
    let Some(options) = image.executor_opts.as_ref().filter(|o| !o.is_null()) else {
        return Ok(String::new());
    };
    let object = |value: &Value, what: &str| match value {
        Value::Object(map) => Ok(map.clone()),
        Value::Null => Ok(serde_json::Map::new()),
        _ => Err(PlanError::ExecutorOptions(format!(
            "{what} of image {:?} must be an object",
            image.name
        ))),
    };
    let options = object(options, "executor_opts")?;
    unsupported(&options, &["docker", "kubernetes"], "executor_opts")?;
    if let Some(docker) = options.get("docker") {
        unsupported(
            &object(docker, "executor_opts.docker")?,
            &["platform", "user"],
            "docker executor",
        )?;
    }
    let Some(kubernetes) = options.get("kubernetes") else {
        return Ok(String::new());
    };
    let kubernetes = object(kubernetes, "executor_opts.kubernetes")?;
    unsupported(&kubernetes, &["user"], "kubernetes executor")?;
    let user = match kubernetes.get("user") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(user)) => user.clone(),
        Some(Value::Number(n)) if n.is_i64() => n.to_string(),
        Some(_) => {
            return Err(PlanError::ExecutorOptions(format!(
                "kubernetes.user of image {:?}: StringOrInt: input not string or integer",
                image.name
            )));
        }
    };
    Ok(variables.expand(&user))
}

/// `UnsuportedExecutorOptionsError`'s message, in Go's `%v` of a slice.
fn unsupported(
    options: &serde_json::Map<String, Value>,
    supported: &[&str],
    executor: &str,
) -> Result<(), PlanError> {
    let unknown: Vec<&str> = options
        .keys()
        .map(String::as_str)
        .filter(|k| !supported.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let mut sorted = supported.to_vec();
    sorted.sort_unstable();
    Err(PlanError::ExecutorOptions(format!(
        "Unsupported \"image\" options [{}] for {executor:?}; supported options are [{}]",
        unknown.join(" "),
        sorted.join(" ")
    )))
}

/// User or group.
#[derive(Clone, Copy)]
enum Kind {
    User,
    Group,
}

impl Kind {
    fn id(self) -> &'static str {
        match self {
            Kind::User => "UID",
            Kind::Group => "GID",
        }
    }
    fn word(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Group => "group",
        }
    }
}

/// `parseAndValidateID` with `isUserOrGroupAllowed`: the ID, or why it is refused.
fn validated(
    text: &str,
    kind: Kind,
    allowed: &[String],
    warnings: &mut Vec<String>,
) -> Result<i64, String> {
    let id: i64 = text
        .parse()
        .map_err(|_| format!("failed to parse {}: {text:?} is not an integer", kind.id()))?;
    if id < 0 {
        return Err(format!(
            "failed to parse {}: negative values not allowed",
            kind.id()
        ));
    }
    let listed = allowed.iter().any(|entry| match entry.parse::<i64>() {
        Ok(entry) => entry == id,
        Err(_) => {
            warnings.push(format!(
                "ignoring non-numeric {} allowlist entry {entry:?}",
                kind.word()
            ));
            false
        }
    });
    if listed || (id != 0 && allowed.is_empty()) {
        return Ok(id);
    }
    Err(format!(
        "validating {}: {} {text:?} is not in the allowed list: [{}]",
        kind.id(),
        kind.word(),
        allowed.join(" ")
    ))
}

/// Sets the job's user and group on `context` where the container's (`own`) and the pod's
/// security contexts leave them, as `getContainerUIDGID` picks them.
pub(super) fn apply(
    config: &KubernetesConfig,
    context: &mut SecurityContext,
    own: Option<&ContainerSecurityContext>,
    job_user: &str,
    container: &str,
    warnings: &mut Vec<String>,
) {
    let (uid, gid) = job_user.split_once(':').unwrap_or((job_user, ""));
    let pod = config.pod_security_context.as_ref();
    for (kind, asked, own_id, pod_id, allowed) in [
        (
            Kind::User,
            uid,
            own.and_then(|o| o.run_as_user),
            pod.and_then(|p| p.run_as_user),
            &config.allowed_users,
        ),
        (
            Kind::Group,
            gid,
            own.and_then(|o| o.run_as_group),
            pod.and_then(|p| p.run_as_group),
            &config.allowed_groups,
        ),
    ] {
        if asked.is_empty() {
            continue;
        }
        let configured = own_id
            .map(|id| (id, "container security context"))
            .or(pod_id.map(|id| (id, "pod security context")));
        if let Some((id, source)) = configured {
            warnings.push(format!(
                "Overriding {} for container {container:?} to {asked:?} is not allowed: {} is set to {id} in {source}",
                kind.word(),
                kind.word()
            ));
            continue;
        }
        match validated(asked, kind, allowed, warnings) {
            Ok(id) => match kind {
                Kind::User => context.run_as_user = Some(id),
                Kind::Group => context.run_as_group = Some(id),
            },
            Err(reason) => warnings.push(format!(
                "Error parsing '{}' from image options for container {container:?}, using the configured security context: {reason}",
                kind.id().to_ascii_lowercase()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, allowed: &[&str]) -> Result<i64, String> {
        let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        validated(text, Kind::User, &allowed, &mut Vec::new())
    }

    #[test]
    fn root_must_be_listed_and_an_empty_list_allows_the_rest() {
        assert_eq!(check("1000", &[]), Ok(1000));
        assert_eq!(
            check("0", &[]).unwrap_err(),
            "validating UID: user \"0\" is not in the allowed list: []"
        );
        assert_eq!(check("000", &["0"]), Ok(0));
        assert_eq!(
            check("1001", &["1000", "65534"]).unwrap_err(),
            "validating UID: user \"1001\" is not in the allowed list: [1000 65534]"
        );
        assert_eq!(check("65534", &["1000", "65534"]), Ok(65534));
        assert!(check("-1", &[]).unwrap_err().contains("negative"));
        assert!(check("nobody", &[]).unwrap_err().contains("not an integer"));
    }
}
