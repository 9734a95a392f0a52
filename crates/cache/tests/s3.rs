//! URLs signed by the manager against a real S3 server that verifies SigV4: `s3s-fs` (the
//! `s3s` crate's file-system store, which checks presigned V4 signatures and their expiry),
//! and an STS stand-in for IRSA's `AssumeRoleWithWebIdentity`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podrunner_agent::AgentSpec;
use podrunner_agent::cache_plan::{CacheEntry, CacheLocation};
use podrunner_agent::transfer::{self, TransferError, TransferOptions};
use podrunner_cache::credentials::Env;
use podrunner_config::RunnerConfig;
use podrunner_gitlab::JobPayload;

const KEY: &str = "AKIDPODRUNNERTEST";
const SECRET: &str = "podrunner-test-secret-key";
const STS_KEY: &str = "ASIAWEBIDENTITYTEST";
const STS_SECRET: &str = "web-identity-secret";
const STS_TOKEN: &str = "web-identity-session-token";

/// An `s3s-fs` server on 127.0.0.1 knowing both key pairs, with bucket `cache`.
async fn s3_server(root: &Path) -> String {
    std::fs::create_dir_all(root.join("cache")).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    let mut auth = s3s::auth::SimpleAuth::from_single(KEY, SECRET);
    auth.register(STS_KEY.to_owned(), STS_SECRET.into());
    builder.set_auth(auth);
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
            });
        }
    });
    address
}

/// An STS stand-in: `AssumeRoleWithWebIdentity` as the AWS STS API reference describes it
/// (a form POST with `Action`, `RoleArn`, `RoleSessionName`, `WebIdentityToken`; the
/// answer's `AssumeRoleWithWebIdentityResult/Credentials`). It accepts only `token` for
/// `role`.
async fn sts_server(role: &'static str, token: &'static str) -> String {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: String| async move {
            let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            let ok = form.get("Action").map(String::as_str) == Some("AssumeRoleWithWebIdentity")
                && form.get("RoleArn").map(String::as_str) == Some(role)
                && form.get("WebIdentityToken").map(String::as_str) == Some(token)
                && form.contains_key("RoleSessionName");
            if !ok {
                return (
                    axum::http::StatusCode::FORBIDDEN,
                    "<ErrorResponse><Error><Code>AccessDenied</Code><Message>Not authorized</Message></Error></ErrorResponse>".to_owned(),
                );
            }
            (
                axum::http::StatusCode::OK,
                format!(
                    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{STS_KEY}</AccessKeyId><SecretAccessKey>{STS_SECRET}</SecretAccessKey><SessionToken>{STS_TOKEN}</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
                ),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/")
}

struct MapEnv(HashMap<&'static str, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

fn runner(cache: &str) -> RunnerConfig {
    toml::from_str(&format!("executor = \"kubernetes\"\n[cache]\n{cache}")).unwrap()
}

fn payload(cache: serde_json::Value) -> JobPayload {
    JobPayload::from_value(serde_json::json!({
        "id": 5, "token": "t",
        "job_info": {"name": "install", "project_id": 42, "project_full_path": "g/web"},
        "git_info": {"ref": "main"},
        "cache": cache,
    }))
    .unwrap()
}

fn spec(short_token: &str) -> AgentSpec {
    AgentSpec {
        runner_short_token: short_token.to_owned(),
        ..AgentSpec::default()
    }
}

fn remote(location: &CacheLocation) -> (&str, &[(String, String)]) {
    match location {
        CacheLocation::Remote { url, headers } => (url.expose(), headers),
        CacheLocation::Local(path) => panic!("local {path:?}"),
    }
}

const OPTIONS: TransferOptions = TransferOptions {
    timeout: Duration::from_secs(10),
};

async fn put(entry: &CacheEntry, file: &Path) -> Result<u64, TransferError> {
    let (url, headers) = remote(&entry.save.as_ref().unwrap().location);
    transfer::upload(&reqwest::Client::new(), url, headers, file, OPTIONS).await
}

async fn get(entry: &CacheEntry, i: usize, dest: &Path) -> Result<u64, TransferError> {
    let (url, headers) = remote(&entry.restore[i].location);
    transfer::download(&reqwest::Client::new(), url, headers, dest, OPTIONS).await
}

fn s3_cache(address: &str, extra: &str) -> String {
    format!(
        "Type = \"s3\"\n{extra}\n[cache.s3]\nServerAddress = \"{address}\"\nInsecure = true\nBucketName = \"cache\"\nAccessKey = \"{KEY}\"\nSecretKey = \"{SECRET}\"\n"
    )
}

fn archive(dir: &Path) -> PathBuf {
    let file = dir.join("upload.zip");
    std::fs::write(
        &file,
        b"PK\x05\x06 not really a zip, the store does not care",
    )
    .unwrap();
    file
}

#[tokio::test]
async fn signed_urls_put_and_get_under_gitlab_runners_object_names() {
    let dir = tempfile::tempdir().unwrap();
    let address = s3_server(&dir.path().join("s3")).await;
    let env = MapEnv(HashMap::new());
    let job = payload(serde_json::json!([{"key": "default", "paths": ["node_modules/"]}]));
    let (entries, _) = podrunner_cache::resolve_with(
        &runner(&s3_cache(&address, "")),
        &spec("runnerAA"),
        &job,
        &env,
    )
    .await;
    assert!(entries[0].warnings.is_empty(), "{:?}", entries[0].warnings);
    let file = archive(dir.path());
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(put(&entries[0], &file).await.unwrap(), size);
    // gitlab-runner's name: runner/<short token>/project/<id>/<key>.
    let stored = dir
        .path()
        .join("s3/cache/runner/runnerAA/project/42/default");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(&file).unwrap()
    );
    let back = dir.path().join("back.zip");
    get(&entries[0], 0, &back).await.unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());

    // Shared: every runner's names are the same.
    let shared = runner(&s3_cache(&address, "Shared = true\nPath = \"team\""));
    let (a, _) = podrunner_cache::resolve_with(&shared, &spec("runnerAA"), &job, &env).await;
    let (b, _) = podrunner_cache::resolve_with(&shared, &spec("runnerBB"), &job, &env).await;
    put(&a[0], &file).await.unwrap();
    assert!(
        dir.path()
            .join("s3/cache/team/project/42/default")
            .is_file()
    );
    std::fs::remove_file(&back).unwrap();
    get(&b[0], 0, &back).await.unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
}

#[tokio::test]
async fn a_missing_object_and_a_bad_signature_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let address = s3_server(&dir.path().join("s3")).await;
    let env = MapEnv(HashMap::new());
    let job = payload(serde_json::json!([{"key": "k", "paths": ["a"]}]));
    let file = archive(dir.path());
    let back = dir.path().join("back.zip");

    // No object yet: not found, which is no fault.
    let (entries, _) =
        podrunner_cache::resolve_with(&runner(&s3_cache(&address, "")), &spec("r"), &job, &env)
            .await;
    assert!(matches!(
        get(&entries[0], 0, &back).await,
        Err(TransferError::NotFound)
    ));

    // A wrong secret: the server checks the signature.
    let wrong = s3_cache(&address, "").replace(SECRET, "not-the-secret");
    let (entries, _) = podrunner_cache::resolve_with(&runner(&wrong), &spec("r"), &job, &env).await;
    match put(&entries[0], &file).await {
        Err(TransferError::Status {
            status: 403,
            reason,
        }) => assert_eq!(reason, "SignatureDoesNotMatch"),
        other => panic!("{other:?}"),
    }
    // A missing bucket: s3s-fs answers NoSuchKey for it, so the agent tests check that
    // fault against a stand-in answering as S3 does (NoSuchBucket).
}

