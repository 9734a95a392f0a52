//! `podrunner run`: the manager.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use podrunner_config::{Executor as ExecutorKind, LogFormat, LogLevel};
use podrunner_manager::{Event, Executor, Manager, ManagerOptions, ShellExecutor, Shutdown};
use tokio::signal::unix::{SignalKind, signal};

use crate::commands::register::runner_info;

/// Arguments of `run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    source: crate::ConfigSource,
    /// Token for runners whose entry has none: a runner authentication token (verified at
    /// start) or a legacy registration token (registered at start). Kept in memory only.
    #[arg(
        long,
        env = "CI_SERVER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding that token (a mounted Secret).
    #[arg(long, env = "RUNNER_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// GitLab's URL for runners whose entry has none.
    #[arg(long, env = "CI_SERVER_URL")]
    url: Option<String>,
    /// The image job pods install the agent from (the chart sets it to the runner's own image).
    #[arg(long, env = "PODRUNNER_INIT_IMAGE", default_value = concat!("podrunner:", env!("CARGO_PKG_VERSION")), value_name = "IMAGE")]
    init_image: String,
    /// This manager's system ID (`s_` or `r_` and 12 letters or digits) instead of the one kept
    /// beside the configuration (or derived from --pod-uid).
    #[arg(long, env = "PODRUNNER_SYSTEM_ID", value_name = "ID", value_parser = parse_system_id)]
    system_id: Option<String>,
    /// The UID of the pod this manager runs in (the chart passes `metadata.uid`): the system
    /// ID is derived from it, so every replica is its own runner manager in GitLab, with one
    /// ID for the life of its pod (container restarts included).
    #[arg(long, env = "PODRUNNER_POD_UID", value_name = "UID")]
    pod_uid: Option<String>,
    /// How long this manager's Lease on its job pods lasts without renewal, in seconds; it is
    /// renewed every quarter of that. Another manager takes the job pods over only once the
    /// Lease expired.
    #[arg(long, env = "PODRUNNER_LEASE_DURATION", value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_duration: u64,
    /// The manager's log level, over `log_level` of the configuration: debug, info, warn,
    /// error (fatal and panic log errors only).
    #[arg(long, env = "LOG_LEVEL", value_name = "LEVEL", value_parser = parse_log_level)]
    log_level: Option<LogLevel>,
    /// The manager's log format, over `log_format` of the configuration: runner, text, json.
    #[arg(long, env = "LOG_FORMAT", value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
}

fn parse_log_level(text: &str) -> Result<LogLevel, String> {
    text.parse()
        .map_err(|e: podrunner_config::UnknownValue| e.to_string())
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    text.parse()
        .map_err(|e: podrunner_config::UnknownValue| e.to_string())
}

fn parse_system_id(text: &str) -> Result<String, String> {
    if podrunner_gitlab::system_id::is_valid(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a system ID: it is `s_` or `r_` followed by 12 letters or digits, e.g. s_0123456789ab"
        ))
    }
}

