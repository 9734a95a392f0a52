//! Google Cloud Storage signed GET and PUT URLs for `[runners.cache.gcs]`.
//!
//! gitlab-runner (`cache/gcs/`, `cache/gcsv2/`) signs with a service account's key: the
//! `client_email` and `private_key` of `CredentialsFile` (a JSON key of `type`
//! `service_account`), else `AccessID` and `PrivateKey` (or `CACHE_GCS_ACCESS_ID` /
//! `CACHE_GCS_PRIVATE_KEY`, the `env` names of its `CacheGCSCredentials`). The PUT is signed
//! for `Content-Type: application/octet-stream` and, with `MaxUploadedArchiveSize`, for
//! `X-Goog-Content-Length-Range: 0,<size>`; the URLs live as long as the job may.
//!
//! gitlab-runner's Go client signs with its default scheme (V2); podrunner signs with V4
//! (Google's "V4 signing process with your own program"), which Cloud Storage accepts for
//! the same keys and whose signing Google publishes conformance vectors for. V4 URLs live
//! seven days at most. Signing without a key (gitlab-runner's fallback to the metadata
//! server and IAM `signBlob`) is not done: `config check` refuses it.

use std::time::Duration;

use jiff::Timestamp;
use rsa::PrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use sha2::{Digest, Sha256};

use crate::credentials::Env;
use crate::s3::Signed;

/// Cloud Storage's XML API endpoint.
pub const ENDPOINT: &str = "https://storage.googleapis.com";

/// The longest a V4 signed URL may live.
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The service account to sign as.
pub struct ServiceAccount {
    /// Its e-mail (`client_email`, `AccessID`).
    pub email: String,
    key: SigningKey<Sha256>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// From an e-mail and a PEM private key (PKCS#8 as Google issues them, or PKCS#1).
    pub fn new(email: &str, pem: &str) -> Result<Self, String> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        // A key copied from a JSON key file may keep its `\n` escapes (the official chart's
        // entrypoint expands them with `echo -e`); PEM has no backslashes otherwise.
        let pem = pem.trim().replace("\\n", "\n");
        let pem = pem.as_str();
        let key = PrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| PrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| {
                "the private key is not an RSA key in PEM (\"-----BEGIN PRIVATE KEY-----\")"
                    .to_owned()
            })?;
        Ok(ServiceAccount {
            email: email.to_owned(),
            key: SigningKey::new(key),
        })
    }

    /// From a service account's JSON key file.
    pub fn from_json(json: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct KeyFile {
            #[serde(rename = "type", default)]
            kind: String,
            #[serde(default)]
            client_email: String,
            #[serde(default)]
            private_key: String,
        }
        let file: KeyFile =
            serde_json::from_str(json).map_err(|e| format!("not a JSON key file: {e}"))?;
        if file.kind != "service_account" {
            return Err(format!(
                "type is {:?}, not \"service_account\": use a service account's JSON key",
                file.kind
            ));
        }
        if file.client_email.is_empty() || file.private_key.is_empty() {
            return Err("has no client_email or private_key".to_owned());
        }
        Self::new(&file.client_email, &file.private_key)
    }

    /// The credentials of `[runners.cache.gcs]`, as gitlab-runner resolves them.
    pub fn resolve(
        config: &podrunner_config::CacheGcsConfig,
        env: &dyn Env,
    ) -> Result<Self, String> {
        // From the environment (the chart's mounted key), only when the file is there, as
        // the official chart's entrypoint tests for it before exporting the variable.
        let file = config
            .credentials_file
            .clone()
            .filter(|f| !f.is_empty())
            .or_else(|| {
                env.var("GOOGLE_APPLICATION_CREDENTIALS")
                    .filter(|f| std::path::Path::new(f).is_file())
            });
        let access_id = config
            .access_id
            .clone()
            .filter(|a| !a.is_empty())
            .or_else(|| env.var("CACHE_GCS_ACCESS_ID"));
        let private_key = config
            .private_key
            .as_ref()
            .map(|k| k.as_str().to_owned())
            .filter(|k| !k.is_empty())
            .or_else(|| env.var("CACHE_GCS_PRIVATE_KEY"));
        if let Some(file) = file {
            let json = std::fs::read_to_string(&file)
                .map_err(|e| format!("[runners.cache.gcs] CredentialsFile {file:?}: {e}"))?;
            return Self::from_json(&json)
                .map_err(|e| format!("[runners.cache.gcs] CredentialsFile {file:?} {e}"));
        }
        match (access_id, private_key) {
            (Some(id), Some(key)) => {
                Self::new(&id, &key).map_err(|e| format!("[runners.cache.gcs] PrivateKey: {e}"))
            }
            _ => Err("[runners.cache.gcs] needs CredentialsFile, or AccessID and PrivateKey: podrunner does not sign through the metadata server".to_owned()),
        }
    }
}

