//! The pod's volumes and the build container's mounts: the agent, its spec, the builds
//! directory, the trace prelude handover, then the configured volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIVolumeSource, ConfigMapVolumeSource, EmptyDirVolumeSource, HostPathVolumeSource, KeyToPath,
    NFSVolumeSource, PersistentVolumeClaimVolumeSource, SecretVolumeSource, Volume, VolumeMount,
};
use podrunner_config::RunnerConfig;
use podrunner_config::kubernetes::KubernetesConfig;

use super::{AGENT_BIN_DIR, HANDOVER_DIR, JobVariables, PlanError, SPEC_DIR, kube_quantity, names};

/// The pod's volumes, and the build container's mounts of them; `spec_secret` holds the
/// agent's spec.
pub(super) fn plan(
    runner: &RunnerConfig,
    config: &KubernetesConfig,
    variables: &JobVariables,
    spec_secret: &str,
) -> Result<(Vec<Volume>, Vec<VolumeMount>), PlanError> {
    // Volumes: the agent, its spec, the builds directory, then the user's.
    let builds_dir = runner.builds_dir();
    let mut volumes = vec![
        Volume {
            name: "podrunner-bin".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "podrunner-spec".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(spec_secret.to_owned()),
                // Readable by whatever user the build container runs as: the kubelet writes
                // Secret files root-owned and changes ownership only for fsGroup
                // (kubernetes pkg/volume/volume_linux.go SetVolumeOwnership), so 0400 locks
                // out an image's non-root USER and run_as_user without fs_group. No other pod
                // can read it: the Secret is this pod's alone (named after it, owned by it),
                // and only the containers that mount this volume see the file.
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "builds".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        handover_volume(),
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "podrunner-bin".into(),
            mount_path: AGENT_BIN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "podrunner-spec".into(),
            mount_path: SPEC_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "builds".into(),
            mount_path: builds_dir.clone(),
            ..Default::default()
        },
        VolumeMount {
            name: "podrunner-handover".into(),
            mount_path: HANDOVER_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    let v = &config.volumes;
    let mount = |name: &str,
                 path: &str,
                 sub_path: &Option<String>,
                 read_only: bool,
                 propagation: Option<&String>| VolumeMount {
        name: name.to_owned(),
        mount_path: variables.expand(path),
        sub_path: sub_path.clone(),
        read_only: read_only.then_some(true),
        mount_propagation: propagation.cloned(),
        ..Default::default()
    };
    for h in &v.host_path {
        volumes.push(Volume {
            name: h.name.clone(),
            host_path: Some(HostPathVolumeSource {
                path: h.host_path.clone().unwrap_or_else(|| h.mount_path.clone()),
                type_: None,
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &h.name,
            &h.mount_path,
            &h.sub_path,
            h.read_only,
            h.mount_propagation.as_ref(),
        ));
    }
    for p in &v.pvc {
        let claim = variables.expand(&p.name);
        // The claim names the volume too, so it must be a DNS-1123 label (`ValidateVolumes`).
        PlanError::check(
            format!("volumes.pvc name {:?}", p.name),
            &claim,
            "volume name",
            names::dns1123_label,
        )?;
        volumes.push(Volume {
            name: claim.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: p.read_only.then_some(true),
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &claim,
            &p.mount_path,
            &p.sub_path,
            p.read_only,
            p.mount_propagation.as_ref(),
        ));
    }
    let items = |map: &BTreeMap<String, String>| {
        (!map.is_empty()).then(|| {
            map.iter()
                .map(|(key, path)| KeyToPath {
                    key: key.clone(),
                    path: path.clone(),
                    ..Default::default()
                })
                .collect()
        })
    };
    for c in &v.config_map {
        volumes.push(Volume {
            name: c.name.clone(),
            config_map: Some(ConfigMapVolumeSource {
                name: c.name.clone(),
                items: items(&c.items),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &c.name,
            &c.mount_path,
            &c.sub_path,
            c.read_only,
            None,
        ));
    }
    for s in &v.secret {
        volumes.push(Volume {
            name: s.name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(s.name.clone()),
                items: items(&s.items),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &s.name,
            &s.mount_path,
            &s.sub_path,
            s.read_only,
            None,
        ));
    }
    for e in &v.empty_dir {
        volumes.push(Volume {
            name: e.name.clone(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: e.medium.clone(),
                size_limit: e.size_limit.as_ref().map(kube_quantity),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(&e.name, &e.mount_path, &e.sub_path, false, None));
    }
    for c in &v.csi {
        volumes.push(Volume {
            name: c.name.clone(),
            csi: Some(CSIVolumeSource {
                driver: c.driver.clone(),
                fs_type: c.fs_type.clone(),
                read_only: c.read_only.then_some(true),
                volume_attributes: (!c.volume_attributes.is_empty())
                    .then(|| c.volume_attributes.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &c.name,
            &c.mount_path,
            &c.sub_path,
            c.read_only,
            None,
        ));
    }
    for n in &v.nfs {
        volumes.push(Volume {
            name: n.name.clone(),
            nfs: Some(NFSVolumeSource {
                server: n.server.clone(),
                path: n.path.clone(),
                read_only: n.read_only.then_some(true),
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &n.name,
            &n.mount_path,
            &n.sub_path,
            n.read_only,
            None,
        ));
    }
    Ok((volumes, mounts))
}

/// The trace prelude annotation as a file the kubelet rewrites when it syncs the pod: the
/// agent learns from it the lines the manager sent after the build container's environment
/// was resolved.
fn handover_volume() -> Volume {
    use k8s_openapi::api::core::v1::{
        DownwardAPIVolumeFile, DownwardAPIVolumeSource, ObjectFieldSelector,
    };
    Volume {
        name: "podrunner-handover".into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "trace-prelude".into(),
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: format!(
                        "metadata.annotations['{}']",
                        podrunner_agent::TRACE_PRELUDE_ANNOTATION
                    ),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
