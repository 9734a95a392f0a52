//! `podrunner register`, `verify` and `unregister`: the runner's record in GitLab and in
//! `config.toml`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, ValueEnum};
use podrunner_config::edit::{RunnerEntry, remove_runners, upsert_runner};
use podrunner_config::{Executor, ProcessEnvironment, RunnerConfig};
use podrunner_gitlab::api::RegisterRequest;
use podrunner_gitlab::client::COMPATIBLE_RUNNER_VERSION;
use podrunner_gitlab::{ClientError, ClientOptions, GitlabClient, RunnerInfo, Secret, system_id};

use crate::commands::config_check::default_config_path;

/// Executors `register` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExecutorArg {
    /// One pod per job.
    Kubernetes,
    /// A child process per job on this machine.
    Shell,
}

/// Arguments of `register`.
#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// config.toml to write [default: as gitlab-runner].
    #[arg(short = 'c', long = "config", env = "CONFIG_FILE", value_name = "PATH")]
    config: Option<PathBuf>,
    /// GitLab's URL.
    #[arg(long, env = "CI_SERVER_URL")]
    url: String,
    /// A runner authentication token (`glrt-…`) or a legacy registration token.
    #[arg(
        long,
        visible_alias = "registration-token",
        env = "CI_SERVER_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// The executor.
    #[arg(long, value_enum, default_value_t = ExecutorArg::Kubernetes)]
    executor: ExecutorArg,
    /// The runner's name (description) [default: the host name].
    #[arg(long, visible_alias = "description")]
    name: Option<String>,
    /// Legacy registration: comma-separated tags.
    #[arg(long, default_value = "")]
    tag_list: String,
    /// Legacy registration: run jobs without tags (default when there are no tags).
    #[arg(long)]
    run_untagged: bool,
    /// Legacy registration: lock the runner to its project.
    #[arg(long)]
    locked: bool,
    /// Legacy registration: `not_protected` or `ref_protected`.
    #[arg(long, default_value = "not_protected")]
    access_level: String,
    /// Legacy registration: longest job timeout in seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    maximum_timeout: i64,
    /// Legacy registration: register paused.
    #[arg(long)]
    paused: bool,
    /// CA bundle to trust for GitLab (written as tls-ca-file only when given).
    #[arg(long = "tls-ca-file", value_name = "PATH")]
    tls_ca_file: Option<PathBuf>,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// config.toml to read [default: as gitlab-runner].
    #[arg(short = 'c', long = "config", env = "CONFIG_FILE", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Remove runners whose token GitLab no longer accepts from config.toml.
    #[arg(long)]
    delete: bool,
}

/// Arguments of `unregister`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["name", "token", "all_runners"])))]
pub(crate) struct UnregisterArgs {
    /// config.toml to change [default: as gitlab-runner].
    #[arg(short = 'c', long = "config", env = "CONFIG_FILE", value_name = "PATH")]
    config: Option<PathBuf>,
    /// The runner with this name.
    #[arg(long)]
    name: Option<String>,
    /// The runner with this token.
    #[arg(long, hide_env_values = true)]
    token: Option<String>,
    /// Every runner of the file.
    #[arg(long)]
    all_runners: bool,
}

/// The token as logs may show it: its prefix and 8 characters.
pub(crate) fn short_token(token: &str) -> String {
    let (prefix, rest) = token
        .strip_prefix("glrt-")
        .map_or(("", token), |rest| ("glrt-", rest));
    format!("{prefix}{}…", rest.chars().take(8).collect::<String>())
}

/// What this build tells GitLab about itself: the agent's features.
pub(crate) fn runner_info(executor: &str) -> RunnerInfo {
    RunnerInfo::new(
        COMPATIBLE_RUNNER_VERSION,
        executor,
        podrunner_agent::agent_features(),
    )
}

