//! Security contexts: each container's (the role's own over the runner's privileges and
//! capabilities) and the pod's.

use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, SecurityContext};
use podrunner_config::kubernetes::{ContainerSecurityContext, KubernetesConfig};

/// The security context of a container: the role's own context over the runner's
/// `privileged`/`allow_privilege_escalation`, `NET_RAW` dropped unless added, then
/// `cap_add`/`cap_drop` (drop wins).
pub(super) fn security_context(
    config: &KubernetesConfig,
    own: Option<&ContainerSecurityContext>,
) -> SecurityContext {
    let mut add: Vec<String> = config.cap_add.clone();
    let mut drop: Vec<String> = Vec::new();
    if !add.iter().any(|c| c == "NET_RAW") {
        drop.push("NET_RAW".to_owned());
    }
    drop.extend(config.cap_drop.iter().cloned());
    if let Some(capabilities) = own.and_then(|o| o.capabilities.as_ref()) {
        add.extend(capabilities.add.iter().cloned());
        drop.extend(capabilities.drop.iter().cloned());
    }
    add.retain(|c| !drop.contains(c));
    add.dedup();
    drop.dedup();
    let profile = |p: &podrunner_config::kubernetes::SecurityProfile| {
        (
            p.profile_type.clone().unwrap_or_default(),
            p.localhost_profile.clone(),
        )
    };
    SecurityContext {
        privileged: own.and_then(|o| o.privileged).or(config.privileged),
        allow_privilege_escalation: own
            .and_then(|o| o.allow_privilege_escalation)
            .or(config.allow_privilege_escalation),
        run_as_user: own.and_then(|o| o.run_as_user),
        run_as_group: own.and_then(|o| o.run_as_group),
        run_as_non_root: own.and_then(|o| o.run_as_non_root),
        read_only_root_filesystem: own.and_then(|o| o.read_only_root_filesystem),
        proc_mount: own.and_then(|o| o.proc_mount.as_deref()).map(|p| {
            if p == "unmasked" {
                "Unmasked"
            } else {
                "Default"
            }
            .to_owned()
        }),
        se_linux_options: own.and_then(|o| o.selinux_type.clone()).map(|t| {
            k8s_openapi::api::core::v1::SELinuxOptions {
                type_: Some(t),
                ..Default::default()
            }
        }),
        seccomp_profile: own
            .and_then(|o| o.seccomp_profile.as_ref())
            .map(profile)
            .map(
                |(type_, localhost_profile)| k8s_openapi::api::core::v1::SeccompProfile {
                    type_,
                    localhost_profile,
                },
            ),
        app_armor_profile: own
            .and_then(|o| o.app_armor_profile.as_ref())
            .map(profile)
            .map(
                |(type_, localhost_profile)| k8s_openapi::api::core::v1::AppArmorProfile {
                    type_,
                    localhost_profile,
                },
            ),
        capabilities: Some(Capabilities {
            add: (!add.is_empty()).then_some(add),
            drop: (!drop.is_empty()).then_some(drop),
        }),
        ..Default::default()
    }
}

/// The pod's security context, from `pod_security_context`.
pub(super) fn pod_security_context(config: &KubernetesConfig) -> Option<PodSecurityContext> {
    config
        .pod_security_context
        .as_ref()
        .map(|p| PodSecurityContext {
            fs_group: p.fs_group,
            run_as_group: p.run_as_group,
            run_as_non_root: p.run_as_non_root,
            run_as_user: p.run_as_user,
            supplemental_groups: (!p.supplemental_groups.is_empty())
                .then(|| p.supplemental_groups.clone()),
            se_linux_options: p.selinux_type.clone().map(|t| {
                k8s_openapi::api::core::v1::SELinuxOptions {
                    type_: Some(t),
                    ..Default::default()
                }
            }),
            // Pod-level profiles: what PodSecurity `restricted` asks of every job pod.
            seccomp_profile: p.seccomp_profile.as_ref().map(|profile| {
                k8s_openapi::api::core::v1::SeccompProfile {
                    type_: profile.profile_type.clone().unwrap_or_default(),
                    localhost_profile: profile.localhost_profile.clone(),
                }
            }),
            app_armor_profile: p.app_armor_profile.as_ref().map(|profile| {
                k8s_openapi::api::core::v1::AppArmorProfile {
                    type_: profile.profile_type.clone().unwrap_or_default(),
                    localhost_profile: profile.localhost_profile.clone(),
                }
            }),
            ..Default::default()
        })
}
