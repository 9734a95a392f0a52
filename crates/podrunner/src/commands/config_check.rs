//! `podrunner config check`: validate a configuration and summarize it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use podrunner_config::{
    ConfigError, ConfigSummary, Diagnostic, HelmOptions, LoadedConfig, ProcessEnvironment,
};
use serde::Serialize;

use crate::ConfigSource;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// For people.
    Text,
    /// One JSON document.
    Json,
}

/// Arguments of `config check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    valid: bool,
    errors: &'a [Diagnostic],
    #[serde(flatten)]
    summary: Option<&'a ConfigSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a [Diagnostic]>,
}

/// Loads the configuration the way every subcommand does.
pub(crate) fn load(source: &ConfigSource) -> (String, Result<LoadedConfig, ConfigError>) {
    let env = ProcessEnvironment;
    if let Some(values) = &source.values {
        let options = HelmOptions {
            release_name: source.release_name.clone(),
            release_namespace: source.release_namespace.clone(),
        };
        return (
            values.display().to_string(),
            podrunner_config::load_helm_values_file(values, &env, &options),
        );
    }
    let path = source.config.clone().unwrap_or_else(default_config_path);
    (
        path.display().to_string(),
        podrunner_config::load_file(&path, &env),
    )
}

/// gitlab-runner's default `config.toml` for the current user.
pub(crate) fn default_config_path() -> PathBuf {
    let is_root = rustix::process::geteuid().is_root();
    podrunner_config::default_config_path(is_root, std::env::var_os("HOME").map(PathBuf::from))
}

/// Runs `config check`.
pub(crate) fn run(args: &CheckArgs) -> ExitCode {
    let (name, result) = load(&args.source);
    let mut stdout = std::io::stdout().lock();
    let (code, output) = match (&result, args.format) {
        (Ok(loaded), Format::Text) => (0, ConfigSummary::new(&name, loaded).to_string()),
        (Ok(loaded), Format::Json) => {
            let summary = ConfigSummary::new(&name, loaded);
            (
                0,
                json(&JsonReport {
                    valid: true,
                    errors: &[],
                    summary: Some(&summary),
                    warnings: None,
                }),
            )
        }
        (Err(error), Format::Text) => {
            let mut text = String::new();
            for warning in error.warnings() {
                text.push_str(&format!("warning: {warning}\n"));
            }
            for line in error.to_string().lines() {
                text.push_str(&format!("error: {line}\n"));
            }
            text.push_str(&format!("{name}: invalid\n"));
            // Errors go to stderr so scripts can keep stdout for summaries.
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
            return ExitCode::from(1);
        }
        (Err(error), Format::Json) => {
            let errors = match error {
                ConfigError::Invalid { errors, .. } => errors.clone(),
                ConfigError::Read { .. } => vec![Diagnostic::error(None, None, error.to_string())],
            };
            (
                1,
                json(&JsonReport {
                    valid: false,
                    errors: &errors,
                    summary: None,
                    warnings: Some(error.warnings()),
                }),
            )
        }
    };
    if stdout
        .write_all(output.as_bytes())
        .and_then(|_| stdout.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    ExitCode::from(code)
}

fn json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| format!("{{\"valid\": false, \"errors\": [{:?}]}}", e.to_string()));
    text.push('\n');
    text
}
