//! The pod's own containers: `build`, where the agent runs the job as PID 1, and
//! `podrunner-init`, which installs the agent. Services are [`super::services`].

use k8s_openapi::api::core::v1::{Container, VolumeMount};
use podrunner_config::kubernetes::{ContainerRole, KubernetesConfig};
use podrunner_gitlab::payload::JobResponse;

use super::security::security_context;
use super::{
    AGENT_BIN_DIR, AGENT_INSTALL_DIR, HANDOVER_DIR, JobVariables, PlanError, SPEC_DIR, resources,
    users,
};

/// The build container: `image`, the agent as its command, `mounts`.
pub(super) fn build(
    config: &KubernetesConfig,
    job: &JobResponse,
    image: String,
    pull_policy: Option<String>,
    variables: &JobVariables,
    mounts: Vec<VolumeMount>,
    warnings: &mut Vec<String>,
) -> Result<Container, PlanError> {
    let mut build_security =
        security_context(config, config.build_container_security_context.as_ref());
    users::apply(
        config,
        &mut build_security,
        config.build_container_security_context.as_ref(),
        &users::job_user(&job.image, variables)?,
        "build",
        warnings,
    );
    let build = Container {
        name: "build".into(),
        image: Some(image),
        image_pull_policy: pull_policy,
        command: Some(vec![
            format!("{AGENT_BIN_DIR}/podrunner"),
            "agent".into(),
            "--spec".into(),
            format!("{SPEC_DIR}/job.json"),
        ]),
        // What the executor hands the agent through pod annotations, as they are when the
        // container starts: the start of the job's log (the executor sets and updates it while
        // the pod is pending), Fargate's size for the pod and its price.
        env: Some(vec![
            annotation_env(
                podrunner_agent::TRACE_PRELUDE_ENV,
                podrunner_agent::TRACE_PRELUDE_ANNOTATION,
            ),
            annotation_env(podrunner_agent::FARGATE_CAPACITY_ENV, "CapacityProvisioned"),
            annotation_env(
                podrunner_agent::FARGATE_PRICE_ENV,
                podrunner_agent::FARGATE_PRICE_ANNOTATION,
            ),
            // The prelude as the kubelet refreshes it while the container runs.
            k8s_openapi::api::core::v1::EnvVar {
                name: podrunner_agent::TRACE_PRELUDE_FILE_ENV.into(),
                value: Some(format!("{HANDOVER_DIR}/trace-prelude")),
                value_from: None,
            },
        ]),
        resources: resources(config, ContainerRole::Build, variables, warnings)?,
        security_context: Some(build_security),
        volume_mounts: Some(mounts),
        lifecycle: config.container_lifecycle.as_ref().map(lifecycle),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("File".into()),
        ..Default::default()
    };
    Ok(build)
}

/// The init container that installs the agent from `init_image`.
pub(super) fn init(
    config: &KubernetesConfig,
    init_image: &str,
    pull_policy: Option<String>,
    variables: &JobVariables,
    warnings: &mut Vec<String>,
) -> Result<Container, PlanError> {
    let init = Container {
        name: "podrunner-init".into(),
        image: Some(init_image.to_owned()),
        image_pull_policy: pull_policy,
        command: Some(vec![
            "/podrunner".into(),
            "install-agent".into(),
            AGENT_INSTALL_DIR.into(),
        ]),
        resources: resources(config, ContainerRole::Helper, variables, warnings)?,
        security_context: Some(security_context(
            config,
            config.init_permissions_container_security_context.as_ref(),
        )),
        volume_mounts: Some(vec![VolumeMount {
            name: "podrunner-bin".into(),
            mount_path: AGENT_INSTALL_DIR.into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    Ok(init)
}

/// The configured `container_lifecycle` hooks of the build container.
fn lifecycle(
    l: &podrunner_config::kubernetes::ContainerLifecycle,
) -> k8s_openapi::api::core::v1::Lifecycle {
    use k8s_openapi::api::core::v1::{
        ExecAction, HTTPGetAction, HTTPHeader, LifecycleHandler, TCPSocketAction,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let handler = |h: &podrunner_config::kubernetes::LifecycleHandler| LifecycleHandler {
        exec: h.exec.as_ref().map(|e| ExecAction {
            command: Some(e.command.clone()),
        }),
        http_get: h.http_get.as_ref().map(|g| HTTPGetAction {
            host: g.host.clone(),
            port: IntOrString::Int(g.port as i32),
            path: g.path.clone(),
            scheme: g.scheme.clone(),
            http_headers: (!g.http_headers.is_empty()).then(|| {
                g.http_headers
                    .iter()
                    .map(|h| HTTPHeader {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect()
            }),
            ..Default::default()
        }),
        tcp_socket: h.tcp_socket.as_ref().map(|t| TCPSocketAction {
            host: t.host.clone(),
            port: IntOrString::Int(t.port as i32),
        }),
        ..Default::default()
    };
    k8s_openapi::api::core::v1::Lifecycle {
        post_start: l.post_start.as_ref().map(handler),
        pre_stop: l.pre_stop.as_ref().map(handler),
        ..Default::default()
    }
}

/// An environment variable with the pod's annotation `annotation` (empty when it is absent).
fn annotation_env(name: &str, annotation: &str) -> k8s_openapi::api::core::v1::EnvVar {
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: format!("metadata.annotations['{annotation}']"),
            }),
            ..Default::default()
        }),
    }
}
