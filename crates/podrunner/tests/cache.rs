//! The distributed cache end to end. With the Kubernetes executor: `podrunner run`, the
//! testkit GitLab and Kubernetes, and a real S3 server that verifies SigV4 signatures
//! (`s3s-fs`, in this process on 127.0.0.1): a cache saved by one job pod is restored by
//! another, fallback keys hit, `policy: pull` uploads nothing, and no cloud credential
//! reaches a pod or a Secret. With the agent alone: each store fault is a warning in the job
//! log and the job goes on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use podrunner_gitlab::api::{JobState, UpdateJobRequest};
use podrunner_gitlab::{ClientOptions, GitlabClient, JobRequestOutcome, RunnerInfo, Secret};
use podrunner_testkit::{GitlabStandIn, Image, JobSpec, JobView, KubernetesStandIn};
use serde_json::{Value, json};

const TOKEN: &str = "glrt-cache-e2e-token";
const INIT_IMAGE: &str = "registry.example.com/podrunner:e2e";
const ACCESS_KEY: &str = "AKIDCACHEE2E";
const SECRET_KEY: &str = "cache-e2e-secret-key-never-in-a-pod";

/// An `s3s-fs` server on 127.0.0.1 with bucket `cache`, checking signatures made with
/// [`ACCESS_KEY`]/[`SECRET_KEY`].
async fn s3_server(root: &Path) -> String {
    std::fs::create_dir_all(root.join("cache")).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
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

fn static_binary() -> PathBuf {
    let path = std::env::var_os("PODRUNNER_STATIC_BINARY")
        .map(PathBuf::from)
        .expect(
            "PODRUNNER_STATIC_BINARY is not set: scripts/test builds the static binary and sets it",
        );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

fn trace(view: &JobView) -> String {
    String::from_utf8_lossy(&view.trace).into_owned()
}

/// Files below `root`, relative.
fn files(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.to_string_lossy().contains(".s3s") {
                found.insert(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    found
}

/// Everything the Kubernetes stand-in holds for pods and Secrets, Secret data decoded.
fn pod_and_secret_text(kube: &KubernetesStandIn) -> String {
    let mut text = String::new();
    for pod in kube.objects("Pod") {
        text.push_str(&pod.to_string());
    }
    for secret in kube.objects("Secret") {
        text.push_str(&secret.to_string());
        if let Some(data) = secret["data"].as_object() {
            for value in data.values() {
                if let Some(encoded) = value.as_str()
                    && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded)
                {
                    text.push_str(&String::from_utf8_lossy(&decoded));
                }
            }
        }
    }
    text
}

fn cache_job(name: &str, script: &[&str], cache: Value) -> JobSpec {
    JobSpec::new(name, script)
        .variable("GIT_STRATEGY", "none", false)
        .payload_field("cache", cache)
}

#[tokio::test(flavor = "multi_thread")]
async fn job_pods_share_the_cache_through_s3_and_hold_no_credential() {
    let binary = static_binary();
    let dir = tempfile::tempdir().unwrap();
    let s3_root = dir.path().join("s3");
    let address = s3_server(&s3_root).await;
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    gitlab.set_long_poll(Duration::from_secs(5));
    let kube = KubernetesStandIn::start(2, 4.0).await;
    kube.map_image(
        INIT_IMAGE,
        Image::Files(vec![(binary, "/podrunner".into())]),
    );
    kube.map_image("alpine:3.20", Image::HostRoot);
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "concurrent = 2\ncheck_interval = 1\n[[runners]]\n  name = \"k8s\"\n  executor = \"kubernetes\"\n  [runners.cache]\n    Type = \"s3\"\n    [runners.cache.s3]\n      ServerAddress = \"{address}\"\n      Insecure = true\n      BucketName = \"cache\"\n      AuthenticationType = \"access-key\"\n      AccessKey = \"{ACCESS_KEY}\"\n      SecretKey = \"{SECRET_KEY}\"\n  [runners.kubernetes]\n    namespace = \"gitlab-runner\"\n    poll_timeout = 5\n"
        ),
    )
    .unwrap();
    let mut manager = tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["run", "-c", config.to_str().unwrap()])
        .args(["--url", gitlab.url(), "--token", TOKEN])
        .env("KUBECONFIG", &kubeconfig)
        .env("PODRUNNER_INIT_IMAGE", INIT_IMAGE)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("CONFIG_FILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_ROLE_ARN")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut finished = async |id: i64| -> JobView {
        for _ in 0..900 {
            seen.push_str(&pod_and_secret_text(&kube));
            if let Some(view) = gitlab.job(id)
                && matches!(view.status.as_str(), "success" | "failed")
            {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "job {id} did not finish: {:?}",
            gitlab.job(id).map(|j| trace(&j))
        );
    };

    // Job 1 saves node_modules/ under the default key.
    let save = gitlab.enqueue(cache_job(
        "install",
        &[
            "mkdir -p node_modules/dep",
            "echo restored-from-s3 > node_modules/dep/index.js",
        ],
        json!([{"key": "default", "paths": ["node_modules/"], "policy": "pull-push"}]),
    ));
    let view = finished(save).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(text.contains("Creating cache default..."), "{text}");
    assert!(text.contains("Uploading cache.zip to http://"), "{text}");
    assert!(text.contains("Created cache"), "{text}");
    let stored = files(&s3_root.join("cache"));
    let object = stored
        .iter()
        .find(|f| f.starts_with("runner/") && f.ends_with("/project/7/default"))
        .unwrap_or_else(|| panic!("no runner/<token>/project/7/default in {stored:?}"))
        .clone();

    // Job 2, in another pod, restores it.
    let restore = gitlab.enqueue(cache_job(
        "test",
        &["cat node_modules/dep/index.js"],
        json!([{"key": "default", "paths": ["node_modules/"], "policy": "pull"}]),
    ));
    let view = finished(restore).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(text.contains("Checking cache for default..."), "{text}");
    assert!(text.contains("Successfully extracted cache"), "{text}");
    assert!(text.contains("restored-from-s3"), "{text}");
    assert!(
        text.contains("Not uploading cache default due to policy")
            || !text.contains("Saving cache"),
        "{text}"
    );

    // Job 3: its key has no cache yet, the fallback key has; policy pull uploads nothing.
    let fallback = gitlab.enqueue(cache_job(
        "feature",
        &["cat node_modules/dep/index.js"],
        json!([{"key": "feature-branch", "fallback_keys": ["default"], "paths": ["node_modules/"], "policy": "pull"}]),
    ));
    let view = finished(fallback).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert!(
        text.contains("Checking cache for feature-branch..."),
        "{text}"
    );
    assert!(text.contains("Checking cache for default..."), "{text}");
    assert!(text.contains("restored-from-s3"), "{text}");
    assert_eq!(
        files(&s3_root.join("cache")),
        BTreeSet::from([object]),
        "policy pull uploaded something"
    );

    assert!(!seen.is_empty(), "no pod or Secret was seen");
    assert!(
        !seen.contains(SECRET_KEY),
        "the secret key reached a pod spec or a Secret"
    );
    let _ = manager.start_kill();
    let _ = manager.wait().await;
}

/// A store answering as S3 does for each fault (Amazon S3 API Reference, "Error
/// responses": an XML `Error` with `Code`); the counts say how often each path was asked.
struct FaultStore {
    url: String,
    hits: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

fn s3_error(status: u16, code: &str) -> axum::response::Response {
    axum::response::IntoResponse::into_response((
        axum::http::StatusCode::from_u16(status).unwrap(),
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{code}</Message></Error>"
        ),
    ))
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    for (name, body) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, body).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

async fn fault_store() -> FaultStore {
    let hits: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    let flaky = Arc::new(AtomicUsize::new(0));
    let good = zip_of(&[("a/restored.txt", b"after two 503s")]);
    let mut truncated = zip_of(&[("b/half.txt", &[b'x'; 4096])]);
    truncated.truncate(truncated.len() / 2);
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let counter = counter.clone();
        let flaky = flaky.clone();
        let good = good.clone();
        let truncated = truncated.clone();
        async move {
            let path = request.uri().path().to_owned();
            *counter
                .lock()
                .unwrap()
                .entry(format!("{} {path}", request.method()))
                .or_default() += 1;
            match path.as_str() {
                "/flaky" if flaky.fetch_add(1, Ordering::SeqCst) < 2 => s3_error(503, "SlowDown"),
                "/flaky" => axum::response::IntoResponse::into_response(good),
                "/forbidden" => s3_error(403, "AccessDenied"),
                "/nobucket" => s3_error(404, "NoSuchBucket"),
                "/truncated" => axum::response::IntoResponse::into_response(truncated),
                "/put-fails" => s3_error(500, "InternalError"),
                _ => s3_error(404, "NoSuchKey"),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    FaultStore { url, hits }
}

impl FaultStore {
    fn hits(&self, what: &str) -> usize {
        self.hits.lock().unwrap().get(what).copied().unwrap_or(0)
    }

    fn object(&self, key: &str, path: &str) -> Value {
        json!({"key": key, "location": {"remote": {"url": format!("{}{path}?X-Amz-Signature=s", self.url), "headers": []}}})
    }
}

/// Takes the enqueued job as the manager would and runs the agent on it with `caches`.
async fn run_agent(
    gitlab: &GitlabStandIn,
    spec: JobSpec,
    caches: Value,
    max_size: u64,
    dir: &Path,
) -> JobView {
    let id = gitlab.enqueue(spec);
    let client = GitlabClient::new(&ClientOptions {
        url: gitlab.url().to_owned(),
        ..Default::default()
    })
    .unwrap();
    let info = RunnerInfo::new("18.9.0", "shell", podrunner_agent::agent_features());
    let job = match client
        .request_job(&Secret::new(TOKEN), "s_0123456789ab", &info, None)
        .await
        .outcome
    {
        JobRequestOutcome::Job(job) => job,
        other => panic!("{other:?}"),
    };
    let ack = UpdateJobRequest {
        info: info.clone(),
        token: job.job.token.clone(),
        state: JobState::Running,
        failure_reason: None,
        checksum: None,
        output: None,
        exit_code: None,
    };
    client.update_job(job.job.id, &ack).await;
    let spec = json!({
        "gitlab": {"url": gitlab.url()},
        "job": job,
        "builds_dir": dir.join("builds"),
        "cache_dir": dir.join("cache"),
        "runner_short_token": "cachetes",
        "termination_report": dir.join("report.json"),
        "caches": caches,
        "cache_settings": {"max_uploaded_archive_size": max_size},
    });
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec_file(spec)).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(["agent", "--spec", spec_path.to_str().unwrap()])
        .status()
        .await
        .unwrap();
    gitlab
        .wait_for_job(id, Duration::from_secs(10), |j| {
            j.status == "success" || j.status == "failed"
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn store_faults_are_warnings_and_the_job_goes_on() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token(TOKEN);
    let store = fault_store().await;
    let dir = tempfile::tempdir().unwrap();
    let restore = |index: usize, key: &str, path: &str| json!({"index": index, "key": key, "pull": true, "restore": [store.object(key, path)]});
    let caches = json!([
        restore(0, "flaky", "/flaky"),
        restore(1, "forbidden", "/forbidden"),
        restore(2, "nobucket", "/nobucket"),
        restore(3, "truncated", "/truncated"),
        restore(4, "missing", "/missing"),
    ]);
    let payload = json!([
        {"key": "flaky", "paths": ["a/"], "policy": "pull"},
        {"key": "forbidden", "paths": ["x/"], "policy": "pull"},
        {"key": "nobucket", "paths": ["y/"], "policy": "pull"},
        {"key": "truncated", "paths": ["b/"], "policy": "pull"},
        {"key": "missing", "paths": ["z/"], "policy": "pull"},
    ]);
    let view = run_agent(
        &gitlab,
        cache_job("faults", &["cat a/restored.txt", "test ! -e b"], payload),
        caches,
        0,
        dir.path(),
    )
    .await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    // 5xx: retried as gitlab-runner does (two retries), then restored.
    assert_eq!(store.hits("GET /flaky"), 3, "{text}");
    assert!(text.contains("after two 503s"), "{text}");
    assert!(text.contains("403 AccessDenied"), "{text}");
    assert_eq!(store.hits("GET /forbidden"), 1, "a 403 is not retried");
    assert!(text.contains("404 NoSuchBucket"), "{text}");
    assert!(text.contains("/missing: not found"), "{text}");
    // The truncated archive is refused before anything is written: `test ! -e b` passed.
    assert!(
        text.matches("Failed to extract cache").count() >= 4,
        "{text}"
    );
    assert!(
        !text.contains("X-Amz-Signature"),
        "a signed URL reached the log: {text}"
    );

    // Saving: a store that keeps failing is retried, then a warning; an archive above
    // MaxUploadedArchiveSize is not sent.
    let save = |path: &str| json!([{"index": 0, "key": "deps", "push": true, "save": store.object("deps", path)}]);
    let job = || {
        cache_job(
            "save",
            &["mkdir -p deps", "head -c 4096 /dev/zero > deps/blob"],
            json!([{"key": "deps", "paths": ["deps/"], "policy": "push"}]),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let view = run_agent(&gitlab, job(), save("/put-fails"), 0, dir.path()).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert_eq!(store.hits("PUT /put-fails"), 3, "{text}");
    assert!(
        text.contains("Failed to create cache: cannot upload: 500 InternalError"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let view = run_agent(&gitlab, job(), save("/too-big"), 100, dir.path()).await;
    let text = trace(&view);
    assert_eq!(view.status, "success", "{text}");
    assert_eq!(store.hits("PUT /too-big"), 0, "{text}");
    assert!(
        text.contains("exceeds MaxUploadedArchiveSize (100 bytes): not uploaded"),
        "{text}"
    );
}

/// A spec file: the defaults of a spec built in code, with `fields` over them (a spec file
/// has no defaults of its own: every required field must be there).
fn spec_file(fields: serde_json::Value) -> String {
    let mut spec = serde_json::to_value(podrunner_agent::AgentSpec::default()).unwrap();
    for (key, value) in fields.as_object().unwrap() {
        spec[key] = value.clone();
    }
    spec.to_string()
}
