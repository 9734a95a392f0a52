//! Which Pod Security Standard a planned pod meets, for `podrunner plan`: the checks of
//! kubernetes `staging/src/k8s.io/pod-security-admission/policy/` a job pod can break.
//! Baseline: privileged containers, host namespaces, hostPath volumes, host ports, added
//! capabilities outside baseline's list. Restricted adds: `allowPrivilegeEscalation: false`,
//! capabilities dropping `ALL` (adding at most `NET_BIND_SERVICE`), `runAsNonRoot: true`, a
//! `RuntimeDefault` or `Localhost` seccomp profile (pod or every container), and no
//! `runAsUser: 0`.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

/// The capabilities baseline allows to be added (`check_capabilities_baseline.go`).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The most restrictive level a pod meets, and what keeps it from the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSecurityLevel {
    /// `restricted`, `baseline` or `privileged`.
    pub level: &'static str,
    /// What the next stricter level would refuse (empty for `restricted`).
    pub blockers: Vec<String>,
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

fn baseline_problems(spec: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (set, what) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if set == Some(true) {
            out.push(format!("{what}=true"));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            out.push(format!("hostPath volume {:?}", volume.name));
        }
    }
    for c in containers(spec) {
        let security = c.security_context.clone().unwrap_or_default();
        if security.privileged == Some(true) {
            out.push(format!("container {:?} is privileged", c.name));
        }
        for added in security
            .capabilities
            .iter()
            .flat_map(|k| k.add.iter().flatten())
        {
            if !BASELINE_CAPABILITIES.contains(&added.as_str()) {
                out.push(format!("container {:?} adds capability {added}", c.name));
            }
        }
        for port in c.ports.iter().flatten() {
            if port.host_port.is_some_and(|p| p != 0) {
                out.push(format!("container {:?} uses a host port", c.name));
            }
        }
    }
    out
}

fn restricted_problems(spec: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    let pod = spec.security_context.clone().unwrap_or_default();
    let pod_non_root = pod.run_as_non_root == Some(true);
    let valid_seccomp = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let pod_seccomp = pod
        .seccomp_profile
        .as_ref()
        .is_some_and(|p| valid_seccomp(&p.type_));
    if pod.run_as_user == Some(0) {
        out.push("the pod sets runAsUser=0".to_owned());
    }
    for c in containers(spec) {
        let security = c.security_context.clone().unwrap_or_default();
        let name = &c.name;
        if security.allow_privilege_escalation != Some(false) {
            out.push(format!(
                "container {name:?} does not set allowPrivilegeEscalation=false"
            ));
        }
        let capabilities = security.capabilities.clone().unwrap_or_default();
        if !capabilities.drop.iter().flatten().any(|d| d == "ALL") {
            out.push(format!("container {name:?} does not drop ALL capabilities"));
        }
        if capabilities
            .add
            .iter()
            .flatten()
            .any(|a| a != "NET_BIND_SERVICE")
        {
            out.push(format!(
                "container {name:?} adds capabilities other than NET_BIND_SERVICE"
            ));
        }
        match security.run_as_non_root {
            Some(false) => out.push(format!("container {name:?} sets runAsNonRoot=false")),
            None if !pod_non_root => out.push(format!(
                "neither the pod nor container {name:?} sets runAsNonRoot=true"
            )),
            _ => {}
        }
        match &security.seccomp_profile {
            Some(p) if !valid_seccomp(&p.type_) => out.push(format!(
                "container {name:?} sets seccomp profile {:?}",
                p.type_
            )),
            None if !pod_seccomp => out.push(format!(
                "neither the pod nor container {name:?} sets a RuntimeDefault or Localhost seccomp profile"
            )),
            _ => {}
        }
        if security.run_as_user == Some(0) {
            out.push(format!("container {name:?} sets runAsUser=0"));
        }
    }
    out
}

/// The level `pod` meets.
pub fn level_of(pod: &Pod) -> PodSecurityLevel {
    let spec = pod.spec.clone().unwrap_or_default();
    let baseline = baseline_problems(&spec);
    if !baseline.is_empty() {
        return PodSecurityLevel {
            level: "privileged",
            blockers: baseline,
        };
    }
    let restricted = restricted_problems(&spec);
    if !restricted.is_empty() {
        return PodSecurityLevel {
            level: "baseline",
            blockers: restricted,
        };
    }
    PodSecurityLevel {
        level: "restricted",
        blockers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn levels() {
        let plain = pod(json!({"containers": [{"name": "build"}]}));
        let level = level_of(&plain);
        assert_eq!(level.level, "baseline");
        assert!(
            level
                .blockers
                .contains(&"container \"build\" does not drop ALL capabilities".to_owned()),
            "{level:?}"
        );
        let privileged = pod(
            json!({"containers": [{"name": "build", "securityContext": {"privileged": true}}]}),
        );
        assert_eq!(level_of(&privileged).level, "privileged");
        let restricted = pod(json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "build", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        }));
        assert_eq!(
            level_of(&restricted),
            PodSecurityLevel {
                level: "restricted",
                blockers: vec![]
            }
        );
    }
}
