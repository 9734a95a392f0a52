//! Azure Blob Storage URLs for `[runners.cache.azure]`: a blob's URL with a service SAS
//! signed by the account key (HMAC-SHA256), as gitlab-runner's `cache/azure/` makes them
//! (`sas.BlobSignatureValues` of the Azure SDK for Go): HTTPS only, valid from an hour ago
//! (clock skew) until the job may end, read permission (`r`) for the GET and write (`w`)
//! for the PUT, at `https://<AccountName>.<StorageDomain>/<ContainerName>/<object>`
//! (`StorageDomain` defaults to `blob.core.windows.net`; a leading `/` of the object name
//! is dropped). Each field falls back to the `env` name of gitlab-runner's
//! `CacheAzureConfig` (`CACHE_AZURE_ACCOUNT_NAME`, `CACHE_AZURE_ACCOUNT_KEY`, …), which the
//! official chart sets from `runners.cache.secretName`.
//!
//! The PUT is a Put Blob, which needs `x-ms-blob-type: BlockBlob`: the agent sends it.
//! gitlab-runner signs without a key through a user delegation key (managed identity);
//! podrunner does not, and `config check` refuses a config without `AccountKey`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use jiff::{SignedDuration, Timestamp};

use crate::credentials::Env;
use crate::s3::Signed;

/// The default `StorageDomain`.
pub const DEFAULT_DOMAIN: &str = "blob.core.windows.net";

/// The SAS version (`sv`) signed for: one whose string-to-sign has the encryption scope
/// field (2020-12-06 and later).
pub const VERSION: &str = "2020-12-06";

/// A container to sign for.
pub struct AzureStore {
    account: String,
    key: Vec<u8>,
    container: String,
    endpoint: String,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStore")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// What a SAS allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read the blob (`r`).
    Read,
    /// Write the blob (`w`).
    Write,
}

impl Permission {
    fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "r",
            Permission::Write => "w",
        }
    }
}

fn field(value: &Option<String>, env: &dyn Env, name: &str) -> Option<String> {
    value
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| env.var(name))
}

/// Percent-encoding of a query value or a path segment (all but the unreserved characters).
fn encode(value: &str, slash: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

impl AzureStore {
    /// The container and key of `[runners.cache.azure]`.
    pub fn new(config: &podrunner_config::CacheAzureConfig, env: &dyn Env) -> Result<Self, String> {
        let account = field(&config.account_name, env, "CACHE_AZURE_ACCOUNT_NAME")
            .ok_or("[runners.cache.azure] has no AccountName")?;
        let key = config
            .account_key
            .as_ref()
            .map(|k| k.as_str().to_owned())
            .filter(|k| !k.is_empty())
            .or_else(|| env.var("CACHE_AZURE_ACCOUNT_KEY"))
            .ok_or("[runners.cache.azure] has no AccountKey: podrunner signs with the account key only")?;
        let key = STANDARD
            .decode(key.trim())
            .map_err(|_| "[runners.cache.azure] AccountKey is not base64: copy the storage account's access key")?;
        let container = field(&config.container_name, env, "CACHE_AZURE_CONTAINER_NAME")
            .ok_or("[runners.cache.azure] has no ContainerName")?;
        let domain = field(&config.storage_domain, env, "CACHE_AZURE_STORAGE_DOMAIN")
            .unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
        Ok(AzureStore {
            endpoint: format!("https://{account}.{domain}"),
            account,
            key,
            container,
        })
    }

    /// The blob URL of `object` with a SAS allowing `permission` from `now` - 1 h to
    /// `now + expires`.
    pub fn sign(
        &self,
        object: &str,
        permission: Permission,
        now: Timestamp,
        expires: Duration,
    ) -> String {
        let object = object.trim_start_matches('/');
        let format = |t: Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let start = format(now - SignedDuration::from_hours(1));
        let expiry = format(
            now.checked_add(SignedDuration::try_from(expires).unwrap_or(SignedDuration::MAX))
                .unwrap_or(Timestamp::MAX),
        );
        let resource = format!("/blob/{}/{}/{object}", self.account, self.container);
        let permission = permission.as_str();
        // Permissions, start, expiry, resource, identifier, IP, protocol, version, resource
        // type, snapshot time, encryption scope, then the five response header overrides.
        let to_sign = [
            permission, &start, &expiry, &resource, "", "", "https", VERSION, "b", "", "", "", "",
            "", "", "",
        ]
        .join("\n");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(to_sign.as_bytes());
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        let query = [
            ("sv", VERSION),
            ("spr", "https"),
            ("st", &start),
            ("se", &expiry),
            ("sr", "b"),
            ("sp", permission),
            ("sig", &signature),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v, false)))
        .collect::<Vec<_>>()
        .join("&");
        format!(
            "{}/{}/{}?{query}",
            self.endpoint,
            encode(&self.container, false),
            encode(object, true)
        )
    }

    /// A GET of `object`, valid for `expires`.
    pub fn get(&self, object: &str, expires: Duration) -> Signed {
        Signed {
            url: self.sign(object, Permission::Read, Timestamp::now(), expires),
            headers: Vec::new(),
        }
    }

    /// A PUT (Put Blob) of `object`, valid for `expires`, with the header it needs.
    pub fn put(&self, object: &str, expires: Duration) -> Signed {
        Signed {
            url: self.sign(object, Permission::Write, Timestamp::now(), expires),
            headers: vec![("x-ms-blob-type".to_owned(), "BlockBlob".to_owned())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn urls_follow_gitlab_runners_layout() {
        let config: podrunner_config::CacheAzureConfig = toml::from_str(
            "AccountName = \"acct\"\nAccountKey = \"a2V5\"\nContainerName = \"cache\"",
        )
        .unwrap();
        let store = AzureStore::new(&config, &NoEnv).unwrap();
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let url = store.sign(
            "/runner/r/project/1/a b",
            Permission::Write,
            now,
            Duration::from_secs(7200),
        );
        assert!(
            url.starts_with("https://acct.blob.core.windows.net/cache/runner/r/project/1/a%20b?sv=2020-12-06&spr=https&st=2026-12-01T09%3A00%3A00Z&se=2026-12-01T12%3A00%3A00Z&sr=b&sp=w&sig="),
            "{url}"
        );
        let bad: podrunner_config::CacheAzureConfig = toml::from_str(
            "AccountName = \"acct\"\nAccountKey = \"not base64!\"\nContainerName = \"cache\"",
        )
        .unwrap();
        assert!(
            AzureStore::new(&bad, &NoEnv)
                .unwrap_err()
                .contains("base64")
        );
    }
}
