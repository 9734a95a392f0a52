//! A job's own connection to the API server, for gitlab-runner's `KUBERNETES_BEARER_TOKEN`
//! overwrite: gitlab-runner's `getKubeClientConfig` (`executors/kubernetes/util.go`) takes
//! the runner's connection settings (`host` with `ca_file`, else the pod's service account,
//! else the kubeconfig) and replaces their bearer token with the job's, and the executor makes
//! that job's calls with the client built from them.

use std::fmt;

/// The bearer token a job gave in `KUBERNETES_BEARER_TOKEN`, allowed by
/// `bearer_token_overwrite_allowed`. It is only ever handed to the job's Kubernetes client:
/// `Debug` hides it, and it has no `Display` and no serialisation.
#[derive(Clone, PartialEq, Eq)]
pub struct JobBearerToken(String);

impl JobBearerToken {
    /// The token `value`.
    pub fn new(value: impl Into<String>) -> Self {
        JobBearerToken(value.into())
    }
}

impl fmt::Debug for JobBearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobBearerToken(<redacted>)")
    }
}

/// Why a job's client could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a Kubernetes client with the job's KUBERNETES_BEARER_TOKEN: {0}")]
pub struct JobClientError(String);

/// The manager's connection settings with `token` as their only credential.
///
/// gitlab-runner sets client-go's `BearerToken` and leaves the rest. The other credentials are
/// dropped here rather than kept beside the token: the API server tries a client certificate
/// before a bearer token (`kubernetes/kubernetes`
/// `pkg/kubeapiserver/authenticator/config.go`, x509 ahead of the token authenticators), so a
/// kept `cert_file` would make the job's token meaningless; and the service account's
/// `token_file`, an exec plugin or an auth provider would replace it on refresh. The cluster,
/// its CA and the timeouts are the manager's.
pub fn job_config(base: &kube::Config, token: &JobBearerToken) -> kube::Config {
    let mut config = base.clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.0.clone().into()),
        ..Default::default()
    };
    config
}

/// A client for one job's calls, authenticated with the job's token (see [`job_config`]).
pub fn job_client(
    base: &kube::Config,
    token: &JobBearerToken,
) -> Result<kube::Client, JobClientError> {
    kube::Client::try_from(job_config(base, token)).map_err(|e| JobClientError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> kube::Config {
        let mut config = kube::Config::new("https://kubernetes.example:6443".parse().unwrap());
        config.auth_info = kube::config::AuthInfo {
            token_file: Some("/var/run/secrets/kubernetes.io/serviceaccount/token".into()),
            client_certificate: Some("/etc/podrunner/client.crt".into()),
            client_key: Some("/etc/podrunner/client.key".into()),
            ..Default::default()
        };
        config.default_namespace = "gitlab".into();
        config.read_timeout = Some(std::time::Duration::from_secs(30));
        config
    }

    #[test]
    fn the_token_is_the_only_credential_and_the_cluster_is_kept() {
        let config = job_config(&base(), &JobBearerToken::new("job-token"));
        assert_eq!(config.cluster_url, "https://kubernetes.example:6443");
        assert_eq!(config.default_namespace, "gitlab");
        assert_eq!(
            config.read_timeout,
            Some(std::time::Duration::from_secs(30))
        );
        let expected = kube::config::AuthInfo {
            token: Some("job-token".to_owned().into()),
            ..Default::default()
        };
        // `AuthInfo` has no `PartialEq`; its serialised form names every field that is set.
        assert_eq!(
            serde_json::to_value(&config.auth_info).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let token = JobBearerToken::new("sekrit-job-token");
        assert_eq!(format!("{token:?}"), "JobBearerToken(<redacted>)");
        let config = job_config(&base(), &token);
        assert!(!format!("{config:?}").contains("sekrit-job-token"));
    }
}
