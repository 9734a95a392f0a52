//! `podrunner`: a GitLab Runner whose Kubernetes executor runs every CI job in its own pod.

mod allocator;
mod commands;
mod heap_profile;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A GitLab Runner that runs every CI job in its own Kubernetes pod, built for EKS on Fargate.
#[derive(Debug, Parser)]
#[command(name = "podrunner", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with the configuration (gitlab-runner's config.toml, or Helm values).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Register this runner with GitLab and write it into config.toml.
    Register(commands::register::RegisterArgs),
    /// Check every runner's token with GitLab.
    Verify(commands::register::VerifyArgs),
    /// Remove runners from GitLab and from config.toml.
    Unregister(commands::register::UnregisterArgs),
    /// Request jobs from GitLab and run them (SIGQUIT: finish running jobs; SIGTERM/SIGINT:
    /// stop them within shutdown_timeout).
    Run(commands::run::RunArgs),
    /// Run jobs of a local .gitlab-ci.yml on this machine, without GitLab.
    Exec(commands::exec::ExecArgs),
    /// Print, for each kubernetes runner, the job Pod exactly as the executor creates it.
    Plan(commands::plan::PlanArgs),
    /// Ask the manager to finish its running jobs and stop (SIGQUIT), and wait until it has:
    /// the preStop hook of the runner's pod.
    Drain {
        /// The manager's process ID (PID 1 in its container).
        #[arg(long, default_value_t = 1)]
        pid: i32,
    },
    /// Copy this binary into DIR as DIR/podrunner (the job pod's init container runs this).
    InstallAgent {
        /// Target directory.
        dir: PathBuf,
    },
    /// Run one job from a spec file to its final state (started by executors, not by hand).
    Agent(commands::agent::AgentArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration and summarize each runner; exit 0 valid, 1 invalid, 2 usage.
    Check(commands::config_check::CheckArgs),
}

/// Where the configuration comes from; shared by every subcommand that reads it.
#[derive(Debug, Args)]
pub(crate) struct ConfigSource {
    /// gitlab-runner's config.toml [default: /etc/gitlab-runner/config.toml as root,
    /// else ~/.gitlab-runner/config.toml].
    #[arg(
        short = 'c',
        long = "config",
        env = "CONFIG_FILE",
        value_name = "PATH",
        conflicts_with = "values"
    )]
    pub config: Option<PathBuf>,
    /// Helm values of the GitLab Runner chart; `runners.config` holds the runner's TOML.
    #[arg(long = "values", value_name = "PATH")]
    pub values: Option<PathBuf>,
    /// `.Release.Namespace` when rendering `runners.config` from Helm values; also the job
    /// namespace when neither the TOML nor `runners.jobNamespace` names one.
    #[arg(
        long,
        value_name = "NAMESPACE",
        default_value = "default",
        requires = "values"
    )]
    pub release_namespace: String,
    /// `.Release.Name` when rendering `runners.config` from Helm values.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "podrunner",
        requires = "values"
    )]
    pub release_name: String,
}

fn main() -> ExitCode {
    #[allow(clippy::let_unit_value)]
    let _profiler = heap_profile::start();
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Check(args)) => commands::config_check::run(&args),
        Command::Register(args) => run_async(commands::register::register(&args)),
        Command::Verify(args) => run_async(commands::register::verify(&args)),
        Command::Unregister(args) => run_async(commands::register::unregister(&args)),
        Command::Agent(args) if commands::agent::must_be_init() => commands::agent::init(&args),
        Command::Agent(args) => run_async(commands::agent::run(&args)),
        Command::Run(args) => run_async(commands::run::run(&args)),
        Command::Exec(args) => run_async(commands::exec::run(&args)),
        Command::Plan(args) => commands::plan::run(&args),
        Command::InstallAgent { dir } => commands::plan::install_agent(&dir),
        Command::Drain { pid } => drain(pid),
    }
}

/// Runs a command on a single-threaded runtime; an error is printed with its causes.
fn run_async(command: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// SIGQUIT to `pid`, then wait for it to exit.
fn drain(pid: i32) -> ExitCode {
    use rustix::process::{Pid, Signal, kill_process, test_kill_process};
    let Some(target) = Pid::from_raw(pid) else {
        eprintln!("error: {pid} is not a process ID");
        return ExitCode::from(2);
    };
    if let Err(e) = kill_process(target, Signal::QUIT) {
        eprintln!("error: cannot signal process {pid}: {e}");
        return ExitCode::from(1);
    }
    while test_kill_process(target).is_ok() && !is_zombie(pid) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ExitCode::SUCCESS
}

/// Whether the process has exited but not been reaped yet.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}