/// A request to sign.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `PUT`, …
    pub method: &'a str,
    /// Bucket.
    pub bucket: &'a str,
    /// Object name (empty for the bucket).
    pub object: &'a str,
    /// Headers the request will carry, all signed.
    pub headers: &'a [(String, String)],
    /// Extra query parameters.
    pub query: &'a [(String, String)],
    /// When the signature is made.
    pub now: Timestamp,
    /// How long it holds.
    pub expires: Duration,
}

/// RFC 3986 encoding of everything but the unreserved characters (and `/` when `slash`).
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

/// The V4 signed URL of `request` at `endpoint` (`scheme://host`, path style).
pub fn sign_url(account: &ServiceAccount, endpoint: &str, request: &Request<'_>) -> String {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, host)| host)
        .trim_end_matches('/');
    let datetime = request.now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let date = &datetime[..8];
    let scope = format!("{date}/auto/storage/goog4_request");
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_lowercase(),
                value.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .chain(std::iter::once(("host".to_owned(), host.to_owned())))
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut query: Vec<(String, String)> = vec![
        ("X-Goog-Algorithm".into(), "GOOG4-RSA-SHA256".into()),
        (
            "X-Goog-Credential".into(),
            format!("{}/{scope}", account.email),
        ),
        ("X-Goog-Date".into(), datetime.clone()),
        (
            "X-Goog-Expires".into(),
            request.expires.min(MAX_EXPIRY).as_secs().to_string(),
        ),
        ("X-Goog-SignedHeaders".into(), signed_headers.clone()),
    ];
    query.extend(request.query.iter().cloned());
    let mut query: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (encode(k, false), encode(v, false)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let path = if request.object.is_empty() {
        format!("/{}", request.bucket)
    } else {
        format!("/{}/{}", request.bucket, encode(request.object, true))
    };
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let canonical = format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\nUNSIGNED-PAYLOAD",
        request.method
    );
    let to_sign = format!(
        "GOOG4-RSA-SHA256\n{datetime}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let signature = hex::encode(account.key.sign(to_sign.as_bytes()).to_bytes());
    format!("{endpoint}{path}?{query}&X-Goog-Signature={signature}")
}

/// A bucket to sign for.
#[derive(Debug)]
pub struct GcsStore {
    endpoint: String,
    bucket: String,
    account: ServiceAccount,
    upload_headers: Vec<(String, String)>,
}

impl GcsStore {
    /// The bucket and credentials of `[runners.cache.gcs]`; `max_upload` is
    /// `MaxUploadedArchiveSize` (0: no limit).
    pub fn new(
        config: &podrunner_config::CacheGcsConfig,
        max_upload: u64,
        env: &dyn Env,
    ) -> Result<Self, String> {
        let bucket = config
            .bucket_name
            .clone()
            .filter(|b| !b.is_empty())
            .or_else(|| env.var("CACHE_GCS_BUCKET_NAME"))
            .ok_or("[runners.cache.gcs] has no BucketName")?;
        let account = ServiceAccount::resolve(config, env)?;
        let mut upload_headers = vec![(
            "Content-Type".to_owned(),
            "application/octet-stream".to_owned(),
        )];
        if max_upload > 0 {
            upload_headers.push((
                "X-Goog-Content-Length-Range".to_owned(),
                format!("0,{max_upload}"),
            ));
        }
        Ok(GcsStore {
            endpoint: ENDPOINT.to_owned(),
            bucket,
            account,
            upload_headers,
        })
    }

    /// The same store at another endpoint (tests).
    pub fn with_endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = endpoint.trim_end_matches('/').to_owned();
        self
    }

    fn sign(
        &self,
        method: &str,
        object: &str,
        headers: &[(String, String)],
        expires: Duration,
    ) -> Signed {
        let url = sign_url(
            &self.account,
            &self.endpoint,
            &Request {
                method,
                bucket: &self.bucket,
                object,
                headers,
                query: &[],
                now: Timestamp::now(),
                expires,
            },
        );
        Signed {
            url,
            headers: headers.to_vec(),
        }
    }

    /// A GET of `object`, valid for `expires`.
    pub fn get(&self, object: &str, expires: Duration) -> Signed {
        self.sign("GET", object, &[], expires)
    }

    /// A PUT of `object`, valid for `expires`, with the headers it must carry.
    pub fn put(&self, object: &str, expires: Duration) -> Signed {
        self.sign("PUT", object, &self.upload_headers, expires)
    }
}

#[cfg(test)]
mod tests;
