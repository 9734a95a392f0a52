//! The agent's spec as the manager writes it, for every executor (shell here, kubernetes in
//! `podrunner-kube`).

use std::path::PathBuf;

use podrunner_agent::script::ShellKind;
use podrunner_agent::{AgentSpec, GitlabConnection};

use crate::{AcceptedJob, short_token};

/// The agent's spec for `job`: where GitLab is, the payload, the directories and the runner's
/// settings that shape a job. The executor decides the layout.
pub async fn agent_spec(
    job: &AcceptedJob,
    executor: podrunner_config::Executor,
    builds_dir: PathBuf,
    cache_dir: PathBuf,
    project_dir: Option<PathBuf>,
    termination_report: PathBuf,
) -> AgentSpec {
    let runner = &job.runner;
    let mut spec = AgentSpec {
        gitlab: GitlabConnection {
            url: runner.url.clone().unwrap_or_default(),
            tls_ca_file: runner.tls_ca_file.clone().map(PathBuf::from),
            tls_cert_file: runner.tls_cert_file.clone().map(PathBuf::from),
            tls_key_file: runner.tls_key_file.clone().map(PathBuf::from),
        },
        version: podrunner_agent::SPEC_VERSION,
        job: job.payload.clone(),
        project_dir,
        temp_dir: None,
        builds_dir,
        cache_dir,
        output_limit_kib: if runner.output_limit > 0 {
            runner.output_limit as u64
        } else {
            podrunner_config::DEFAULT_OUTPUT_LIMIT_KIB as u64
        },
        feature_flags: runner.feature_flags.clone(),
        shell: runner.shell.map(|shell| match shell {
            podrunner_config::Shell::Bash => ShellKind::Bash,
            podrunner_config::Shell::Sh => ShellKind::Sh,
        }),
        pre_get_sources_script: runner.pre_get_sources_script.clone(),
        post_get_sources_script: runner.post_get_sources_script.clone(),
        pre_build_script: runner.pre_build_script.clone(),
        post_build_script: runner.post_build_script.clone(),
        environment: runner.environment.clone(),
        clone_url: runner.clone_url.clone(),
        custom_build_dir_enabled: runner.custom_build_dir_enabled(),
        debug_trace_disabled: runner.debug_trace_disabled,
        final_update_retry_limit: runner.job_status_final_update_retry_limit.clamp(1, 100) as u32,
        executor,
        runner_name: runner.name.clone().unwrap_or_default(),
        runner_short_token: short_token(runner.token.as_deref().unwrap_or("")),
        system_id: job.system_id.clone(),
        termination_report: Some(termination_report),
        concurrent_id: job.concurrent_id,
        notes: Vec::new(),
        caches: Vec::new(),
        cache_settings: Default::default(),
    };
    // The caches: keys resolved and, with a remote store, URLs signed (podrunner-cache).
    (spec.caches, spec.cache_settings) =
        podrunner_cache::resolve(runner, &spec, &job.payload).await;
    spec
}
