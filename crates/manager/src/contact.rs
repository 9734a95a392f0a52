//! What the manager keeps of a job once its pod or process runs: enough to speak for it in
//! GitLab, not its payload.

use std::sync::Arc;

use podrunner_config::RunnerConfig;
use podrunner_gitlab::Secret;

use crate::AcceptedJob;

/// The runner a job came through, its ID and token, and the failure reasons its GitLab
/// accepts: what the manager needs to append to the job's log and send its final state
/// ([`crate::fail_job`]). A running job's follower keeps this instead of the
/// [`AcceptedJob`], whose payload (variables, steps, images) the agent has by then: a
/// manager follows many jobs at once (docs/benchmarks.md, scale).
#[derive(Debug, Clone)]
pub struct JobContact {
    /// The runner entry it came through.
    pub runner: Arc<RunnerConfig>,
    /// The job's ID.
    pub id: i64,
    /// The job's token.
    pub token: Secret,
    /// `features.failure_reasons` of the payload.
    pub failure_reasons: Vec<String>,
}

impl AcceptedJob {
    /// What the manager needs of this job to speak for it.
    pub fn contact(&self) -> JobContact {
        let job = &self.payload.job;
        JobContact {
            runner: self.runner.clone(),
            id: job.id,
            token: job.token.clone(),
            failure_reasons: job.features.failure_reasons.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podrunner_gitlab::JobPayload;

    #[test]
    fn a_contact_carries_the_jobs_id_token_and_failure_reasons_and_shows_no_token() {
        let payload = JobPayload::from_value(serde_json::json!({
            "id": 42, "token": "glcbt-secret-job-token",
            "features": {"failure_reasons": ["script_failure", "runner_system_failure"]},
        }))
        .unwrap();
        let job = AcceptedJob {
            runner: Arc::new(RunnerConfig::default()),
            payload,
            system_id: "s_0123456789ab".to_owned(),
            concurrent_id: 0,
        };
        let contact = job.contact();
        assert_eq!(contact.id, 42);
        assert_eq!(contact.token.expose(), "glcbt-secret-job-token");
        assert_eq!(
            contact.failure_reasons,
            ["script_failure", "runner_system_failure"]
        );
        assert!(!format!("{contact:?}").contains("glcbt-secret"));
    }
}
