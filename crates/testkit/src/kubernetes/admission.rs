//! PodSecurity admission, from the `pod-security.kubernetes.io/enforce` label of a pod's
//! namespace (`baseline` or `restricted`; `privileged` and no label admit everything).
//!
//! The checks a job pod can break, with upstream's reasons and details
//! (`staging/src/k8s.io/pod-security-admission/policy/`): baseline `check_privileged.go`;
//! restricted adds `check_allowPrivilegeEscalation.go`, `check_capabilities_restricted.go`,
//! `check_runAsNonRoot.go` and `check_seccompProfile_restricted.go`. Containers are visited
//! init containers first, then containers (`visitor.go`); the results are joined in check-ID
//! order as `reason (detail)` (`checks.go` `AggregateCheckResults`), and the pod is refused
//! with `NewForbidden` and "violates PodSecurity \"<level>:<version>\": …"
//! (`staging/src/k8s.io/pod-security-admission/admission/admission.go`). Not modelled: the
//! other baseline checks (host namespaces, hostPath, host ports, sysctls, …), restricted's
//! `runAsUser` and volume-type checks, `audit`/`warn` modes, and user-namespace relaxations.
//! The stand-in has no Namespace objects: labels are set with
//! [`super::KubernetesStandIn::set_namespace_labels`].

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{Value, json};

const ENFORCE: &str = "pod-security.kubernetes.io/enforce";
const ENFORCE_VERSION: &str = "pod-security.kubernetes.io/enforce-version";

/// `"a", "b"`, as `joinQuote`.
fn join_quote(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn containers_word(n: usize) -> &'static str {
    if n == 1 { "container" } else { "containers" }
}

/// Init containers, then containers.
fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// The failed checks of `level` as (reason, detail), in check-ID order.
fn violations(spec: &PodSpec, level: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let security = |c: &Container| c.security_context.clone().unwrap_or_default();
    let restricted = level == "restricted";
    // privileged (baseline)
    let privileged: Vec<String> = containers(spec)
        .filter(|c| security(c).privileged == Some(true))
        .map(|c| c.name.clone())
        .collect();
    if !privileged.is_empty() {
        out.push((
            "privileged".to_owned(),
            format!(
                "{} {} must not set securityContext.privileged=true",
                containers_word(privileged.len()),
                join_quote(&privileged)
            ),
        ));
    }
    // allowPrivilegeEscalation (restricted)
    if restricted {
        let bad: Vec<String> = containers(spec)
            .filter(|c| security(c).allow_privilege_escalation != Some(false))
            .map(|c| c.name.clone())
            .collect();
        if !bad.is_empty() {
            out.push((
                "allowPrivilegeEscalation != false".to_owned(),
                format!(
                    "{} {} must set securityContext.allowPrivilegeEscalation=false",
                    containers_word(bad.len()),
                    join_quote(&bad)
                ),
            ));
        }
    }
    // capabilities_restricted
    if restricted {
        let mut missing_drop_all = Vec::new();
        let mut adding = Vec::new();
        let mut forbidden = std::collections::BTreeSet::new();
        for c in containers(spec) {
            let Some(capabilities) = security(c).capabilities else {
                missing_drop_all.push(c.name.clone());
                continue;
            };
            if !capabilities.drop.iter().flatten().any(|d| d == "ALL") {
                missing_drop_all.push(c.name.clone());
            }
            let bad: Vec<&String> = capabilities
                .add
                .iter()
                .flatten()
                .filter(|a| *a != "NET_BIND_SERVICE")
                .collect();
            if !bad.is_empty() {
                adding.push(c.name.clone());
                forbidden.extend(bad.into_iter().cloned());
            }
        }
        let mut details = Vec::new();
        if !missing_drop_all.is_empty() {
            details.push(format!(
                "{} {} must set securityContext.capabilities.drop=[\"ALL\"]",
                containers_word(missing_drop_all.len()),
                join_quote(&missing_drop_all)
            ));
        }
        if !adding.is_empty() {
            let forbidden: Vec<String> = forbidden.into_iter().collect();
            details.push(format!(
                "{} {} must not include {} in securityContext.capabilities.add",
                containers_word(adding.len()),
                join_quote(&adding),
                join_quote(&forbidden)
            ));
        }
        if !details.is_empty() {
            out.push(("unrestricted capabilities".to_owned(), details.join("; ")));
        }
    }
    let pod = spec.security_context.clone().unwrap_or_default();
    // runAsNonRoot (restricted)
    if restricted {
        let mut bad_setters = Vec::new();
        let pod_non_root = match pod.run_as_non_root {
            Some(false) => {
                bad_setters.push("pod".to_owned());
                false
            }
            Some(true) => true,
            None => false,
        };
        let (mut explicit, mut implicit) = (Vec::new(), Vec::new());
        for c in containers(spec) {
            match security(c).run_as_non_root {
                Some(false) => explicit.push(c.name.clone()),
                Some(true) => {}
                None if !pod_non_root => implicit.push(c.name.clone()),
                None => {}
            }
        }
        if !explicit.is_empty() {
            bad_setters.push(format!(
                "{} {}",
                containers_word(explicit.len()),
                join_quote(&explicit)
            ));
        }
        if !bad_setters.is_empty() {
            out.push((
                "runAsNonRoot != true".to_owned(),
                format!(
                    "{} must not set securityContext.runAsNonRoot=false",
                    bad_setters.join(" and ")
                ),
            ));
        } else if !implicit.is_empty() {
            out.push((
                "runAsNonRoot != true".to_owned(),
                format!(
                    "pod or {} {} must set securityContext.runAsNonRoot=true",
                    containers_word(implicit.len()),
                    join_quote(&implicit)
                ),
            ));
        }
    }
    // seccompProfile_restricted
    if restricted {
        let valid = |t: &str| t == "RuntimeDefault" || t == "Localhost";
        let mut bad_setters = Vec::new();
        let mut bad_values = std::collections::BTreeSet::new();
        let pod_set = match &pod.seccomp_profile {
            Some(p) if !valid(&p.type_) => {
                bad_setters.push("pod".to_owned());
                bad_values.insert(p.type_.clone());
                false
            }
            Some(_) => true,
            None => false,
        };
        let (mut explicit, mut implicit) = (Vec::new(), Vec::new());
        for c in containers(spec) {
            match security(c).seccomp_profile {
                Some(p) if !valid(&p.type_) => {
                    explicit.push(c.name.clone());
                    bad_values.insert(p.type_.clone());
                }
                Some(_) => {}
                None if !pod_set => implicit.push(c.name.clone()),
                None => {}
            }
        }
        if !explicit.is_empty() {
            bad_setters.push(format!(
                "{} {}",
                containers_word(explicit.len()),
                join_quote(&explicit)
            ));
        }
        if !bad_setters.is_empty() {
            let values: Vec<String> = bad_values.into_iter().collect();
            out.push((
                "seccompProfile".to_owned(),
                format!(
                    "{} must not set securityContext.seccompProfile.type to {}",
                    bad_setters.join(" and "),
                    join_quote(&values)
                ),
            ));
        } else if !implicit.is_empty() {
            out.push((
                "seccompProfile".to_owned(),
                format!(
                    "pod or {} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                    containers_word(implicit.len()),
                    join_quote(&implicit)
                ),
            ));
        }
    }
    out
}

