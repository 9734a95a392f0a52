//! GCS signed URLs end to end. No emulator on PyPI or npm checks V4 signatures
//! (`gcp-storage-emulator` and `fake-gcs-server` accept any), so the store here is a
//! stand-in that does what Cloud Storage documents for V4 signed URLs ("Signatures",
//! "V4 signing process"): it rebuilds the canonical request from the request it receives
//! (method, path, query without `X-Goog-Signature`, the headers named in
//! `X-Goog-SignedHeaders` as sent, `UNSIGNED-PAYLOAD`), checks the RSA-SHA256 signature
//! with the service account's public key and that `X-Goog-Date` + `X-Goog-Expires` has not
//! passed, then keeps or serves the object. The signer itself is tested against Google's
//! conformance vectors (`src/gcs/tests.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use podrunner_agent::AgentSpec;
use podrunner_agent::cache_plan::CacheLocation;
use podrunner_agent::transfer::{self, TransferError, TransferOptions};
use podrunner_cache::credentials::Env;
use podrunner_cache::gcs::GcsStore;
use podrunner_config::RunnerConfig;
use podrunner_gitlab::JobPayload;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use sha2::{Digest, Sha256};

const EMAIL: &str = "cache@podrunner-test.iam.gserviceaccount.com";

/// A fresh RSA key in PKCS#8 PEM, as service account keys are.
fn private_key(dir: &Path) -> String {
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(dir.join("key.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed (scripts/test installs it)");
    assert!(status.success());
    std::fs::read_to_string(dir.join("key.pem")).unwrap()
}

#[derive(Clone)]
struct Bucket {
    name: &'static str,
    key: VerifyingKey<Sha256>,
    objects: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn error(status: StatusCode, code: &str) -> (StatusCode, String) {
    (
        status,
        format!(
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{code}</Message></Error>"
        ),
    )
}

async fn handle(State(bucket): State<Bucket>, request: Request) -> (StatusCode, Vec<u8>) {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let forbidden = |code: &str| {
        let (s, b) = error(StatusCode::FORBIDDEN, code);
        (s, b.into_bytes())
    };
    let (Some(signature), Some(signed), Some(date), Some(expires)) = (
        param("X-Goog-Signature"),
        param("X-Goog-SignedHeaders"),
        param("X-Goog-Date"),
        param("X-Goog-Expires"),
    ) else {
        return forbidden("AccessDenied");
    };
    let mut canonical_query: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("X-Goog-Signature"))
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    canonical_query.sort();
    let canonical_query = canonical_query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers = String::new();
    for name in signed.split(';') {
        let Some(value) = parts.headers.get(name) else {
            return forbidden("SignatureDoesNotMatch");
        };
        let value = value
            .to_str()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical = format!(
        "{}\n{}\n{canonical_query}\n{headers}\n{signed}\nUNSIGNED-PAYLOAD",
        parts.method,
        parts.uri.path()
    );
    let scope = param("X-Goog-Credential")
        .and_then(|c| c.split_once('/').map(|(_, s)| s.to_owned()))
        .unwrap_or_default();
    let to_sign = format!(
        "GOOG4-RSA-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let valid = hex::decode(&signature)
        .ok()
        .and_then(|s| Signature::try_from(s.as_slice()).ok())
        .is_some_and(|s| bucket.key.verify(to_sign.as_bytes(), &s).is_ok());
    if !valid {
        return forbidden("SignatureDoesNotMatch");
    }
    let signed_at = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", &date)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp();
    let lifetime = jiff::SignedDuration::from_secs(expires.parse().unwrap());
    if jiff::Timestamp::now() > signed_at + lifetime {
        return forbidden("ExpiredToken");
    }
    let Some(object) = parts.uri.path().strip_prefix(&format!("/{}/", bucket.name)) else {
        let (s, b) = error(StatusCode::NOT_FOUND, "NoSuchBucket");
        return (s, b.into_bytes());
    };
    let object = percent_decode(object);
    let mut objects = bucket.objects.lock().unwrap();
    match parts.method.as_str() {
        "PUT" => {
            objects.insert(object, body.to_vec());
            (StatusCode::OK, Vec::new())
        }
        "GET" => match objects.get(&object) {
            Some(data) => (StatusCode::OK, data.clone()),
            None => {
                let (s, b) = error(StatusCode::NOT_FOUND, "NoSuchKey");
                (s, b.into_bytes())
            }
        },
        _ => (StatusCode::METHOD_NOT_ALLOWED, Vec::new()),
    }
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&value[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn gcs_server(bucket: Bucket) -> String {
    let app = axum::Router::new().fallback(handle).with_state(bucket);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
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

fn payload() -> JobPayload {
    JobPayload::from_value(serde_json::json!({
        "id": 5, "token": "t",
        "job_info": {"name": "install", "project_id": 42, "project_full_path": "g/web"},
        "git_info": {"ref": "main"},
        "cache": [{"key": "default", "paths": ["node_modules/"]}],
    }))
    .unwrap()
}

fn spec() -> AgentSpec {
    AgentSpec {
        runner_short_token: "runnerAA".to_owned(),
        ..AgentSpec::default()
    }
}

const OPTIONS: TransferOptions = TransferOptions {
    timeout: Duration::from_secs(10),
};

struct Setup {
    dir: tempfile::TempDir,
    pem: String,
    bucket: Bucket,
    endpoint: String,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pem = private_key(dir.path());
    use rsa::pkcs8::DecodePrivateKey;
    let private = rsa::PrivateKey::from_pkcs8_pem(&pem).unwrap();
    let bucket = Bucket {
        name: "cache-bucket",
        key: VerifyingKey::new(rsa::PublicKey::from(&private)),
        objects: Arc::default(),
    };
    let endpoint = gcs_server(bucket.clone()).await;
    Setup {
        dir,
        pem,
        bucket,
        endpoint,
    }
}

#[tokio::test]
async fn a_credentials_file_signs_urls_the_store_accepts() {
    let s = setup().await;
    let file = s.dir.path().join("sa.json");
    std::fs::write(
        &file,
        serde_json::json!({"type": "service_account", "client_email": EMAIL, "private_key": s.pem})
            .to_string(),
    )
    .unwrap();
    let config: podrunner_config::CacheGcsConfig = toml::from_str(&format!(
        "CredentialsFile = {:?}\nBucketName = \"cache-bucket\"",
        file.display().to_string()
    ))
    .unwrap();
    let env = MapEnv(HashMap::new());
    let store = GcsStore::new(&config, 1 << 20, &env)
        .unwrap()
        .with_endpoint(&s.endpoint);
    let name = "runner/runnerAA/project/42/a key";
    let put = store.put(name, Duration::from_secs(60));
    // gitlab-runner's PUT: Content-Type application/octet-stream, and the size limit.
    assert!(
        put.url
            .contains("X-Goog-SignedHeaders=content-type%3Bhost%3Bx-goog-content-length-range"),
        "{}",
        put.url
    );
    let archive = s.dir.path().join("upload.zip");
    std::fs::write(&archive, b"PK\x05\x06 for the GCS stand-in").unwrap();
    transfer::upload(
        &reqwest::Client::new(),
        &put.url,
        &put.headers,
        &archive,
        OPTIONS,
    )
    .await
    .unwrap();
    assert_eq!(
        s.bucket.objects.lock().unwrap().get(name).unwrap(),
        &std::fs::read(&archive).unwrap()
    );
    let get = store.get(name, Duration::from_secs(60));
    let back = s.dir.path().join("back.zip");
    transfer::download(
        &reqwest::Client::new(),
        &get.url,
        &get.headers,
        &back,
        OPTIONS,
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&archive).unwrap()
    );

    // Without the signed headers, the store refuses the PUT.
    match transfer::upload(&reqwest::Client::new(), &put.url, &[], &archive, OPTIONS).await {
        Err(TransferError::Status {
            status: 403,
            reason,
        }) => {
            assert_eq!(reason, "SignatureDoesNotMatch")
        }
        other => panic!("{other:?}"),
    }
    // A missing object is no fault.
    let missing = store.get("runner/runnerAA/project/42/none", Duration::from_secs(60));
    assert!(matches!(
        transfer::download(&reqwest::Client::new(), &missing.url, &[], &back, OPTIONS).await,
        Err(TransferError::NotFound)
    ));
}

#[tokio::test]
async fn another_key_is_refused_and_an_expired_url_too() {
    let s = setup().await;
    let other_dir = s.dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = private_key(&other_dir);
    let env = MapEnv(HashMap::from([
        ("CACHE_GCS_ACCESS_ID", EMAIL.to_owned()),
        ("CACHE_GCS_PRIVATE_KEY", other),
    ]));
    let config: podrunner_config::CacheGcsConfig =
        toml::from_str("BucketName = \"cache-bucket\"").unwrap();
    let store = GcsStore::new(&config, 0, &env)
        .unwrap()
        .with_endpoint(&s.endpoint);
    let back = s.dir.path().join("back.zip");
    let get = store.get("x", Duration::from_secs(60));
    match transfer::download(&reqwest::Client::new(), &get.url, &[], &back, OPTIONS).await {
        Err(TransferError::Status {
            status: 403,
            reason,
        }) => {
            assert_eq!(reason, "SignatureDoesNotMatch")
        }
        other => panic!("{other:?}"),
    }

    let env = MapEnv(HashMap::from([
        ("CACHE_GCS_ACCESS_ID", EMAIL.to_owned()),
        ("CACHE_GCS_PRIVATE_KEY", s.pem.clone()),
    ]));
    let store = GcsStore::new(&config, 0, &env)
        .unwrap()
        .with_endpoint(&s.endpoint);
    let get = store.get("x", Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    match transfer::download(&reqwest::Client::new(), &get.url, &[], &back, OPTIONS).await {
        Err(TransferError::Status {
            status: 403,
            reason,
        }) => assert_eq!(reason, "ExpiredToken"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn jobs_get_gcs_urls_under_gitlab_runners_names_and_no_key_is_refused() {
    let s = setup().await;
    let config = format!(
        "Type = \"gcs\"\n[cache.gcs]\nBucketName = \"cache-bucket\"\nAccessID = \"{EMAIL}\"\nPrivateKey = \"\"\"\n{}\"\"\"\n",
        s.pem
    );
    let env = MapEnv(HashMap::new());
    let (entries, _) =
        podrunner_cache::resolve_with(&runner(&config), &spec(), &payload(), &env).await;
    assert!(entries[0].warnings.is_empty(), "{:?}", entries[0].warnings);
    let CacheLocation::Remote { url, headers } = &entries[0].save.as_ref().unwrap().location else {
        panic!("local");
    };
    assert!(
        url.expose().starts_with(
            "https://storage.googleapis.com/cache-bucket/runner/runnerAA/project/42/default?X-Goog-Algorithm=GOOG4-RSA-SHA256&"
        ),
        "{}",
        url.expose()
    );
    assert_eq!(
        headers,
        &[(
            "Content-Type".to_owned(),
            "application/octet-stream".to_owned()
        )]
    );

    // No key: the job is told, and its cache stays in the pod.
    let (entries, _) = podrunner_cache::resolve_with(
        &runner("Type = \"gcs\"\n[cache.gcs]\nBucketName = \"cache-bucket\"\n"),
        &spec(),
        &payload(),
        &env,
    )
    .await;
    assert!(entries[0].save.is_none());
    assert!(
        entries[0].warnings[0].contains("needs CredentialsFile, or AccessID and PrivateKey"),
        "{:?}",
        entries[0].warnings
    );
}
