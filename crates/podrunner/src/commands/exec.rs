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
    /// Give every job the uncommitted changes too (tracked and untracked files that git does
    /// not ignore), not only the commit HEAD.
    #[arg(long)]
    working_tree: bool,
    /// Also run what the named jobs wait for (their `needs`, else the earlier stages), first.
    #[arg(long)]
    needs: bool,
    /// Run the jobs of this stage (with the named jobs, if any).
    #[arg(long, value_name = "STAGE")]
    stage: Option<String>,
    /// Play manual jobs: the named ones, or every one when no job follows (named jobs are
    /// always played).
    #[arg(long, value_name = "JOB", num_args = 0.., value_delimiter = ',')]
    manual: Option<Vec<String>>,
    /// How many jobs run at once [default: the number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
    /// Run jobs that have `services` without them (start what they need yourself).
    #[arg(long)]
    without_services: bool,
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

/// Runs the pipeline; exit 0 only when the pipeline would pass.
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
        selection: podrunner_exec::Selection {
            jobs: args.jobs.clone(),
            needs: args.needs,
            stage: args.stage.clone(),
            manual: args.manual.clone(),
            without_services: args.without_services,
        },
        variables,
        working_tree: args.working_tree,
        concurrency: args.concurrency.map(usize::from),
        artifacts_dir: args.artifacts_dir.clone(),
        agent_program: std::env::current_exe()
            .context("cannot find the podrunner binary to start the agent")?,
        color: std::io::stdout().is_terminal(),
    };
    let outcome = podrunner_exec::run(&options, Box::new(std::io::stdout())).await?;
    Ok(if outcome.passed {
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
        working_tree: args.working_tree,
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