fn client_for(
    url: &str,
    tls_ca_file: Option<&Path>,
    tls_cert_file: Option<&Path>,
    tls_key_file: Option<&Path>,
) -> Result<GitlabClient> {
    GitlabClient::new(&ClientOptions {
        url: url.to_owned(),
        tls_ca_file: tls_ca_file.map(Path::to_owned),
        tls_cert_file: tls_cert_file.map(Path::to_owned),
        tls_key_file: tls_key_file.map(Path::to_owned),
        podrunner_version: env!("CARGO_PKG_VERSION").to_owned(),
    })
    .map_err(anyhow::Error::from)
}

fn runner_client(runner: &RunnerConfig) -> Result<GitlabClient> {
    let url = runner
        .url
        .as_deref()
        .filter(|u| !u.is_empty())
        .context("the runner has no url")?;
    client_for(
        url,
        runner.tls_ca_file.as_deref().map(Path::new),
        runner.tls_cert_file.as_deref().map(Path::new),
        runner.tls_key_file.as_deref().map(Path::new),
    )
}

/// Writes `config.toml` through a private temporary file in the same directory (a unique
/// name created exclusively with mode 0600, so a stale file or a link planted under a fixed
/// name is never written through), then renames it over the target.
fn write_config(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir
        }
        None => Path::new("."),
    };
    // tempfile creates with O_CREAT|O_EXCL and mode 0600.
    let mut file = tempfile::Builder::new()
        .prefix(".config.toml.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.as_file().sync_all())
        .with_context(|| format!("cannot write {}", file.path().display()))?;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn now_rfc3339() -> String {
    let mut text = Vec::new();
    podrunner_gitlab::log::format_rfc3339_micros(std::time::SystemTime::now(), &mut text);
    let text = String::from_utf8_lossy(&text).into_owned();
    format!("{}Z", &text[..19])
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "podrunner".to_owned())
}

