//! The distributed cache, manager side: for each job, the plan of its caches
//! (`podrunner_agent::cache_plan`) with every archive placed in the runner's store
//! (`[runners.cache]`) through URLs signed here. The job pod gets URLs, never credentials.

pub mod azure;
pub mod credentials;
pub mod gcs;
pub mod names;
pub mod s3;

use std::time::Duration;

use podrunner_agent::AgentSpec;
use podrunner_agent::cache_plan::{self, CacheEntry, CacheLocation, CacheObject, CacheSettings};
use podrunner_config::{CacheConfig, CacheType, RunnerConfig};
use podrunner_gitlab::{JobPayload, Secret};

use crate::credentials::{AwsCredentials, Env, ProcessEnv};

/// The longest a signed URL may live (S3 SigV4 and GCS V4: seven days).
const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The job's caches and the runner's cache settings, for its spec.
pub async fn resolve(
    runner: &RunnerConfig,
    spec: &AgentSpec,
    payload: &JobPayload,
) -> (Vec<CacheEntry>, CacheSettings) {
    resolve_with(runner, spec, payload, &ProcessEnv).await
}

/// [`resolve`] with a given environment (tests).
pub async fn resolve_with(
    runner: &RunnerConfig,
    spec: &AgentSpec,
    payload: &JobPayload,
    env: &dyn Env,
) -> (Vec<CacheEntry>, CacheSettings) {
    let variables = cache_plan::job_variables(spec, payload);
    let mut entries = cache_plan::plan(payload, &variables);
    let Some(cache) = &runner.cache else {
        return (entries, CacheSettings::default());
    };
    let settings = CacheSettings {
        max_uploaded_archive_size: cache.max_uploaded_archive_size.max(0) as u64,
    };
    if entries.is_empty() {
        return (entries, settings);
    }
    let store = match cache.cache_type {
        None => return (entries, settings),
        Some(CacheType::S3) => s3_store(cache, env).await,
        Some(CacheType::Gcs) => cache
            .gcs
            .as_ref()
            .ok_or_else(|| "Type \"gcs\" needs [runners.cache.gcs]".to_owned())
            .and_then(|gcs| gcs::GcsStore::new(gcs, settings.max_uploaded_archive_size, env))
            .map(Store::Gcs),
        Some(CacheType::Azure) => cache
            .azure
            .as_ref()
            .ok_or_else(|| "Type \"azure\" needs [runners.cache.azure]".to_owned())
            .and_then(|azure| azure::AzureStore::new(azure, env))
            .map(Store::Azure),
    };
    match store {
        Ok(store) => place(&store, cache, spec, payload, &mut entries),
        Err(why) => {
            for entry in &mut entries {
                entry.warnings.push(format!("Cache store: {why}"));
                entry.restore.clear();
                entry.save = None;
            }
        }
    }
    (entries, settings)
}

/// The static keys of `[runners.cache.s3]`, or those the official chart puts in the
/// environment from `runners.cache.secretName` (`CACHE_S3_ACCESS_KEY`/`CACHE_S3_SECRET_KEY`,
/// the `env` names of gitlab-runner's `CacheS3Config`).
fn static_keys(s3: &podrunner_config::CacheS3Config, env: &dyn Env) -> Option<AwsCredentials> {
    let key = s3
        .access_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| env.var("CACHE_S3_ACCESS_KEY"))?;
    let secret = s3
        .secret_key
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| env.var("CACHE_S3_SECRET_KEY"))?;
    let token = s3
        .session_token
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| env.var("CACHE_S3_SESSION_TOKEN"));
    Some(AwsCredentials {
        key,
        secret,
        token,
        expires: None,
    })
}

/// `CacheS3Config.AuthType()`: `access-key` or `iam` as written; unset, IAM unless a server
/// address and both keys are given.
fn uses_iam(s3: &podrunner_config::CacheS3Config, keys: &Option<AwsCredentials>) -> bool {
    match s3
        .authentication_type
        .as_deref()
        .unwrap_or("")
        .to_lowercase()
        .as_str()
    {
        "access-key" => false,
        "iam" => true,
        _ => s3.server_address.as_deref().unwrap_or("").is_empty() || keys.is_none(),
    }
}

fn http() -> Result<reqwest::Client, String> {
    let tls = podrunner_gitlab::client::tls_config(&podrunner_gitlab::ClientOptions::default())
        .map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| e.to_string())
}

/// A store to sign for, with what it signs with.
enum Store {
    S3(s3::S3Store, AwsCredentials),
    Gcs(gcs::GcsStore),
    Azure(azure::AzureStore),
}

impl Store {
    fn get(&self, name: &str, expires: Duration) -> s3::Signed {
        match self {
            Store::S3(store, credentials) => store.get(credentials, name, expires),
            Store::Gcs(store) => store.get(name, expires),
            Store::Azure(store) => store.get(name, expires),
        }
    }

    fn put(&self, name: &str, expires: Duration) -> s3::Signed {
        match self {
            Store::S3(store, credentials) => store.put(credentials, name, expires),
            Store::Gcs(store) => store.put(name, expires),
            Store::Azure(store) => store.put(name, expires),
        }
    }
}

async fn s3_store(cache: &CacheConfig, env: &dyn Env) -> Result<Store, String> {
    let s3 = cache
        .s3
        .as_ref()
        .ok_or("Type \"s3\" needs [runners.cache.s3]")?;
    let store = s3::S3Store::new(s3)?;
    let keys = static_keys(s3, env);
    let iam = uses_iam(s3, &keys);
    let (_, credentials) = credentials::resolve(keys, iam, env, &http()?)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Store::S3(store, credentials))
}

fn place(
    store: &Store,
    cache: &CacheConfig,
    spec: &AgentSpec,
    payload: &JobPayload,
    entries: &mut [CacheEntry],
) {
    // The upload comes at the end of the job: the URLs live as long as the job may, plus
    // an hour for after_script and the transfers (temporary credentials may end sooner).
    let expires =
        (Duration::from_secs(payload.timeout_secs()) + Duration::from_secs(3600)).min(MAX_EXPIRY);
    let path = cache.path.as_deref().unwrap_or("");
    let project = payload.job.job_info.project_id;
    let name =
        |key: &str| names::object_name(path, cache.shared, &spec.runner_short_token, project, key);
    for entry in entries.iter_mut() {
        let mut restore = Vec::new();
        for object in &entry.restore {
            match name(&object.key) {
                Ok(name) => restore.push(remote(&object.key, store.get(&name, expires))),
                Err(why) => entry.warnings.push(why),
            }
        }
        entry.restore = restore;
        if let Some(save) = entry.save.take() {
            match name(&save.key) {
                Ok(name) => entry.save = Some(remote(&save.key, store.put(&name, expires))),
                Err(why) => entry.warnings.push(why),
            }
        }
    }
}

fn remote(key: &str, signed: s3::Signed) -> CacheObject {
    CacheObject {
        key: key.to_owned(),
        location: CacheLocation::Remote {
            url: Secret::new(signed.url),
            headers: signed.headers,
        },
    }
}
