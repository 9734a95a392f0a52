//! `--list`: the jobs of the pipeline with their stage, `when`, `allow_failure` and `needs`,
//! one per line, in stage order (the columns gitlab-ci-local's `--list` shows).

use crate::model::{AllowFailure, Pipeline, When};

/// The table `--list` prints.
pub fn list(pipeline: &Pipeline) -> String {
    let rows: Vec<[String; 5]> = pipeline
        .jobs
        .iter()
        .map(|job| {
            let when = match &job.when {
                When::OnSuccess => "on_success".to_owned(),
                When::OnFailure => "on_failure".to_owned(),
                When::Always => "always".to_owned(),
                When::Manual => "manual".to_owned(),
                When::Delayed { start_in } => format!("delayed ({start_in})"),
            };
            let allow = match &job.allow_failure {
                AllowFailure::No => "false".to_owned(),
                AllowFailure::Yes => "true".to_owned(),
                AllowFailure::ExitCodes(codes) => format!(
                    "exit codes {}",
                    codes
                        .iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            let needs = match &job.needs {
                None => String::new(),
                Some(needs) => format!(
                    "[{}]",
                    needs
                        .iter()
                        .map(|n| n.job.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            [job.name.clone(), job.stage.clone(), when, allow, needs]
        })
        .collect();
    let header = ["name", "stage", "when", "allow_failure", "needs"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