#[tokio::test]
async fn an_expired_url_is_refused_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let address = s3_server(&dir.path().join("s3")).await;
    let store = podrunner_cache::s3::S3Store::new(
        &toml::from_str(&format!(
            "ServerAddress = \"{address}\"\nInsecure = true\nBucketName = \"cache\""
        ))
        .unwrap(),
    )
    .unwrap();
    let credentials = podrunner_cache::credentials::AwsCredentials {
        key: KEY.into(),
        secret: SECRET.into(),
        token: None,
        expires: None,
    };
    let signed = store.put(&credentials, "x", Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let file = archive(dir.path());
    match transfer::upload(&reqwest::Client::new(), &signed.url, &[], &file, OPTIONS).await {
        Err(TransferError::Status {
            status: 403,
            reason,
        }) => assert_eq!(reason, "AccessDenied"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn irsa_signs_with_web_identity_credentials() {
    podrunner_cache::credentials::forget();
    let dir = tempfile::tempdir().unwrap();
    let address = s3_server(&dir.path().join("s3")).await;
    let role = "arn:aws:iam::123456789012:role/podrunner-cache";
    let sts = sts_server(role, "projected-service-account-token").await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "projected-service-account-token\n").unwrap();
    let env = MapEnv(HashMap::from([
        ("AWS_ROLE_ARN", role.to_owned()),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AWS_ENDPOINT_URL_STS", sts),
    ]));
    let config = format!(
        "Type = \"s3\"\n[cache.s3]\nServerAddress = \"{address}\"\nInsecure = true\nBucketName = \"cache\"\nAuthenticationType = \"iam\"\n"
    );
    let job = payload(serde_json::json!([{"key": "default", "paths": ["a"]}]));
    let (entries, _) =
        podrunner_cache::resolve_with(&runner(&config), &spec("r"), &job, &env).await;
    assert!(entries[0].warnings.is_empty(), "{:?}", entries[0].warnings);
    let (url, _) = remote(&entries[0].save.as_ref().unwrap().location);
    assert!(
        url.contains(&format!("X-Amz-Credential={STS_KEY}")),
        "{url}"
    );
    assert!(
        url.contains(&format!("X-Amz-Security-Token={STS_TOKEN}")),
        "{url}"
    );
    let file = archive(dir.path());
    put(&entries[0], &file).await.unwrap();
    get(&entries[0], 0, &dir.path().join("back.zip"))
        .await
        .unwrap();
}
