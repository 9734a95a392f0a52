//! `[runners.cache]`: what podrunner cannot do is refused, what gitlab-runner would read
//! differently is said (`cache/cacheconfig/cacheconfig.go` of `gitlabhq/gitlab-runner`).

use super::Checker;
use crate::diagnostics::KeyPath;
use crate::enums::CacheType;
use crate::model::CacheConfig;

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
                    "is not set, so the cache stays on the job's pod: set Type = \"s3\"",
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
        Some(other) => c.error(
            &path.key("Type"),
            format!(
                "{:?} is not supported by podrunner yet; use Type = \"s3\" (Amazon S3 or an S3-compatible store)",
                other.as_str()
            ),
        ),
    }
}
