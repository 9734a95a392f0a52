//! S3 presigned GET and PUT URLs (SigV4 query signing by `rusty-s3`), addressed as
//! gitlab-runner's `CacheS3Config` says (`cache/cacheconfig/cacheconfig.go`): `ServerAddress`
//! `host[:port]` over https (http when `Insecure`, canonical ports dropped), AWS's regional
//! endpoint when empty (dual-stack by default, `Accelerate` for Transfer Acceleration),
//! path style when `PathStyle` says so or, unset, when the endpoint is not AWS's;
//! `ServerSideEncryption` as signed headers the agent sends with the PUT.

use std::time::Duration;

use podrunner_config::CacheS3Config;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::credentials::AwsCredentials;

/// A bucket to sign for.
#[derive(Debug, Clone)]
pub struct S3Store {
    bucket: Bucket,
    upload_headers: Vec<(String, String)>,
}

/// A signed request: the URL and the headers the PUT must carry.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The presigned URL.
    pub url: String,
    /// Headers covered by the signature.
    pub headers: Vec<(String, String)>,
}

impl S3Store {
    /// The bucket of `[runners.cache.s3]`.
    pub fn new(config: &CacheS3Config) -> Result<Self, String> {
        let name = config
            .bucket_name
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or("[runners.cache.s3] has no BucketName")?;
        let region = config
            .bucket_location
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".to_owned());
        let (endpoint, aws) = match config.server_address.as_deref().filter(|a| !a.is_empty()) {
            Some(address) => {
                let scheme = if config.insecure { "http" } else { "https" };
                let address = match address.rsplit_once(':') {
                    Some((host, "443")) if scheme == "https" => host,
                    Some((host, "80")) if scheme == "http" => host,
                    _ => address,
                };
                (
                    format!("{scheme}://{address}"),
                    address.ends_with(".amazonaws.com"),
                )
            }
            None => {
                let dual = if config.dual_stack.unwrap_or(true) {
                    "dualstack."
                } else {
                    ""
                };
                let host = if config.accelerate {
                    format!("s3-accelerate.{dual}amazonaws.com")
                } else {
                    format!("s3.{dual}{region}.amazonaws.com")
                };
                (format!("https://{host}"), true)
            }
        };
        // minio's `s3utils.IsVirtualHostSupported`: AWS (and Google) endpoints, and over https
        // only buckets without dots.
        let virtual_host = aws && !(endpoint.starts_with("https://") && name.contains('.'));
        let style = match config.path_style {
            Some(true) => UrlStyle::Path,
            Some(false) => UrlStyle::VirtualHost,
            None if virtual_host => UrlStyle::VirtualHost,
            None => UrlStyle::Path,
        };
        let endpoint = endpoint
            .parse()
            .map_err(|e| format!("ServerAddress {endpoint:?}: {e}"))?;
        let bucket = Bucket::new(endpoint, style, name, region)
            .map_err(|e| format!("[runners.cache.s3]: {e:?}"))?;
        let mut upload_headers = Vec::new();
        match config
            .server_side_encryption
            .as_deref()
            .unwrap_or("")
            .to_uppercase()
            .as_str()
        {
            "" => {}
            "S3" | "AES256" => {
                upload_headers.push(("x-amz-server-side-encryption".into(), "AES256".into()))
            }
            kms @ ("KMS" | "AWS:KMS" | "DSSE-KMS" | "AWS:KMS:DSSE") => {
                let value = if kms.starts_with("DSSE") || kms.ends_with("DSSE") {
                    "aws:kms:dsse"
                } else {
                    "aws:kms"
                };
                upload_headers.push(("x-amz-server-side-encryption".into(), value.into()));
                if let Some(id) = config
                    .server_side_encryption_key_id
                    .as_deref()
                    .filter(|k| !k.is_empty())
                {
                    upload_headers.push((
                        "x-amz-server-side-encryption-aws-kms-key-id".into(),
                        id.into(),
                    ));
                }
            }
            other => return Err(format!("unknown ServerSideEncryption {other:?}")),
        }
        Ok(S3Store {
            bucket,
            upload_headers,
        })
    }

    /// A GET of `object`, valid for `expires`.
    pub fn get(&self, credentials: &AwsCredentials, object: &str, expires: Duration) -> Signed {
        let credentials = rusty(credentials);
        let action = self.bucket.get_object(Some(&credentials), object);
        Signed {
            url: action.sign(expires).to_string(),
            headers: Vec::new(),
        }
    }

    /// A PUT of `object`, valid for `expires`.
    pub fn put(&self, credentials: &AwsCredentials, object: &str, expires: Duration) -> Signed {
        let credentials = rusty(credentials);
        let mut action = self.bucket.put_object(Some(&credentials), object);
        for (name, value) in &self.upload_headers {
            action.headers_mut().insert(name.clone(), value.clone());
        }
        Signed {
            url: action.sign(expires).to_string(),
            headers: self.upload_headers.clone(),
        }
    }
}

fn rusty(credentials: &AwsCredentials) -> Credentials {
    match &credentials.token {
        Some(token) => Credentials::new_with_token(
            credentials.key.clone(),
            credentials.secret.clone(),
            token.clone(),
        ),
        None => Credentials::new(credentials.key.clone(), credentials.secret.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> CacheS3Config {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn endpoints_and_styles_follow_gitlab_runner() {
        let creds = AwsCredentials {
            key: "AKIDEXAMPLE".into(),
            secret: "secret".into(),
            token: None,
            expires: None,
        };
        let get = |c: &str| {
            S3Store::new(&config(c))
                .unwrap()
                .get(&creds, "project/1/default", Duration::from_secs(60))
                .url
        };
        assert!(
            get(r#"BucketName = "b"
BucketLocation = "eu-west-1""#)
            .starts_with("https://b.s3.dualstack.eu-west-1.amazonaws.com/project/1/default?")
        );
        assert!(
            get(r#"BucketName = "b"
DualStack = false"#)
            .starts_with("https://b.s3.us-east-1.amazonaws.com/project/1/default?")
        );
        assert!(
            get(r#"BucketName = "b"
ServerAddress = "127.0.0.1:9000"
Insecure = true"#)
            .starts_with("http://127.0.0.1:9000/b/project/1/default?")
        );
        assert!(
            get(r#"BucketName = "b"
ServerAddress = "minio.example.com:443""#)
            .starts_with("https://minio.example.com/b/project/1/default?")
        );
        let put = S3Store::new(&config(
            r#"BucketName = "b"
ServerSideEncryption = "KMS"
ServerSideEncryptionKeyID = "alias/cache""#,
        ))
        .unwrap()
        .put(&creds, "k", Duration::from_secs(60));
        assert!(put.url.contains("X-Amz-SignedHeaders=host%3Bx-amz-server-side-encryption%3Bx-amz-server-side-encryption-aws-kms-key-id"), "{}", put.url);
        assert_eq!(put.headers.len(), 2);
    }
}
