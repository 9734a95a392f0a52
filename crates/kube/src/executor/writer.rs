//! Whose credentials a job's own writes are made with: the manager's, or, with
//! `bearer_token_overwrite_allowed`, the job's `KUBERNETES_BEARER_TOKEN` as gitlab-runner does
//! (`getKubeClientConfig` in `executors/kubernetes/util.go`; [`crate::job_client`]).
//!
//! A job's writes are its Secrets (created, made owned by the pod, deleted), its Pod (created,
//! patched with the trace prelude, deleted) and its PodDisruptionBudget. What is shared by
//! every job stays the manager's: the namespace's one watch of pods and events (there is no
//! per-job watch, so a job's token is never used to watch), the Leases, a per-job namespace,
//! adoption's reads and the sweep of strays.

use super::{KubernetesExecutor, api_error};
use crate::job_client::{JobBearerToken, JobClientError, job_client};

/// The client of one job's writes.
#[derive(Clone)]
pub(crate) struct JobWriter {
    pub(crate) client: kube::Client,
    /// Made with the job's `KUBERNETES_BEARER_TOKEN`.
    job_token: bool,
}

impl JobWriter {
    /// What `error` of one of the job's writes says in its log: a 403 to the job's own token
    /// names it, since the manager's rights are not the ones that were missing.
    pub(crate) fn error(&self, error: &kube::Error) -> String {
        let text = api_error(error);
        match error {
            kube::Error::Api(status) if self.job_token && status.code == 403 => format!(
                "{text}: this call was made with the job's KUBERNETES_BEARER_TOKEN (bearer_token_overwrite_allowed is set), which lacks the right: give the token's account the rights the manager has in the job's namespace, or remove the variable"
            ),
            _ => text,
        }
    }
}

impl KubernetesExecutor {
    /// The writer of a job that brings `token` (none: the manager's own client).
    pub(super) fn writer(
        &self,
        token: Option<&JobBearerToken>,
    ) -> Result<JobWriter, JobClientError> {
        Ok(match token {
            None => self.own_writer(),
            Some(token) => JobWriter {
                client: job_client(&self.config, token)?,
                job_token: true,
            },
        })
    }

    /// The manager's own client as a job's writer.
    pub(super) fn own_writer(&self) -> JobWriter {
        JobWriter {
            client: self.client.clone(),
            job_token: false,
        }
    }
}
