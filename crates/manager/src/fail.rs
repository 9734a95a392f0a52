//! What the manager does when an agent could not report a job's end, for every executor:
//! the job's own client, the reason appended to its log, and the final `failed`.

use std::path::PathBuf;
use std::time::Duration;

use podrunner_gitlab::api::{FailureReason, JobState, UpdateJobRequest};
use podrunner_gitlab::client::PatchOutcome;
use podrunner_gitlab::{ClientOptions, GitlabClient, RunnerInfo, UpdateOutcome};

use podrunner_config::RunnerConfig;

use crate::JobContact;

/// A GitLab client for the requests of `runner`'s jobs, with its TLS settings.
pub fn job_client(runner: &RunnerConfig, version: &str) -> Option<GitlabClient> {
    GitlabClient::new(&ClientOptions {
        url: runner.url.clone().unwrap_or_default(),
        tls_ca_file: runner.tls_ca_file.clone().map(PathBuf::from),
        tls_cert_file: runner.tls_cert_file.clone().map(PathBuf::from),
        tls_key_file: runner.tls_key_file.clone().map(PathBuf::from),
        podrunner_version: version.to_owned(),
    })
    .ok()
}

/// Fails a job whose agent could not report: appends the reason to the trace and sends
/// `runner_system_failure`. `trace_end`: how many trace bytes GitLab has, when known. When it
/// is not (the agent died without a report), the first patch starts past any log the job
/// could have written (its output limit plus room for the limit message and the manager's
/// prelude) and GitLab's 416 tells where the log ends (GitLab appends only at the exact end).
/// A 200 to the final update is delivery, whatever its `Job-Status`.
pub async fn fail_job(
    job: &JobContact,
    info: &RunnerInfo,
    version: &str,
    reason: &str,
    trace_end: Option<u64>,
) -> bool {
    fail_job_as(
        job,
        info,
        version,
        reason,
        trace_end,
        FailureReason::RunnerSystemFailure,
    )
    .await
}

/// [`fail_job`] with `failure` as the failure reason (as GitLab supports it).
pub async fn fail_job_as(
    job: &JobContact,
    info: &RunnerInfo,
    version: &str,
    reason: &str,
    trace_end: Option<u64>,
    failure: FailureReason,
) -> bool {
    let Some(client) = job_client(&job.runner, version) else {
        return false;
    };
    let limit_kib = if job.runner.output_limit > 0 {
        job.runner.output_limit as u64
    } else {
        podrunner_config::DEFAULT_OUTPUT_LIMIT_KIB as u64
    };
    let mut offset = trace_end.unwrap_or(limit_kib * 1024 + 128 * 1024);
    let message = format!(
        "\n{}",
        podrunner_gitlab::log::error_line(&format!("Job failed (system failure): {reason}"))
    );
    for _ in 0..4 {
        match client
            .patch_trace(job.id, &job.token, offset, message.as_bytes(), false)
            .await
            .0
        {
            // The line itself, its answer lost (the job's writer is gone: only this one is left).
            PatchOutcome::RangeMismatch { offset: have }
                if have == offset + message.len() as u64 =>
            {
                break;
            }
            PatchOutcome::RangeMismatch { offset: have } => offset = have,
            _ => break,
        }
    }
    let request = UpdateJobRequest {
        info: info.clone(),
        token: job.token.clone(),
        state: JobState::Failed,
        failure_reason: Some(failure.for_gitlab(&job.failure_reasons)),
        checksum: None,
        output: None,
        exit_code: None,
    };
    for attempt in 0..5u32 {
        let (outcome, signals) = client.update_job(job.id, &request).await;
        if final_update_delivered(&outcome, signals.http_status) {
            return true;
        }
        match outcome {
            UpdateOutcome::Abort => return false,
            _ => tokio::time::sleep(Duration::from_secs(1 << attempt)).await,
        }
    }
    false
}

/// Whether GitLab applied a final update: a 200, even when its `Job-Status` is the `failed`
/// the update itself just set (`lib/api/ci/runner.rb` puts the job's new status on the
/// answer; gitlab-runner reads that as "abort", which for a final update means done).
fn final_update_delivered(outcome: &UpdateOutcome, http_status: Option<u16>) -> bool {
    match outcome {
        UpdateOutcome::Succeeded => true,
        UpdateOutcome::Abort => http_status == Some(200),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_200_is_delivery_even_with_job_status_failed() {
        assert!(final_update_delivered(&UpdateOutcome::Succeeded, Some(200)));
        assert!(final_update_delivered(&UpdateOutcome::Abort, Some(200)));
        assert!(!final_update_delivered(&UpdateOutcome::Abort, Some(403)));
        assert!(!final_update_delivered(&UpdateOutcome::Accepted, Some(202)));
    }
}
