//! Runs one child process of a stage in its own process group, streams its output into the
//! trace, and stops it (the whole group) when the job must stop.
//!
//! One log writer, one masker: the child's stdout and stderr are the write end of one pipe,
//! as gitlab-runner's shell executor gives them (`c.Stdout = s.Trace; c.Stderr = s.Trace` in
//! `executors/shell/executor_shell.go` of `gitlabhq/gitlab-runner`; Go's `os/exec` passes the
//! same writer as one pipe). So the bytes reach the trace in exactly the order the job wrote
//! them, whichever stream it wrote them to: a line written whole is never spliced with the
//! other stream, a byte written to stdout, then stderr, then stdout stays in that order, and a
//! secret written half to each stream is contiguous when it reaches the one masker. Only
//! what the job itself interleaves mid-line is interleaved, exactly as on a terminal.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use podrunner_gitlab::log::TraceWriter;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Without output for this long, held-back trace bytes are flushed.
const IDLE_FLUSH: Duration = Duration::from_millis(500);
/// After SIGTERM, the group gets this long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// After the process exits, output still in the pipes is read for at most this long
/// (background children may keep them open).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Why a process was stopped before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `Job-Status: canceling`.
    Canceled,
    /// `Job-Status: canceled`/`failed` or 403.
    Aborted,
    /// The job's timeout.
    JobTimeout,
    /// A stage timeout (`RUNNER_SCRIPT_TIMEOUT`, `RUNNER_AFTER_SCRIPT_TIMEOUT`).
    StageTimeout,
    /// The agent itself was told to stop (SIGTERM): `runner_interrupted`.
    Interrupted,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// It exited with this code (signals as 128 + n).
    Exited(i32),
    /// It was stopped.
    Stopped(StopReason),
    /// It could not be started.
    NotStarted(String),
}

/// Runs `command` to its end, or until `stop` resolves.
pub async fn run(
    mut command: tokio::process::Command,
    out: &mut TraceWriter,
    stop: impl std::future::Future<Output = StopReason>,
) -> ProcessOutcome {
    let pipe = std::io::pipe().and_then(|(reader, writer)| {
        let second = writer.try_clone()?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
        Ok((reader, writer, second))
    });
    let (mut reader, stdout, stderr) = match pipe {
        Ok(pipe) => pipe,
        Err(e) => return ProcessOutcome::NotStarted(format!("cannot create the output pipe: {e}")),
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(true);
    let spawned = command.spawn();
    // The command holds the pipe's write end: without dropping it the pipe never ends.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return ProcessOutcome::NotStarted(e.to_string()),
    };
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if sender.send(buffer[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::pin!(stop);
    let mut stopped: Option<StopReason> = None;
    let mut pipes_open = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            chunk = receiver.recv(), if pipes_open => match chunk {
                Some(bytes) => { let _ = out.write_bytes(&bytes); }
                None => pipes_open = false,
            },
            _ = tokio::time::sleep(IDLE_FLUSH), if pipes_open => { let _ = out.flush_all(); }
            reason = &mut stop, if stopped.is_none() => {
                stopped = Some(reason);
                if let Some(pid) = pid {
                    let _ = kill_process_group(pid, Signal::TERM);
                    let deadline = tokio::time::sleep(KILL_GRACE);
                    tokio::pin!(deadline);
                    let exited = loop {
                        tokio::select! {
                            status = child.wait() => break Some(status),
                            chunk = receiver.recv(), if pipes_open => match chunk {
                                Some(bytes) => { let _ = out.write_bytes(&bytes); }
                                None => pipes_open = false,
                            },
                            _ = &mut deadline => break None,
                        }
                    };
                    if let Some(status) = exited {
                        let _ = kill_process_group(pid, Signal::KILL);
                        break status;
                    }
                    let _ = kill_process_group(pid, Signal::KILL);
                }
                let _ = child.start_kill();
            }
        }
    };
    // Whatever is left in the pipes, for a bounded time.
    let drain = tokio::time::sleep(DRAIN_LIMIT);
    tokio::pin!(drain);
    while pipes_open {
        tokio::select! {
            chunk = receiver.recv() => match chunk {
                Some(bytes) => { let _ = out.write_bytes(&bytes); }
                None => pipes_open = false,
            },
            _ = &mut drain => break,
        }
    }
    if let Some(pid) = pid {
        // Background children of a finished stage do not outlive it.
        let _ = kill_process_group(pid, Signal::KILL);
    }
    let _ = out.flush_all();
    if let Some(reason) = stopped {
        return ProcessOutcome::Stopped(reason);
    }
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            ProcessOutcome::Exited(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            )
        }
        Err(e) => ProcessOutcome::NotStarted(e.to_string()),
    }
}
