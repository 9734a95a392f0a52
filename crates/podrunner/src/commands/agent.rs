//! `podrunner agent --spec FILE`: one job to its final state.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Arguments of `agent`.
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// The job spec written by the executor.
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
}

/// Runs the job; SIGTERM or SIGINT stop it as `runner_interrupted`. Exit 0 when GitLab
/// accepted the final state, 1 otherwise (the termination report says more).
pub(crate) async fn run(args: &AgentArgs) -> Result<ExitCode> {
    let interrupt = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let signals = {
        let interrupt = interrupt.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = int.recv() => {}
            }
            interrupt.cancel();
        })
    };
    let report = podrunner_agent::run_from_file(&args.spec, interrupt).await;
    signals.abort();
    let report = report?;
    Ok(if report.final_update_delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
