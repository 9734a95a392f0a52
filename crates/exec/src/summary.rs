//! The table printed at the end of a run: job, stage, status, duration.

use crate::scheduler::Outcome;
use crate::status::JobStatus;

/// The status as the table shows it.
pub fn status_text(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Success => "passed",
        JobStatus::Failed { allowed: true } => "failed (allowed)",
        JobStatus::Failed { allowed: false } => "failed",
        JobStatus::Skipped => "skipped",
        JobStatus::Manual { .. } => "manual",
        JobStatus::Created | JobStatus::Pending | JobStatus::Running => "not run",
    }
}

/// The summary table, then the pipeline's result.
pub fn table(outcome: &Outcome) -> String {
    let rows: Vec<[String; 4]> = outcome
        .jobs
        .iter()
        .map(|j| {
            let duration = if j.duration.is_zero() {
                "-".to_owned()
            } else {
                format!("{:.1}s", j.duration.as_secs_f64())
            };
            let mut status = status_text(j.status).to_owned();
            if let (JobStatus::Failed { .. } | JobStatus::Created, Some(why)) =
                (j.status, &j.failure_reason)
            {
                status = format!("{status}: {why}");
            }
            [j.name.clone(), j.stage.clone(), status, duration]
        })
        .collect();
    let header = [
        "job".to_owned(),
        "stage".to_owned(),
        "status".to_owned(),
        "duration".to_owned(),
    ];
    let width = |column: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|r| r[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    let mut out = String::from("\n");
    for row in std::iter::once(&header).chain(&rows) {
        out.push_str(&format!(
            "  {:<w0$}  {:<w1$}  {:<8}  {}\n",
            row[0], row[1], row[3], row[2]
        ));
    }
    out.push_str(if outcome.passed {
        "\nPipeline passed\n"
    } else {
        "\nPipeline failed\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::JobSummary;
    use std::time::Duration;

    #[test]
    fn the_table_has_a_row_per_job() {
        let outcome = Outcome {
            jobs: vec![
                JobSummary {
                    name: "build".into(),
                    stage: "build".into(),
                    status: JobStatus::Success,
                    duration: Duration::from_millis(1500),
                    failure_reason: None,
                },
                JobSummary {
                    name: "a longer name".into(),
                    stage: "test".into(),
                    status: JobStatus::Failed { allowed: false },
                    duration: Duration::from_secs(2),
                    failure_reason: Some("script_failure".into()),
                },
                JobSummary {
                    name: "deploy".into(),
                    stage: "deploy".into(),
                    status: JobStatus::Skipped,
                    duration: Duration::ZERO,
                    failure_reason: Some("a job of an earlier stage failed".into()),
                },
            ],
            passed: false,
        };
        assert_eq!(
            table(&outcome),
            "\n  job            stage   duration  status\n  build          build   1.5s      passed\n  a longer name  test    2.0s      failed: script_failure\n  deploy         deploy  -         skipped\n\nPipeline failed\n"
        );
    }
}
