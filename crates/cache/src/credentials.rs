//! The manager's AWS credentials for signing, in the order of the AWS SDKs' default chain
//! for what a runner on EKS uses: the config's static keys (`AccessKey`/`SecretKey`, or the
//! `CACHE_S3_ACCESS_KEY`/`CACHE_S3_SECRET_KEY` the official chart sets from
//! `runners.cache.secretName`), then for `AuthenticationType = "iam"` the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), web identity (IRSA:
//! `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, exchanged with STS
//! `AssumeRoleWithWebIdentity`, which needs no signature), and the instance role (IMDSv2).
//! Temporary credentials are kept until five minutes before they expire.

use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

/// One set of credentials.
#[derive(Clone)]
pub struct AwsCredentials {
    /// Access key ID.
    pub key: String,
    /// Secret access key.
    pub secret: String,
    /// Session token of temporary credentials.
    pub token: Option<String>,
    /// When temporary credentials expire.
    pub expires: Option<Timestamp>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("key", &self.key)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Where the credentials came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `AccessKey`/`SecretKey` or the chart's Secret.
    Static,
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`.
    Environment,
    /// IRSA web identity.
    WebIdentity,
    /// The instance profile (IMDSv2).
    InstanceProfile,
}

/// Why no credentials could be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// No source in the chain had any.
    #[error(
        "no AWS credentials: set AccessKey/SecretKey, or give the manager's service account an IAM role (IRSA)"
    )]
    None,
    /// A source failed.
    #[error("{0}")]
    Failed(String),
}

/// What the process environment holds, read once per resolution (tests pass their own).
pub trait Env: Sync {
    /// The variable's value, when set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Temporary credentials of the chain, shared by every job of the manager.
static CACHED: Mutex<Option<(Source, AwsCredentials)>> = Mutex::new(None);

/// The credentials to sign with. `static_keys`: the config's (or the chart Secret's) keys;
/// `iam`: the chain may be used.
pub async fn resolve(
    static_keys: Option<AwsCredentials>,
    iam: bool,
    env: &dyn Env,
    http: &reqwest::Client,
) -> Result<(Source, AwsCredentials), CredentialsError> {
    if !iam {
        return static_keys.map(|keys| (Source::Static, keys)).ok_or_else(|| {
            CredentialsError::Failed(
                "AuthenticationType \"access-key\" needs AccessKey and SecretKey (or the chart's cache Secret)".to_owned(),
            )
        });
    }
    if let (Some(key), Some(secret)) = (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        let token = env.var("AWS_SESSION_TOKEN");
        return Ok((
            Source::Environment,
            AwsCredentials {
                key,
                secret,
                token,
                expires: None,
            },
        ));
    }
    let margin = jiff::SignedDuration::from_secs(300);
    if let Some((source, cached)) = CACHED.lock().unwrap_or_else(|p| p.into_inner()).clone()
        && cached
            .expires
            .is_some_and(|e| e > Timestamp::now().checked_add(margin).unwrap_or(e))
    {
        return Ok((source, cached));
    }
    let fetched = if let (Some(role), Some(file)) = (
        env.var("AWS_ROLE_ARN"),
        env.var("AWS_WEB_IDENTITY_TOKEN_FILE"),
    ) {
        (
            Source::WebIdentity,
            web_identity(env, http, &role, &file).await?,
        )
    } else {
        (Source::InstanceProfile, instance_profile(env, http).await?)
    };
    *CACHED.lock().unwrap_or_else(|p| p.into_inner()) = Some(fetched.clone());
    Ok(fetched)
}

/// The STS endpoint: `AWS_ENDPOINT_URL_STS` or `AWS_ENDPOINT_URL` (the SDKs' service
/// endpoint settings), else the regional endpoint of `AWS_REGION`/`AWS_DEFAULT_REGION`
/// (EKS sets `AWS_STS_REGIONAL_ENDPOINTS=regional` and the region), else the global one.
fn sts_endpoint(env: &dyn Env) -> String {
    if let Some(url) = env
        .var("AWS_ENDPOINT_URL_STS")
        .or_else(|| env.var("AWS_ENDPOINT_URL"))
    {
        return url;
    }
    match env
        .var("AWS_REGION")
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
    {
        Some(region) => format!("https://sts.{region}.amazonaws.com/"),
        None => "https://sts.amazonaws.com/".to_owned(),
    }
}

/// `AssumeRoleWithWebIdentity` (AWS STS API reference): a form POST without signature;
/// the answer's `Credentials` hold `AccessKeyId`, `SecretAccessKey`, `SessionToken`,
/// `Expiration`.
async fn web_identity(
    env: &dyn Env,
    http: &reqwest::Client,
    role: &str,
    file: &str,
) -> Result<AwsCredentials, CredentialsError> {
    let failed = |what: String| CredentialsError::Failed(format!("web identity ({role}): {what}"));
    let token = std::fs::read_to_string(file).map_err(|e| failed(format!("{file}: {e}")))?;
    let session = env
        .var("AWS_ROLE_SESSION_NAME")
        .unwrap_or_else(|| format!("podrunner-{}", Timestamp::now().as_second()));
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", session.as_str()),
        ("WebIdentityToken", token.trim()),
    ];
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = http
        .post(sts_endpoint(env))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| failed(e.to_string()))?;
    if !status.is_success() {
        let code = element(&body, "Code").unwrap_or_default();
        let message = element(&body, "Message").unwrap_or_default();
        return Err(failed(format!("STS answered {status}: {code} {message}")));
    }
    let field = |name: &str| {
        element(&body, name).ok_or_else(|| failed(format!("STS answer without {name}")))
    };
    Ok(AwsCredentials {
        key: field("AccessKeyId")?,
        secret: field("SecretAccessKey")?,
        token: Some(field("SessionToken")?),
        expires: Some(
            field("Expiration")?
                .parse()
                .map_err(|e| failed(format!("Expiration: {e}")))?,
        ),
    })
}

/// The text of the first `<name>` element of an STS answer (a flat XML document whose
/// credential elements hold text only).
fn element(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(
        body[start..end]
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'"),
    )
}

/// IMDSv2 (EC2 user guide, "Retrieve instance metadata"): a session token from
/// `PUT /latest/api/token`, then the role's credentials as JSON.
async fn instance_profile(
    env: &dyn Env,
    http: &reqwest::Client,
) -> Result<AwsCredentials, CredentialsError> {
    let base = env
        .var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|| "http://169.254.169.254".to_owned());
    let base = base.trim_end_matches('/');
    let timeout = Duration::from_secs(2);
    let token = http
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
        .timeout(timeout)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|_| CredentialsError::None)?
        .text()
        .await
        .map_err(|_| CredentialsError::None)?;
    let path = format!("{base}/latest/meta-data/iam/security-credentials/");
    let get = |url: String| {
        http.get(url)
            .header("X-aws-ec2-metadata-token", token.clone())
            .timeout(timeout)
            .send()
    };
    let failed = |e: reqwest::Error| CredentialsError::Failed(format!("instance metadata: {e}"));
    let role = get(path.clone())
        .await
        .and_then(|r| r.error_for_status())
        .map_err(failed)?
        .text()
        .await
        .map_err(failed)?;
    let role = role.lines().next().unwrap_or_default().trim().to_owned();
    if role.is_empty() {
        return Err(CredentialsError::None);
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Imds {
        access_key_id: String,
        secret_access_key: String,
        token: String,
        expiration: String,
    }
    let answer: Imds = get(format!("{path}{role}"))
        .await
        .and_then(|r| r.error_for_status())
        .map_err(failed)?
        .json()
        .await
        .map_err(failed)?;
    Ok(AwsCredentials {
        key: answer.access_key_id,
        secret: answer.secret_access_key,
        token: Some(answer.token),
        expires: answer.expiration.parse().ok(),
    })
}

/// Forgets the cached temporary credentials (tests).
pub fn forget() {
    *CACHED.lock().unwrap_or_else(|p| p.into_inner()) = None;
}
