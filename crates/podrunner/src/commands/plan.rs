//! `podrunner plan`: the job Pod of each kubernetes runner, as the executor would create it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use podrunner_config::Executor;
use podrunner_gitlab::JobPayload;
use podrunner_kube::{PlanContext, plan};

use crate::ConfigSource;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PlanFormat {
    /// One YAML document per pod.
    Yaml,
    /// `{"runners": [{"name": ..., "pod": <Pod>}]}`.
    Json,
}

/// Arguments of `plan`.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// A job payload (JSON, as GitLab sends it) [default: a built-in sample job].
    #[arg(long, value_name = "FILE")]
    job: Option<PathBuf>,
    /// A job variable, after the payload's own (repeatable), e.g. KUBERNETES_CPU_REQUEST=1.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    vars: Vec<String>,
    /// The image of the init container that installs the agent (the chart sets it to the
    /// runner's own image).
    #[arg(long, env = "PODRUNNER_INIT_IMAGE", default_value = concat!("podrunner:", env!("CARGO_PKG_VERSION")), value_name = "IMAGE")]
    init_image: String,
    /// Without declared Fargate profiles, assume the pods run on Fargate.
    #[arg(long)]
    fargate: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Yaml)]
    format: PlanFormat,
}

/// The job `plan` uses when none is given.
fn sample_job() -> serde_json::Value {
    serde_json::json!({
        "id": 1,
        "token": "glcbt-sample-not-a-token",
        "job_info": {"name": "sample", "stage": "test", "project_id": 1, "project_name": "project", "project_full_path": "group/project", "namespace_id": 1, "root_namespace_id": 1},
        "git_info": {"repo_url": "https://gitlab.example.com/group/project.git", "ref": "main", "sha": "0123456789abcdef0123456789abcdef01234567", "before_sha": "0000000000000000000000000000000000000000", "ref_type": "branch", "depth": 20},
        "runner_info": {"timeout": 3600},
        "variables": [{"key": "CI_PROJECT_NAME", "value": "project", "public": true}, {"key": "CI_JOB_URL", "value": "https://gitlab.example.com/group/project/-/jobs/1", "public": true}],
        "steps": [{"name": "script", "script": ["echo hello"], "when": "on_success"}],
        "image": {"name": "alpine:3.20"},
        "services": [],
        "features": {"trace_sections": true}
    })
}

/// Runs `plan`: exit 0, 1 when the configuration or a plan is refused, 2 for usage.
pub(crate) fn run(args: &PlanArgs) -> ExitCode {
    match plan_all(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn plan_all(args: &PlanArgs) -> anyhow::Result<String> {
    let (_, loaded) = crate::commands::config_check::load(&args.source);
    let loaded = loaded?;
    let mut job = match &args.job {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        )
        .map_err(|e| anyhow::anyhow!("{} is not a job payload: {e}", path.display()))?,
        None => sample_job(),
    };
    for entry in &args.vars {
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--var {entry:?} is not KEY=VALUE"))?;
        if let Some(variables) = job.get_mut("variables").and_then(|v| v.as_array_mut()) {
            variables.push(serde_json::json!({"key": key, "value": value, "public": true}));
        }
    }
    let payload = JobPayload::from_value(job)
        .map_err(|e| anyhow::anyhow!("the job payload is not valid: {e}"))?;
    let mut plans = Vec::new();
    for (index, runner) in loaded.config.runners.iter().enumerate() {
        if runner.executor != Some(Executor::Kubernetes) {
            continue;
        }
        let short = podrunner_manager::short_token(runner.token.as_deref().unwrap_or(""));
        let context = PlanContext {
            system_id: "s_000000000000",
            init_image: &args.init_image,
            runner_short_token: &short,
        };
        let planned = plan(runner, &payload, &context)
            .map_err(|e| anyhow::anyhow!("runners[{index}]: {e}"))?;
        for warning in &planned.warnings {
            eprintln!("warning: runners[{index}]: {warning}");
        }
        let declared = runner.kubernetes.as_ref().and_then(|k| k.fargate.as_ref());
        if let Some(warning) =
            podrunner_kube::fargate::unmatched_profile_warning(&planned.pod, declared)
        {
            eprintln!("warning: runners[{index}]: {warning}");
        }
        let fargate = podrunner_kube::fargate::predict(&planned.pod, declared, args.fargate);
        plans.push((
            runner
                .name
                .clone()
                .unwrap_or_else(|| format!("runners[{index}]")),
            planned.pod,
            fargate,
        ));
    }
    if plans.is_empty() {
        anyhow::bail!("no runner uses the kubernetes executor");
    }
    Ok(match args.format {
        PlanFormat::Json => {
            let runners: Vec<_> = plans.iter().map(|(name, pod, fargate)| {
                let security = podrunner_kube::pod_security::level_of(pod);
                serde_json::json!({"name": name, "pod": pod, "fargate": fargate,
                                   "pod_security": {"level": security.level, "blockers": security.blockers}})
            }).collect();
            format!(
                "{}\n",
                serde_json::to_string_pretty(&serde_json::json!({"runners": runners}))?
            )
        }
        PlanFormat::Yaml => {
            let mut out = String::new();
            for (name, pod, fargate) in &plans {
                out.push_str(&format!("# runner: {name}\n"));
                let security = podrunner_kube::pod_security::level_of(pod);
                out.push_str(&format!("# pod security: meets {}\n", security.level));
                for blocker in &security.blockers {
                    out.push_str(&format!(
                        "# pod security: a stricter level refuses: {blocker}\n"
                    ));
                }
                match fargate {
                    Some(f) => {
                        let profile = f.profile.as_deref().map(|p| format!("profile {p}")).unwrap_or_else(|| "assumed".to_owned());
                        out.push_str(&format!(
                            "# fargate ({profile}): requests {} vCPU / {:.2} GB -> {}vCPU {}GB, ${:.4}/h (${:.5}/min), paying for {:.2} vCPU / {:.2} GB unrequested\n",
                            f.requested_vcpu, f.requested_memory_gb, f.vcpu, f.memory_gb, f.usd_per_hour, f.usd_per_minute, f.waste_vcpu, f.waste_memory_gb
                        ));
                        for line in f.problems.iter().map(|p| format!("problem: {p}")).chain(f.warnings.iter().map(|w| format!("warning: {w}"))) {
                            out.push_str(&format!("# fargate {line}\n"));
                        }
                    }
                    None => out.push_str("# fargate: this pod would not run on Fargate (no declared profile selects it; --fargate assumes it does)\n"),
                }
                out.push_str(&format!("---\n{}", serde_yaml_ng::to_string(pod)?));
            }
            out
        }
    })
}

/// Copies this binary to `<dir>/podrunner`, executable by everyone.
pub(crate) fn install_agent(dir: &Path) -> ExitCode {
    use std::os::unix::fs::PermissionsExt;
    let result = std::env::current_exe().and_then(|me| {
        std::fs::create_dir_all(dir)?;
        let target = dir.join("podrunner");
        std::fs::copy(&me, &target)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: cannot install the agent into {}: {e}",
                dir.display()
            );
            ExitCode::from(1)
        }
    }
}
