//! The job pod's image pull credentials, as gitlab-runner resolves them
//! (`helpers/docker/auth/auth.go` `ResolveConfigs` in gitlabhq/gitlab-runner, used by the
//! Kubernetes executor's `setupCredentials`): sources in this order, the first to name a
//! registry wins it:
//!
//! 1. `DOCKER_AUTH_CONFIG`, the job's variable, else the runner's `environment` entry
//!    (gitlab-runner reads it from the build's variables, where job variables come after,
//!    and so win over, the runner's environment: `common/build.go` `GetDockerAuthConfig`);
//! 2. the job payload's `registry` credentials (the GitLab registry's job token).
//!
//! gitlab-runner also reads its own user's `~/.docker/config.json` between the two; podrunner's
//! manager runs from an empty image with no home, so it does not: put that file's `auths` in
//! `DOCKER_AUTH_CONFIG` of the runner's `environment`.
//!
//! Registry keys are normalized as gitlab-runner does: a scheme dropped, the host lowercased,
//! `index.docker.io` as `docker.io`, an image tag cut. `credsStore` and `credHelpers` would
//! run programs on the manager; podrunner does not run them, and says so.

use std::collections::BTreeMap;

use base64::Engine as _;
use podrunner_gitlab::payload::JobPayload;
use serde_json::{Map, Value, json};

/// What the pull Secret holds and what was left out.
#[derive(Debug, Default, PartialEq)]
pub struct RegistryAuth {
    /// `auths` of a `.dockerconfigjson`: registry → `{username, password, auth}` or the
    /// source's entry as written.
    pub auths: BTreeMap<String, Value>,
    /// Notes for the job log: sources that could not be read, helpers not run.
    pub notes: Vec<String>,
}

impl RegistryAuth {
    /// The `.dockerconfigjson` bytes; `None` when no source names a registry.
    pub fn docker_config_json(&self) -> Option<Vec<u8>> {
        if self.auths.is_empty() {
            return None;
        }
        let auths: Map<String, Value> = self.auths.clone().into_iter().collect();
        serde_json::to_vec(&json!({ "auths": auths })).ok()
    }
}

/// Resolves the credentials of `payload`'s pod from its sources (see the module doc).
/// `runner_environment` is the runner's `environment` (`KEY=VALUE` entries).
pub fn resolve(payload: &JobPayload, runner_environment: &[String]) -> RegistryAuth {
    let mut resolved = RegistryAuth::default();
    let variable = payload
        .job
        .variables
        .iter()
        .rev()
        .find(|v| v.key == "DOCKER_AUTH_CONFIG")
        .map(|v| v.value.clone())
        .or_else(|| {
            runner_environment
                .iter()
                .rev()
                .find_map(|e| e.strip_prefix("DOCKER_AUTH_CONFIG=").map(str::to_owned))
        });
    if let Some(text) = variable.filter(|t| !t.trim().is_empty()) {
        add_config(&mut resolved, "$DOCKER_AUTH_CONFIG", &text);
    }
    for credentials in payload
        .job
        .credentials
        .iter()
        .filter(|c| c.kind == "registry")
    {
        let password = credentials.password.expose();
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{password}", credentials.username));
        resolved
            .auths
            .entry(registry_key(&credentials.url))
            .or_insert_with(
                || json!({"username": credentials.username, "password": password, "auth": auth}),
            );
    }
    resolved
}

/// Adds a docker config's `auths` (or a legacy `.dockercfg` map of registries) that earlier
/// sources did not name.
fn add_config(resolved: &mut RegistryAuth, source: &str, text: &str) {
    let parsed: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => {
            resolved.notes.push(format!(
                "{source} is not valid JSON ({error}): its registry credentials are not used"
            ));
            return;
        }
    };
    let Some(object) = parsed.as_object() else {
        resolved.notes.push(format!(
            "{source} is not a JSON object: its registry credentials are not used"
        ));
        return;
    };
    for key in ["credsStore", "credHelpers"] {
        if object.contains_key(key) {
            resolved.notes.push(format!(
                "{source} names {key}: podrunner runs no credential helpers on the manager; put the registry's auth in \"auths\" instead"
            ));
        }
    }
    let entries = match object.get("auths") {
        Some(Value::Object(auths)) => auths.clone(),
        Some(_) => Map::new(),
        // The legacy .dockercfg format: the registries at the top level.
        None => object
            .iter()
            .filter(|(k, v)| v.is_object() && *k != "credHelpers")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    for (registry, entry) in entries {
        resolved
            .auths
            .entry(registry_key(&registry))
            .or_insert(entry);
    }
}

