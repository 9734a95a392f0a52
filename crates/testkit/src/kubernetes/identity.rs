//! Who a container's process is, and who owns the files the kubelet puts in its volumes.
//!
//! - The process runs as the image's USER (a stand-in image declares one with
//!   [`super::KubernetesStandIn::set_image_user`]; none is root, `0:0`, as for an image
//!   without USER), unless the security context says otherwise: the container's
//!   `runAsUser`/`runAsGroup` over the pod's (`pkg/securitycontext/util.go`
//!   `DetermineEffectiveSecurityContext`, used by
//!   `pkg/kubelet/kuberuntime/security_context.go`). With `runAsUser` and no `runAsGroup`, the
//!   runtime takes the user's group from the image's `/etc/passwd`; the stand-in's images
//!   have none, so the group is 0 (containerd `pkg/oci/spec_opts.go` `WithUserID`). The pod's
//!   `fsGroup` and `supplementalGroups` are the process's supplementary groups
//!   (`security_context.go` `convertToRuntimeSecurityContext` via
//!   `determineEffectiveSecurityContext`).
//! - The sandbox really runs the process under that identity: for a non-root identity, bwrap
//!   itself is started as that uid/gid and groups (`setpriv`), in a user namespace that maps
//!   the uid and gid to themselves, so the host kernel checks every file access as that user.
//!   A root identity runs as the host's root, as before. An unprivileged user namespace
//!   maps only the process's own uid and gid, so inside it files of other owners (root's
//!   Secret files among them) show as owned by 65534; access is still checked by the host
//!   kernel against the real owners, which is what matters.
//! - Secret volume files are written root-owned with the volume's `defaultMode` (0644 when
//!   unset, `SecretVolumeSourceDefaultMode`; `pkg/volume/secret/secret.go`,
//!   `pkg/volume/util/atomic_writer.go`). With the pod's `fsGroup` the kubelet then gives the
//!   volume to that group and makes it group-readable (read-only volumes: files `| 0440`,
//!   directories setgid; `pkg/volume/volume_linux.go` `SetVolumeOwnership`); without it no
//!   ownership changes. `emptyDir` directories are `0777` (`pkg/volume/emptydir/empty_dir.go`
//!   `perm`); the termination message file is `0666` (`pkg/kubelet/kuberuntime/kuberuntime_container.go`
//!   `makeMounts`: "so that non-root containers can write to the file").

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::Shared;

/// The uid, gid and supplementary groups of a container's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    uid: i64,
    gid: i64,
    groups: Vec<i64>,
}

impl Identity {
    /// The identity of `container` of `spec`, whose image declares `image_user` (uid, gid).
    pub(super) fn of(
        spec: &PodSpec,
        container: &Container,
        image_user: Option<(i64, i64)>,
    ) -> Self {
        let pod = spec.security_context.as_ref();
        let own = container.security_context.as_ref();
        let run_as_user = own
            .and_then(|s| s.run_as_user)
            .or_else(|| pod.and_then(|p| p.run_as_user));
        let run_as_group = own
            .and_then(|s| s.run_as_group)
            .or_else(|| pod.and_then(|p| p.run_as_group));
        let (image_uid, image_gid) = image_user.unwrap_or((0, 0));
        let uid = run_as_user.unwrap_or(image_uid);
        let gid = run_as_group.unwrap_or(if run_as_user.is_some() { 0 } else { image_gid });
        let mut groups: Vec<i64> = pod.and_then(|p| p.fs_group).into_iter().collect();
        groups.extend(
            pod.and_then(|p| p.supplemental_groups.clone())
                .unwrap_or_default(),
        );
        groups.dedup();
        Identity { uid, gid, groups }
    }

