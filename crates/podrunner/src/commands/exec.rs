//! `podrunner exec`: a local pipeline without GitLab.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

/// Arguments of `exec`.
#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// Jobs to run, in stage order; none runs the whole pipeline.
    jobs: Vec<String>,
    /// The pipeline file; its directory is the project.
    #[arg(long, default_value = ".gitlab-ci.yml", value_name = "PATH")]
    file: PathBuf,
    /// A variable for every job, after the pipeline's own (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE")]
    vars: Vec<String>,
    /// Run in a clean checkout of the committed tree rather than the working tree.
    #[arg(long)]
    clean: bool,
    /// Where artifacts are kept for later jobs and runs [default: a private directory per
    /// project under $XDG_STATE_HOME/podrunner/exec or ~/.local/state/podrunner/exec].
    #[arg(long, value_name = "DIR")]
    artifacts_dir: Option<PathBuf>,
    /// List the jobs of the pipeline (stage, when, allow_failure, needs) and exit.
    #[arg(long, conflicts_with = "preview")]
    list: bool,
    /// Print the pipeline after include, extends and !reference, as YAML, and exit.
    #[arg(long)]
    preview: bool,
}

/// Runs the pipeline; exit 0 when every job that must succeed did.
pub(crate) async fn run(args: &ExecArgs) -> Result<ExitCode> {
    let mut variables = Vec::new();
    for entry in &args.vars {
        let Some((key, value)) = entry.split_once('=') else {
            bail!("--var {entry:?} is not KEY=VALUE");
        };
        variables.push((key.to_owned(), value.to_owned()));
    }
    if args.list || args.preview {
        return show(args, variables);
    }
    let options = podrunner_exec::ExecOptions {
        file: args.file.clone(),
        jobs: args.jobs.clone(),
        variables,
        clean: args.clean,
        artifacts_dir: args.artifacts_dir.clone(),
        agent_program: std::env::current_exe()
            .context("cannot find the podrunner binary to start the agent")?,
        color: std::io::stdout().is_terminal(),
    };
    let summaries = podrunner_exec::run(&options, Box::new(std::io::stdout())).await?;
    println!();
    let mut ok = true;
    for job in &summaries {
        let note = match (job.status.as_str(), job.allow_failure) {
            ("success", _) => "passed".to_owned(),
            ("skipped", _) => "skipped".to_owned(),
            (_, true) => format!(
                "failed, allowed ({})",
                job.failure_reason.as_deref().unwrap_or("failed")
            ),
            _ => {
                ok = false;
                format!(
                    "failed ({})",
                    job.failure_reason.as_deref().unwrap_or("failed")
                )
            }
        };
        println!("  {:<24} {note}", job.name);
    }
    if summaries.iter().any(|j| j.status == "skipped") {
        ok = false;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `--list` and `--preview`.
fn show(args: &ExecArgs, variables: Vec<(String, String)>) -> Result<ExitCode> {
    let options = podrunner_exec::pipeline::BuildOptions {
        file: args.file.clone(),
        variables,
        working_tree: !args.clean,
    };
    if args.preview {
        print!("{}", podrunner_exec::pipeline::preview(&options)?);
        return Ok(ExitCode::SUCCESS);
    }
    let pipeline = podrunner_exec::pipeline::build(&options)?;
    for warning in &pipeline.warnings {
        eprintln!("warning: {warning}");
    }
    print!("{}", podrunner_exec::pipeline::list(&pipeline));
    Ok(ExitCode::SUCCESS)
}