/// Loads the configuration, then requests and runs jobs until a signal.
pub(crate) async fn run(args: &RunArgs) -> Result<ExitCode> {
    let (name, loaded) = crate::commands::config_check::load(&args.source);
    let loaded = loaded?;
    let path = PathBuf::from(name);
    podrunner_manager::init_logging(
        args.log_level.unwrap_or(loaded.config.log_level),
        args.log_format.unwrap_or(loaded.config.log_format),
    );
    for warning in &loaded.warnings {
        Event::ConfigWarning {
            warning: warning.to_string(),
        }
        .emit();
    }
    for setting in &loaded.not_honoured {
        Event::ConfigWarning {
            warning: format!("{}: {setting}", podrunner_config::honoured::HEADING),
        }
        .emit();
    }
    let mut config = loaded.config;
    if config.runners.is_empty() {
        bail!(
            "{} has no [[runners]] entry: run `podrunner register` first",
            path.display()
        );
    }
    // The config may sit on a read-only mount (a ConfigMap): then the ID lives in /tmp.
    let pod_uid = args.pod_uid.as_deref().filter(|uid| !uid.trim().is_empty());
    let system_id = match (&args.system_id, pod_uid) {
        (Some(id), _) => Ok(id.clone()),
        (None, Some(uid)) => Ok(podrunner_gitlab::system_id::from_pod_uid(uid)),
        (None, None) => podrunner_gitlab::system_id::load_or_create(&path),
    }
    .or_else(|_| {
        podrunner_gitlab::system_id::load_or_create(
            &std::env::temp_dir().join("podrunner").join("config.toml"),
        )
    })
    .with_context(|| {
        format!(
            "cannot keep the system ID beside {} (nor in the temporary directory)",
            path.display()
        )
    })?;
    // The health endpoint answers while the runners get their tokens; /readyz waits.
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
    let given_token = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(token.trim().to_owned()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());
    for (index, runner) in config.runners.iter_mut().enumerate() {
        if runner.url.as_deref().unwrap_or("").is_empty() {
            runner.url = args.url.clone();
        }
        if runner.token.as_deref().unwrap_or("").is_empty()
            && let Some(token) = &given_token
        {
            let url = runner.url.clone().with_context(|| {
                format!(
                    "runners[{index}] has no url: set it in {} or pass --url / CI_SERVER_URL",
                    path.display()
                )
            })?;
            let executor = runner.executor.map(|e| e.as_str()).unwrap_or("shell");
            runner.token = Some(
                obtain_token(&url, token, &system_id, executor, runner.name.as_deref())
                    .await?
                    .into(),
            );
        }
    }
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
                "runners[{index}] in {} has no token: run `podrunner register`, or give one with --token / CI_SERVER_TOKEN / --token-file",
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
            Some(ExecutorKind::Kubernetes) => {
                let connection = podrunner_kube::connect(runner)
                    .await
                    .with_context(|| format!("runners[{index}] in {}", path.display()))?;
                let executor = Arc::new(
                    podrunner_kube::KubernetesExecutor::new(
                        connection,
                        args.init_image.clone(),
                        env!("CARGO_PKG_VERSION").to_owned(),
                        runner_info("kubernetes"),
                        system_id.clone(),
                    )
                    .with_lease_settings(
                        podrunner_kube::lease::LeaseSettings {
                            duration: std::time::Duration::from_secs(args.lease_duration),
                        },
                    ),
                );
                // The manager resumes the jobs whose pods an earlier run left behind.
                executors.push(executor);
            }
            None => bail!("runners[{index}] in {} has no executor", path.display()),
        }
    }
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

/// Verifies a runner authentication token, or registers with a legacy registration token,
/// retrying with back-off (1 s doubling to 60 s) while GitLab cannot be reached. A refused
/// token is final.
async fn obtain_token(
    url: &str,
    token: &str,
    system_id: &str,
    executor: &str,
    name: Option<&str>,
) -> Result<String> {
    use podrunner_gitlab::api::RegisterRequest;
    use podrunner_gitlab::{ClientError, ClientOptions, GitlabClient, Secret};
    let client = GitlabClient::new(&ClientOptions {
        url: url.to_owned(),
        podrunner_version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    })?;
    let secret = Secret::new(token);
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        let result = if token.starts_with("glrt-") {
            client
                .verify(&secret, system_id, &runner_info(executor))
                .await
                .map(|_| token.to_owned())
        } else {
            let request = RegisterRequest {
                token: secret.clone(),
                description: name.unwrap_or("podrunner").to_owned(),
                tag_list: String::new(),
                run_untagged: true,
                locked: false,
                access_level: "not_protected".to_owned(),
                maximum_timeout: 0,
                paused: false,
                info: runner_info(""),
            };
            client
                .register(&request)
                .await
                .map(|c| c.token.expose().to_owned())
        };
        match result {
            Ok(token) => return Ok(token),
            Err(ClientError::Forbidden) => bail!(
                "GitLab at {url} refused the runner token (403): give a current runner authentication token (glrt-…)"
            ),
            Err(error) => {
                Event::TokenCheckRetry {
                    url: url.to_owned(),
                    error: error.to_string(),
                    retry_in: wait,
                }
                .emit();
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            }
        }
    }
}
