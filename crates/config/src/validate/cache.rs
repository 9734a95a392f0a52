//! `[runners.cache]`: what podrunner cannot do is refused, what gitlab-runner would read
//! differently is said (`cache/cacheconfig/cacheconfig.go` of `gitlabhq/gitlab-runner`). GCS is
//! signed with a service account key and Azure with the account key only.

use super::Checker;
use crate::diagnostics::KeyPath;
use crate::enums::CacheType;
use crate::model::{CacheAzureConfig, CacheConfig, CacheGcsConfig};

/// Set in the config or, as the official chart does from `runners.cache.secretName`, in the
/// environment under gitlab-runner's `env` name for the key.
fn given(value: Option<&str>, env: &str) -> bool {
    value.is_some_and(|v| !v.is_empty()) || std::env::var(env).is_ok_and(|v| !v.is_empty())
}

/// Checks one runner's `[runners.cache]`.
pub(super) fn check_cache(c: &mut Checker<'_>, path: &KeyPath, cache: &CacheConfig) {
    if cache.max_uploaded_archive_size < 0 {
        c.error(
            &path.key("MaxUploadedArchiveSize"),
            format!(
                "is {}; use 0 for no limit, or a size in bytes",
                cache.max_uploaded_archive_size
            ),
        );
    }
    match cache.cache_type {
        None => {
            if cache.s3.is_some() || cache.gcs.is_some() || cache.azure.is_some() {
                c.warn(
                    &path.key("Type"),
                    "is not set, so the cache stays on the job's pod: set Type = \"s3\", \"gcs\" or \"azure\"",
                );
            }
        }
        Some(CacheType::S3) => match &cache.s3 {
            None => c.error(
                &path.key("Type"),
                "\"s3\" needs [runners.cache.s3] with at least BucketName",
            ),
            Some(s3) => {
                let s3_path = path.key("s3");
                if s3.bucket_name.as_deref().unwrap_or("").is_empty() {
                    c.error(
                        &s3_path.key("BucketName"),
                        "is missing: name the bucket the cache goes to",
                    );
                }
                if let Some(address) = s3.server_address.as_deref()
                    && address.contains("://")
                {
                    c.error(
                        &s3_path.key("ServerAddress"),
                        format!("{address:?} is a URL; write host[:port] (and Insecure = true for http)"),
                    );
                }
                match s3.authentication_type.as_deref().map(str::to_lowercase).as_deref() {
                    None | Some("") | Some("iam") | Some("access-key") => {}
                    Some(other) => c.error(
                        &s3_path.key("AuthenticationType"),
                        format!("{other:?} is not \"access-key\" or \"iam\""),
                    ),
                }
                match s3
                    .server_side_encryption
                    .as_deref()
                    .unwrap_or("")
                    .to_uppercase()
                    .as_str()
                {
                    "" | "S3" | "AES256" | "KMS" | "AWS:KMS" | "DSSE-KMS" | "AWS:KMS:DSSE" => {}
                    other => c.error(
                        &s3_path.key("ServerSideEncryption"),
                        format!("{other:?} is not \"S3\", \"KMS\" or \"DSSE-KMS\""),
                    ),
                }
            }
        },
        Some(CacheType::Gcs) => match &cache.gcs {
            None => c.error(
                &path.key("Type"),
                "\"gcs\" needs [runners.cache.gcs] with BucketName and a service account key",
            ),
            Some(gcs) => check_gcs(c, &path.key("gcs"), gcs),
        },
        Some(CacheType::Azure) => match &cache.azure {
            None => c.error(
                &path.key("Type"),
                "\"azure\" needs [runners.cache.azure] with AccountName, AccountKey and ContainerName",
            ),
            Some(azure) => check_azure(c, &path.key("azure"), azure),
        },
    }
}

/// `[runners.cache.gcs]`: podrunner signs with a service account key only.
fn check_gcs(c: &mut Checker<'_>, path: &KeyPath, gcs: &CacheGcsConfig) {
    if !given(gcs.bucket_name.as_deref(), "CACHE_GCS_BUCKET_NAME") {
        c.error(
            &path.key("BucketName"),
            "is missing: name the bucket the cache goes to",
        );
    }
    // The chart names its mounted key file in the environment; it counts when it is there.
    let key_file = std::env::var("GOOGLE_APPLICATION_CREDENTIALS")
        .is_ok_and(|f| std::path::Path::new(&f).is_file());
    if gcs
        .credentials_file
        .as_deref()
        .is_some_and(|f| !f.is_empty())
        || key_file
    {
        return;
    }
    let id = given(gcs.access_id.as_deref(), "CACHE_GCS_ACCESS_ID");
    let key = given(
        gcs.private_key.as_ref().map(|k| k.as_str()),
        "CACHE_GCS_PRIVATE_KEY",
    );
    match (id, key) {
        (true, true) => {}
        (true, false) => c.error(
            &path.key("AccessID"),
            "is set without PrivateKey: add the service account's private key (PEM), or use CredentialsFile",
        ),
        (false, true) => c.error(
            &path.key("PrivateKey"),
            "is set without AccessID: add the service account's e-mail, or use CredentialsFile",
        ),
        (false, false) => c.error(
            path,
            "has no service account key: podrunner does not sign URLs through the metadata server or IAM signBlob; set CredentialsFile (a service account JSON key) or AccessID and PrivateKey (or the chart's runners.cache.secretName with gcs-application-credentials, or gcs-access-id and gcs-private-key)",
        ),
    }
}

/// `[runners.cache.azure]`: podrunner signs with the account key only.
fn check_azure(c: &mut Checker<'_>, path: &KeyPath, azure: &CacheAzureConfig) {
    if !given(azure.account_name.as_deref(), "CACHE_AZURE_ACCOUNT_NAME") {
        c.error(
            &path.key("AccountName"),
            "is missing: name the storage account",
        );
    }
    if !given(
        azure.account_key.as_ref().map(|k| k.as_str()),
        "CACHE_AZURE_ACCOUNT_KEY",
    ) {
        c.error(
            &path.key("AccountKey"),
            "is missing: podrunner signs SAS URLs with the storage account key only (not with a managed identity's user delegation key); set AccountKey (or the chart's runners.cache.secretName with azure-account-name and azure-account-key)",
        );
    }
    if !given(
        azure.container_name.as_deref(),
        "CACHE_AZURE_CONTAINER_NAME",
    ) {
        c.error(
            &path.key("ContainerName"),
            "is missing: name the blob container the cache goes to",
        );
    }
    if let Some(domain) = azure.storage_domain.as_deref()
        && domain.contains("://")
    {
        c.error(
            &path.key("StorageDomain"),
            format!("{domain:?} is a URL; write the domain only, e.g. \"blob.core.windows.net\""),
        );
    }
}