/// gitlab-runner's `convertToRegistryPath`: `https://Index.Docker.io/v1/` → `docker.io`,
/// `Registry.example.com:5000/group/image:tag` → `registry.example.com:5000/group/image`.
pub fn registry_key(reference: &str) -> String {
    let lower = reference.to_ascii_lowercase();
    if let Some(rest) = ["https://", "http://"].iter().find_map(|scheme| {
        lower
            .starts_with(scheme)
            .then(|| &reference[scheme.len()..])
    }) {
        let host = rest.split('/').next().unwrap_or("").to_ascii_lowercase();
        return if host == "index.docker.io" {
            "docker.io".to_owned()
        } else {
            host
        };
    }
    let mut path = reference.trim_end_matches('/');
    if let (Some(tag), Some(slash)) = (path.rfind(':'), path.rfind('/'))
        && tag > slash
    {
        path = &path[..tag];
    }
    match path.split_once('/') {
        Some((host, rest)) => format!("{}/{rest}", host.to_ascii_lowercase()),
        None => path.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(variables: &[(&str, &str)], registry: Option<(&str, &str, &str)>) -> JobPayload {
        let variables: Vec<Value> = variables
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v, "public": false, "masked": true}))
            .collect();
        let credentials: Vec<Value> = registry
            .map(|(url, user, password)| {
                vec![
                    json!({"type": "registry", "url": url, "username": user, "password": password}),
                ]
            })
            .unwrap_or_default();
        JobPayload::from_value(json!({
            "id": 7, "token": "job-token-value",
            "variables": variables, "credentials": credentials,
        }))
        .unwrap()
    }

    #[test]
    fn sources_in_gitlab_runners_order_the_first_wins_a_registry() {
        let job_config = r#"{"auths": {"https://registry.example.com/v1/": {"auth": "am9iOnZhcg=="}, "Docker.io/team": {"auth": "dGVhbTp0"}}}"#;
        let runner_config = r#"{"auths": {"registry.example.com": {"auth": "cnVubmVyOmVudg=="}, "quay.io": {"auth": "cTpx"}}}"#;
        let resolved = resolve(
            &payload(
                &[("DOCKER_AUTH_CONFIG", job_config)],
                Some(("registry.example.com", "gitlab-ci-token", "job-password")),
            ),
            &[format!("DOCKER_AUTH_CONFIG={runner_config}")],
        );
        // The job's variable hides the runner's environment entry altogether, and wins the
        // registry over the job's own credentials.
        assert_eq!(
            resolved.auths.keys().collect::<Vec<_>>(),
            ["docker.io/team", "registry.example.com"]
        );
        assert_eq!(
            resolved.auths["registry.example.com"]["auth"],
            "am9iOnZhcg=="
        );
        assert!(resolved.notes.is_empty());

        // Without the job's variable, the runner's environment is the first source.
        let resolved = resolve(
            &payload(&[], Some(("registry.example.com", "gitlab-ci-token", "pw"))),
            &[format!("DOCKER_AUTH_CONFIG={runner_config}")],
        );
        assert_eq!(
            resolved.auths["registry.example.com"]["auth"],
            "cnVubmVyOmVudg=="
        );
        assert_eq!(resolved.auths["quay.io"]["auth"], "cTpx");
        // The job's own registry credentials when nothing else names the registry.
        let resolved = resolve(
            &payload(&[], Some(("Registry.Example.com", "gitlab-ci-token", "pw"))),
            &[],
        );
        assert_eq!(
            resolved.auths["registry.example.com"],
            json!({"username": "gitlab-ci-token", "password": "pw", "auth": "Z2l0bGFiLWNpLXRva2VuOnB3"})
        );
        let bytes = resolved.docker_config_json().unwrap();
        let parsed: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(parsed["auths"]["registry.example.com"].is_object());
        assert_eq!(resolve(&payload(&[], None), &[]).docker_config_json(), None);
    }

    #[test]
    fn bad_sources_are_said_not_fatal() {
        let resolved = resolve(
            &payload(&[("DOCKER_AUTH_CONFIG", "{not json")], None),
            &[r#"DOCKER_AUTH_CONFIG={"credsStore": "desktop", "auths": {"ghcr.io": {"auth": "eDp5"}}}"#.to_owned()],
        );
        // A job variable that is not JSON is said, and the runner's is not used instead
        // (gitlab-runner reads only the build's last DOCKER_AUTH_CONFIG).
        assert!(resolved.auths.is_empty());
        assert_eq!(resolved.notes.len(), 1, "{:?}", resolved.notes);
        assert!(resolved.notes[0].starts_with("$DOCKER_AUTH_CONFIG is not valid JSON"));
        let resolved = resolve(
            &payload(&[], None),
            &[r#"DOCKER_AUTH_CONFIG={"credsStore": "desktop", "auths": {"ghcr.io": {"auth": "eDp5"}}}"#.to_owned()],
        );
        assert_eq!(resolved.auths.keys().collect::<Vec<_>>(), ["ghcr.io"]);
        assert_eq!(resolved.notes.len(), 1, "{:?}", resolved.notes);
        assert!(resolved.notes[0].contains("credsStore"));
        // No secret in the notes.
        assert!(!resolved.notes.iter().any(|n| n.contains("eDp5")));
    }

    #[test]
    fn registry_keys_as_gitlab_runner_normalizes_them() {
        for (reference, key) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("http://Registry.Example.com/v2", "registry.example.com"),
            (
                "Registry.example.com:5000/group/image:1.2",
                "registry.example.com:5000/group/image",
            ),
            ("registry.example.com:5000", "registry.example.com:5000"),
            ("docker.io/library/", "docker.io/library"),
        ] {
            assert_eq!(registry_key(reference), key, "{reference}");
        }
    }
}
