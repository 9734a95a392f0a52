//! Runs one child process of a stage in its own process group, streams its stdout and stderr
//! into the trace, and stops it (the whole group) when the job must stop.

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

/// The two trace streams of a stage.
pub struct Outputs<'a> {
    /// Standard output.
    pub stdout: &'a mut TraceWriter,
    /// Standard error.
    pub stderr: &'a mut TraceWriter,
}

impl Outputs<'_> {
    fn write(&mut self, is_stderr: bool, bytes: &[u8]) {
        let writer = if is_stderr {
            &mut *self.stderr
        } else {
            &mut *self.stdout
        };
        let _ = writer.write_bytes(bytes);
    }

    fn flush(&mut self) {
        let _ = self.stdout.flush_all();
        let _ = self.stderr.flush_all();
    }
}

/// Runs `command` to its end, or until `stop` resolves.
pub async fn run(
    mut command: tokio::process::Command,
    mut outputs: Outputs<'_>,
    stop: impl std::future::Future<Output = StopReason>,
) -> ProcessOutcome {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return ProcessOutcome::NotStarted(e.to_string()),
    };
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    let (sender, mut receiver) = mpsc::channel::<(bool, Vec<u8>)>(64);
    for (is_stderr, pipe) in [
        (false, child.stdout.take().map(Pipe::Out)),
        (true, child.stderr.take().map(Pipe::Err)),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                match pipe.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if sender
                            .send((is_stderr, buffer[..n].to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(sender);
    tokio::pin!(stop);
    let mut stopped: Option<StopReason> = None;
    let mut pipes_open = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            chunk = receiver.recv(), if pipes_open => match chunk {
                Some((is_stderr, bytes)) => outputs.write(is_stderr, &bytes),
                None => pipes_open = false,
            },
            _ = tokio::time::sleep(IDLE_FLUSH), if pipes_open => outputs.flush(),
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
                                Some((is_stderr, bytes)) => outputs.write(is_stderr, &bytes),
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
                Some((is_stderr, bytes)) => outputs.write(is_stderr, &bytes),
                None => pipes_open = false,
            },
            _ = &mut drain => break,
        }
    }
    if let Some(pid) = pid {
        // Background children of a finished stage do not outlive it.
        let _ = kill_process_group(pid, Signal::KILL);
    }
    outputs.flush();
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

enum Pipe {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

impl Pipe {
    async fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Pipe::Out(p) => p.read(buffer).await,
            Pipe::Err(p) => p.read(buffer).await,
        }
    }
}