    /// The sandbox program: `bwrap` for root; `setpriv` starting an unprivileged bwrap in a
    /// user namespace of that uid and gid otherwise. The caller adds bwrap's other arguments.
    pub(super) fn sandbox(&self) -> tokio::process::Command {
        if self.uid == 0 {
            return tokio::process::Command::new("bwrap");
        }
        let mut command = tokio::process::Command::new("setpriv");
        command.arg(format!("--reuid={}", self.uid));
        command.arg(format!("--regid={}", self.gid));
        if self.groups.is_empty() {
            command.arg("--clear-groups");
        } else {
            let groups: Vec<String> = self.groups.iter().map(i64::to_string).collect();
            command.arg(format!("--groups={}", groups.join(",")));
        }
        command.args(["--", "bwrap", "--unshare-user"]);
        command.arg("--uid").arg(self.uid.to_string());
        command.arg("--gid").arg(self.gid.to_string());
        command
    }
}

/// The sandbox program for `container` of pod `namespace/name`, as its identity needs.
pub(super) fn sandbox_for(
    shared: &Shared,
    namespace: &str,
    name: &str,
    container: &Container,
) -> tokio::process::Command {
    let (spec, image_user) = {
        let inner = shared.lock();
        let spec = inner
            .objects
            .get(&(super::Kind::Pod, namespace.to_owned(), name.to_owned()))
            .and_then(|pod| serde_json::from_value::<PodSpec>(pod["spec"].clone()).ok())
            .unwrap_or_default();
        let image = container.image.as_deref().unwrap_or_default();
        (spec, inner.image_users.get(image).copied())
    };
    Identity::of(&spec, container, image_user).sandbox()
}

/// Gives a Secret volume's files their mode and owner: `mode`, root-owned; with `fs_group`,
/// group `fs_group` and group-readable, the directory setgid.
pub(super) fn own_secret_volume(
    dir: &Path,
    files: &[std::path::PathBuf],
    mode: u32,
    fs_group: Option<i64>,
) -> std::io::Result<()> {
    for file in files {
        let mode = if fs_group.is_some() {
            mode | 0o440
        } else {
            mode
        };
        std::os::unix::fs::chown(file, Some(0), Some(fs_group.unwrap_or(0) as u32))?;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))?;
    }
    if let Some(group) = fs_group {
        std::os::unix::fs::chown(dir, Some(0), Some(group as u32))?;
        let current = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(current | 0o2000))?;
    }
    Ok(())
}

/// The termination message file, writable by any container user.
pub(super) fn termination_message_file(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
}

impl super::KubernetesStandIn {
    /// Declares the USER of `image` (as `USER uid:gid` in its Dockerfile). Images without one
    /// run as root.
    pub fn set_image_user(&self, image: &str, uid: i64, gid: i64) {
        self.shared
            .lock()
            .image_users
            .insert(image.to_owned(), (uid, gid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};

    #[test]
    fn the_container_context_wins_over_the_pod_and_the_image() {
        let mut spec = PodSpec::default();
        let mut container = Container::default();
        let id = |spec: &PodSpec, c: &Container, image| Identity::of(spec, c, image);
        assert_eq!(
            id(&spec, &container, None),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![]
            }
        );
        assert_eq!(
            id(&spec, &container, Some((1000, 1001))),
            Identity {
                uid: 1000,
                gid: 1001,
                groups: vec![]
            }
        );
        spec.security_context = Some(PodSecurityContext {
            run_as_user: Some(2000),
            fs_group: Some(3000),
            ..Default::default()
        });
        assert_eq!(
            id(&spec, &container, Some((1000, 1001))),
            Identity {
                uid: 2000,
                gid: 0,
                groups: vec![3000]
            },
            "runAsUser without runAsGroup: group 0 (no /etc/passwd)"
        );
        container.security_context = Some(SecurityContext {
            run_as_user: Some(4000),
            run_as_group: Some(4001),
            ..Default::default()
        });
        assert_eq!(
            id(&spec, &container, None),
            Identity {
                uid: 4000,
                gid: 4001,
                groups: vec![3000]
            }
        );
    }
}