/// `podrunner register`.
pub(crate) async fn register(args: &RegisterArgs) -> Result<ExitCode> {
    let path = args.config.clone().unwrap_or_else(default_config_path);
    let system_id = system_id::load_or_create(&path)
        .with_context(|| format!("cannot keep the system ID beside {}", path.display()))?;
    let client = client_for(&args.url, args.tls_ca_file.as_deref(), None, None)?;
    let executor = match args.executor {
        ExecutorArg::Kubernetes => Executor::Kubernetes,
        ExecutorArg::Shell => Executor::Shell,
    };
    let token = Secret::new(args.token.trim());
    let credentials = if token.expose().starts_with("glrt-") {
        client
            .verify(&token, &system_id, &runner_info(executor.as_str()))
            .await
            .map_err(|e| explain(e, &args.url))?
    } else {
        let request = RegisterRequest {
            token: token.clone(),
            description: args.name.clone().unwrap_or_else(host_name),
            tag_list: args.tag_list.clone(),
            run_untagged: args.run_untagged || args.tag_list.trim().is_empty(),
            locked: args.locked,
            access_level: args.access_level.clone(),
            maximum_timeout: args.maximum_timeout,
            paused: args.paused,
            info: runner_info(""),
        };
        client
            .register(&request)
            .await
            .map_err(|e| explain(e, &args.url))?
    };
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let entry = RunnerEntry {
        name: Some(args.name.clone().unwrap_or_else(host_name)),
        url: args.url.clone(),
        id: credentials.id,
        token: credentials.token.expose().to_owned(),
        token_obtained_at: now_rfc3339(),
        token_expires_at: credentials
            .token_expires_at
            .clone()
            .filter(|t| !t.is_empty() && !t.starts_with("0001-01-01")),
        executor,
        tls_ca_file: args.tls_ca_file.as_ref().map(|p| p.display().to_string()),
    };
    let text = upsert_runner(existing.as_deref(), &entry)
        .with_context(|| format!("cannot update {}", path.display()))?;
    write_config(&path, &text)?;
    println!(
        "Runner registered: {} (id {}, token {}), executor {}; configuration in {}",
        args.url,
        credentials.id,
        short_token(&entry.token),
        executor,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Turns a client error into a message with the fix.
fn explain(error: ClientError, url: &str) -> anyhow::Error {
    match error {
        ClientError::Forbidden => anyhow::anyhow!(
            "GitLab at {url} refused the token (403): check that it is a current runner authentication token (glrt-…) or registration token"
        ),
        ClientError::Transport(e) => anyhow::anyhow!("cannot reach GitLab at {url}: {e}"),
        other => other.into(),
    }
}

/// `podrunner verify`.
pub(crate) async fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    let path = args.config.clone().unwrap_or_else(default_config_path);
    let loaded = podrunner_config::load_file(&path, &ProcessEnvironment)?;
    let system_id = system_id::load_or_create(&path)
        .with_context(|| format!("cannot keep the system ID beside {}", path.display()))?;
    let mut removed_tokens = Vec::new();
    let mut all_valid = true;
    for (index, runner) in loaded.config.runners.iter().enumerate() {
        let label = runner.name.clone().unwrap_or_else(|| format!("#{index}"));
        let Some(token) = runner.token.as_deref().filter(|t| !t.is_empty()) else {
            println!("Verifying runner {label}... has no token");
            all_valid = false;
            continue;
        };
        let client = runner_client(runner)?;
        let executor = runner.executor.map(|e| e.as_str()).unwrap_or("");
        match client
            .verify(&Secret::new(token), &system_id, &runner_info(executor))
            .await
        {
            Ok(_) => println!(
                "Verifying runner {label} ({})... is valid",
                short_token(token)
            ),
            Err(ClientError::Forbidden) => {
                println!(
                    "Verifying runner {label} ({})... is removed",
                    short_token(token)
                );
                removed_tokens.push(token.to_owned());
                all_valid = false;
            }
            Err(e) => {
                println!(
                    "Verifying runner {label} ({})... failed: {e}",
                    short_token(token)
                );
                all_valid = false;
            }
        }
    }
    if args.delete && !removed_tokens.is_empty() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let (text, removed) = remove_runners(&text, |_, token| {
            token.is_some_and(|t| removed_tokens.iter().any(|r| r == t))
        })?;
        write_config(&path, &text)?;
        println!("Removed from {}: {}", path.display(), removed.join(", "));
        return Ok(ExitCode::SUCCESS);
    }
    Ok(if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `podrunner unregister`.
pub(crate) async fn unregister(args: &UnregisterArgs) -> Result<ExitCode> {
    let path = args.config.clone().unwrap_or_else(default_config_path);
    let loaded = podrunner_config::load_file(&path, &ProcessEnvironment)?;
    let system_id = system_id::load_or_create(&path)
        .with_context(|| format!("cannot keep the system ID beside {}", path.display()))?;
    let selected: Vec<&RunnerConfig> = loaded
        .config
        .runners
        .iter()
        .filter(|r| {
            args.all_runners
                || (args.name.is_some() && r.name == args.name)
                || (args.token.is_some() && r.token.as_deref() == args.token.as_deref())
        })
        .collect();
    if selected.is_empty() {
        bail!(
            "no runner in {} matches; see `podrunner config check -c {}`",
            path.display(),
            path.display()
        );
    }
    let mut done = Vec::new();
    let mut failed = false;
    for runner in selected {
        let token = runner.token.clone().unwrap_or_default();
        let label = runner.name.clone().unwrap_or_else(|| short_token(&token));
        match runner_client(runner)?
            .unregister(&Secret::new(token.as_str()), &system_id)
            .await
        {
            Ok(()) => println!("Unregistered runner {label}"),
            Err(ClientError::Forbidden) => println!("Runner {label} was already removed in GitLab"),
            Err(e) => {
                eprintln!(
                    "error: cannot unregister runner {label}: {e}; it stays in {}",
                    path.display()
                );
                failed = true;
                continue;
            }
        }
        done.push(token);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (text, _) = remove_runners(&text, |_, token| {
        token.is_some_and(|t| done.iter().any(|d| d == t))
    })?;
    write_config(&path, &text)?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
