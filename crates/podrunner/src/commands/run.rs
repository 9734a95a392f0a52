//! `podrunner run`: the manager.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use podrunner_config::{Executor as ExecutorKind, ProcessEnvironment};
use podrunner_manager::{Event, Executor, Manager, ManagerOptions, ShellExecutor, Shutdown};
use tokio::signal::unix::{SignalKind, signal};

use crate::commands::config_check::default_config_path;
use crate::commands::register::runner_info;

/// Arguments of `run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// config.toml [default: as gitlab-runner].
    #[arg(short = 'c', long = "config", env = "CONFIG_FILE", value_name = "PATH")]
    config: Option<PathBuf>,
}

/// Loads the configuration, then requests and runs jobs until a signal.
pub(crate) async fn run(args: &RunArgs) -> Result<ExitCode> {
    let path = args.config.clone().unwrap_or_else(default_config_path);
    let loaded = podrunner_config::load_file(&path, &ProcessEnvironment)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let config = loaded.config;
    if config.runners.is_empty() {
        bail!(
            "{} has no [[runners]] entry: run `podrunner register` first",
            path.display()
        );
    }
    let system_id = podrunner_gitlab::system_id::load_or_create(&path)
        .with_context(|| format!("cannot keep the system ID beside {}", path.display()))?;
    let agent_program =
        std::env::current_exe().context("cannot find the podrunner binary to start agents")?;
    let work_dir = tempfile::Builder::new()
        .prefix("podrunner-")
        .tempdir()
        .context("cannot create a private work directory")?;
    let mut executors: Vec<Arc<dyn Executor>> = Vec::new();
    for (index, runner) in config.runners.iter().enumerate() {
        if runner.token.as_deref().unwrap_or("").is_empty() {
            bail!(
                "runners[{index}] in {} has no token: run `podrunner register`",
                path.display()
            );
        }
        match runner.executor {
            Some(ExecutorKind::Shell) => executors.push(Arc::new(ShellExecutor {
                agent_program: agent_program.clone(),
                work_dir: work_dir.path().to_owned(),
                podrunner_version: env!("CARGO_PKG_VERSION").to_owned(),
                info: runner_info("shell"),
            })),
            Some(ExecutorKind::Kubernetes) => bail!(
                "runners[{index}] in {} uses the kubernetes executor, which this build of podrunner does not have yet; use executor = \"shell\"",
                path.display()
            ),
            None => bail!("runners[{index}] in {} has no executor", path.display()),
        }
    }
    let server = match config.listen_address.as_deref() {
        Some(address) => {
            let bind = podrunner_manager::bind_address(address);
            let listener = tokio::net::TcpListener::bind(&bind)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {bind} (listen_address in {})",
                        path.display()
                    )
                })?;
            Some(tokio::spawn(podrunner_manager::serve_metrics(listener)))
        }
        None => None,
    };
    let shutdown = Shutdown::default();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    let manager = Manager::new(
        config,
        ManagerOptions {
            system_id,
            executors,
            podrunner_version: env!("CARGO_PKG_VERSION").to_owned(),
            info: Arc::new(runner_info),
        },
    );
    let all_finished = manager.run(shutdown).await;
    signals.abort();
    if let Some(server) = server {
        server.abort();
    }
    Ok(if all_finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// SIGQUIT: graceful; SIGTERM/SIGINT, or any second signal: forceful.
async fn watch_signals(shutdown: Shutdown) {
    let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::quit()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    loop {
        let forceful = tokio::select! {
            _ = quit.recv() => shutdown.graceful.is_cancelled(),
            _ = term.recv() => true,
            _ = int.recv() => true,
        };
        if forceful {
            Event::ShuttingDown { mode: "forceful" }.emit();
            shutdown.graceful.cancel();
            shutdown.forceful.cancel();
            return;
        }
        Event::ShuttingDown { mode: "graceful" }.emit();
        shutdown.graceful.cancel();
    }
}
