//! URLs signed by the manager against Azurite (npm `azurite`, Microsoft's Azure Storage
//! emulator), which checks service SAS signatures with its well-known development account.
//! `scripts/test` installs it and sets `PODRUNNER_AZURITE` to its `azurite-blob`; each test
//! starts its own on 127.0.0.1 over HTTPS (a CA and certificate made with `openssl`), reached
//! production style, `https://devstoreaccount1.blob.localhost:<port>/<container>/<blob>`,
//! as gitlab-runner's URLs are (`StorageDomain = "blob.localhost:<port>"`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use podrunner_agent::AgentSpec;
use podrunner_agent::cache_plan::{CacheEntry, CacheLocation};
use podrunner_agent::transfer::{self, TransferError, TransferOptions};
use podrunner_cache::credentials::Env;
use podrunner_config::RunnerConfig;
use podrunner_gitlab::JobPayload;

/// Azurite's well-known development account (Azurite's README, "Default Storage Account").
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const HOST: &str = "devstoreaccount1.blob.localhost";

struct Azurite {
    child: Child,
    address: SocketAddr,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed (scripts/test installs it)");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA and a certificate for [`HOST`] signed by it.
fn certificates(dir: &Path) {
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=DNS:{HOST}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=podrunner test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.csr",
            "-subj",
            &format!("/CN={HOST}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "cert.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
}

async fn azurite() -> Azurite {
    let bin = std::env::var("PODRUNNER_AZURITE")
        .expect("PODRUNNER_AZURITE is not set: scripts/test installs Azurite (npm) and sets it");
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .arg("--location")
        .arg(dir.path().join("data"))
        .arg("--cert")
        .arg(dir.path().join("cert.pem"))
        .arg("--key")
        .arg(dir.path().join("key.pem"))
        .args(["--silent", "--disableTelemetry"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start azurite-blob");
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve(HOST, address)
        .build()
        .unwrap();
    let azurite = Azurite {
        child,
        address,
        client,
        _dir: dir,
    };
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(azurite.address)
            .await
            .is_ok()
        {
            return azurite;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Azurite did not listen on {address} within 30 s");
}

/// Creates `container` with an account SAS (Create Container needs one; the account SAS
/// string-to-sign of version 2020-12-06 and later, Azure's "Create an account SAS").
async fn create_container(azurite: &Azurite, container: &str) {
    let now = jiff::Timestamp::now();
    let format = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (start, expiry) = (
        format(now - jiff::SignedDuration::from_hours(1)),
        format(now + jiff::SignedDuration::from_hours(1)),
    );
    let version = "2020-12-06";
    let to_sign = format!("{ACCOUNT}\nc\nb\nc\n{start}\n{expiry}\n\nhttps\n{version}\n\n");
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&STANDARD.decode(KEY).unwrap()).unwrap();
    mac.update(to_sign.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("restype", "container"),
            ("sv", version),
            ("ss", "b"),
            ("srt", "c"),
            ("sp", "c"),
            ("st", &start),
            ("se", &expiry),
            ("spr", "https"),
            ("sig", &sig),
        ])
        .finish();
    let port = azurite.address.port();
    let response = azurite
        .client
        .put(format!("https://{HOST}:{port}/{container}?{query}"))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

fn runner(port: u16, key: &str) -> RunnerConfig {
    toml::from_str(&format!(
        "executor = \"kubernetes\"\n[cache]\nType = \"azure\"\n[cache.azure]\nAccountName = \"{ACCOUNT}\"\nAccountKey = \"{key}\"\nContainerName = \"cache\"\nStorageDomain = \"blob.localhost:{port}\"\n"
    ))
    .unwrap()
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

fn remote(location: &CacheLocation) -> (&str, &[(String, String)]) {
    match location {
        CacheLocation::Remote { url, headers } => (url.expose(), headers),
        CacheLocation::Local(path) => panic!("local {path:?}"),
    }
}

const OPTIONS: TransferOptions = TransferOptions {
    timeout: Duration::from_secs(20),
};

async fn put(
    client: &reqwest::Client,
    entry: &CacheEntry,
    file: &Path,
) -> Result<u64, TransferError> {
    let (url, headers) = remote(&entry.save.as_ref().unwrap().location);
    transfer::upload(client, url, headers, file, OPTIONS).await
}

async fn get(
    client: &reqwest::Client,
    entry: &CacheEntry,
    dest: &Path,
) -> Result<u64, TransferError> {
    let (url, headers) = remote(&entry.restore[0].location);
    transfer::download(client, url, headers, dest, OPTIONS).await
}

fn archive(dir: &Path) -> PathBuf {
    let file = dir.join("upload.zip");
    std::fs::write(&file, b"PK\x05\x06 an archive for Azurite").unwrap();
    file
}

#[tokio::test]
async fn a_job_saves_and_restores_its_cache_through_sas_urls() {
    let azurite = azurite().await;
    create_container(&azurite, "cache").await;
    let dir = tempfile::tempdir().unwrap();
    let file = archive(dir.path());
    let back = dir.path().join("back.zip");
    let (entries, _) = podrunner_cache::resolve_with(
        &runner(azurite.address.port(), KEY),
        &spec(),
        &payload(),
        &NoEnv,
    )
    .await;
    assert!(entries[0].warnings.is_empty(), "{:?}", entries[0].warnings);
    let (url, _) = remote(&entries[0].save.as_ref().unwrap().location);
    // gitlab-runner's object name, in the container.
    assert!(
        url.starts_with(&format!(
            "https://{HOST}:{}/cache/runner/runnerAA/project/42/default?",
            azurite.address.port()
        )),
        "{url}"
    );

    // Nothing saved yet: not found, which is no fault.
    assert!(matches!(
        get(&azurite.client, &entries[0], &back).await,
        Err(TransferError::NotFound)
    ));
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(
        put(&azurite.client, &entries[0], &file).await.unwrap(),
        size
    );
    get(&azurite.client, &entries[0], &back).await.unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());

    // The read URL does not write.
    let (read_url, _) = remote(&entries[0].restore[0].location);
    let headers = [("x-ms-blob-type".to_owned(), "BlockBlob".to_owned())];
    match transfer::upload(&azurite.client, read_url, &headers, &file, OPTIONS).await {
        Err(TransferError::Status { status: 403, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_account_key_is_refused_by_azurite() {
    let azurite = azurite().await;
    create_container(&azurite, "cache").await;
    let dir = tempfile::tempdir().unwrap();
    let file = archive(dir.path());
    // Another valid base64 key of the same length.
    let wrong = STANDARD.encode([7u8; 64]);
    let (entries, _) = podrunner_cache::resolve_with(
        &runner(azurite.address.port(), &wrong),
        &spec(),
        &payload(),
        &NoEnv,
    )
    .await;
    match put(&azurite.client, &entries[0], &file).await {
        Err(TransferError::Status {
            status: 403,
            reason,
        }) => {
            assert_eq!(reason, "AuthorizationFailure")
        }
        other => panic!("{other:?}"),
    }
    match get(&azurite.client, &entries[0], &dir.path().join("back.zip")).await {
        Err(TransferError::Status { status: 403, .. }) => {}
        other => panic!("{other:?}"),
    }
}
