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

/// Set in the environment of the agent that a PID 1 agent starts, so it does not do it again.
const INIT_CHILD: &str = "PODRUNNER_AGENT_UNDER_INIT";

/// Whether this process must act as init (PID 1 of a container) for the agent.
pub(crate) fn must_be_init() -> bool {
    rustix::process::getpid().is_init() && std::env::var_os(INIT_CHILD).is_none()
}

/// PID 1 duties, tini-style: start the real agent as a child, reap every process that ends up
/// orphaned here, forward SIGTERM/SIGINT/SIGQUIT to the agent, and exit with its status.
pub(crate) fn init(args: &AgentArgs) -> ExitCode {
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, wait};
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(e) => {
            eprintln!("error: cannot find the podrunner binary: {e}");
            return ExitCode::from(1);
        }
    };
    let child = match std::process::Command::new(program)
        .arg("agent")
        .arg("--spec")
        .arg(&args.spec)
        .env(INIT_CHILD, "1")
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("error: cannot start the agent: {e}");
            return ExitCode::from(1);
        }
    };
    let agent = Pid::from_child(&child);
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::quit()),
            ) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = quit.recv() => {}
                }
                let _ = kill_process(agent, Signal::TERM);
            }
        });
    });
    loop {
        match wait(WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid == agent => {
                let code = status
                    .exit_status()
                    .unwrap_or_else(|| 128 + status.terminating_signal().unwrap_or(0));
                return ExitCode::from(u8::try_from(code).unwrap_or(1));
            }
            // An orphan reparented to PID 1: reaped, nothing else to do.
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return ExitCode::from(1),
        }
    }
}