/// The 403 for a pod the namespace's enforced level refuses, if it does.
pub(super) fn admit(
    inner: &super::Inner,
    namespace: &str,
    name: &str,
    pod: &Value,
) -> Option<Response> {
    let labels = inner
        .namespace_labels
        .get(namespace)
        .cloned()
        .unwrap_or_default();
    let level = labels.get(ENFORCE)?.clone();
    if level != "baseline" && level != "restricted" {
        return None;
    }
    let version = labels
        .get(ENFORCE_VERSION)
        .cloned()
        .unwrap_or_else(|| "latest".to_owned());
    let spec: PodSpec = serde_json::from_value(pod["spec"].clone()).ok()?;
    let found = violations(&spec, &level);
    if found.is_empty() {
        return None;
    }
    let reasons: Vec<String> = found
        .into_iter()
        .map(|(reason, detail)| format!("{reason} ({detail})"))
        .collect();
    let message = format!(
        "pods {name:?} is forbidden: violates PodSecurity \"{level}:{version}\": {}",
        reasons.join(", ")
    );
    Some(
        (
            StatusCode::FORBIDDEN,
            axum::Json(json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": "Forbidden",
                "details": {"name": name, "kind": "pods"}, "code": 403,
            })),
        )
            .into_response(),
    )
}

impl super::KubernetesStandIn {
    /// Sets the labels of namespace `namespace` (`pod-security.kubernetes.io/enforce` turns
    /// PodSecurity admission on for it).
    pub fn set_namespace_labels(&self, namespace: &str, labels: &[(&str, &str)]) {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.shared
            .lock()
            .namespace_labels
            .insert(namespace.to_owned(), labels);
    }
}
