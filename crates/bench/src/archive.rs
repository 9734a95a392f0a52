//! The archive benchmark: cache and artifact archives made, uploaded, downloaded and extracted
//! by the agent's own code (`podrunner_agent::files`, `podrunner_agent::transfer`), each step
//! in a child process whose peak RSS (`VmHWM`) is read at its end, against a local S3 server
//! (moto in server mode, when its venv exists, and an in-process HTTP object store), next to
//! `zip -r -q` and `unzip -q` on the same trees.
//!
//!     cargo build --release -p podrunner-bench
//!     target/release/podrunner-bench archive [--moto PATH/TO/moto_server] [--files N] [--mb MB] [--huge-mb MB] [--runs N]
//!
//! See `docs/benchmarks.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use podrunner_agent::files::{self, CompressionLevel, ZipOptions};
use podrunner_agent::transfer::{self, TransferOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A small deterministic generator (xorshift64*), so every run builds the same tree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A standard normal deviate (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.max(1e-12).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// About 1 MiB of JavaScript-like text to cut files from.
fn corpus(rng: &mut Rng) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "function",
        "return",
        "const",
        "let",
        "var",
        "if",
        "else",
        "for",
        "while",
        "this",
        "module",
        "exports",
        "require",
        "undefined",
        "null",
        "true",
        "false",
        "new",
        "typeof",
        "prototype",
        "length",
        "value",
        "options",
        "callback",
        "error",
        "result",
        "object",
        "string",
        "number",
        "Array",
        "Object",
        "Promise",
        "resolve",
        "reject",
        "async",
        "await",
        "default",
        "props",
        "state",
        "config",
        "index",
        "key",
        "name",
        "type",
        "data",
        "path",
    ];
    const PUNCT: &[&str] = &[
        " ", " ", " ", ".", "(", ")", "{", "}", ";\n", ", ", " = ", " === ", "\n  ", "[", "]",
        " => ", ": ", "'", "\"",
    ];
    let mut text = Vec::with_capacity(1 << 20);
    while text.len() < 1 << 20 {
        text.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        if rng.below(4) == 0 {
            text.extend_from_slice(rng.below(100_000).to_string().as_bytes());
        }
        text.extend_from_slice(PUNCT[rng.below(PUNCT.len() as u64) as usize].as_bytes());
    }
    text
}

/// What a generated tree holds.
struct Tree {
    files: usize,
    bytes: u64,
}

/// A node_modules-like tree under `root/node_modules`: packages of nested directories,
/// sizes log-normal (median about 3 KiB, a long tail up to 16 MiB) scaled to `total` bytes,
/// 85% text and 15% incompressible binary, and `.bin` links into the packages.
fn node_modules(root: &Path, files: usize, total: u64, seed: u64) -> Tree {
    let mut rng = Rng(seed);
    let text = corpus(&mut rng);
    let raw: Vec<f64> = (0..files)
        .map(|_| (8.0 + 1.5 * rng.normal()).exp().min(16.0 * 1048576.0))
        .collect();
    let scale = total as f64 / raw.iter().sum::<f64>();
    let base = root.join("node_modules");
    let mut written = 0u64;
    let mut package = 0;
    let mut in_package = 0;
    let mut dirs = vec![PathBuf::new()];
    for (i, size) in raw.iter().enumerate() {
        if in_package == 0 {
            package += 1;
            in_package = 5 + rng.below(30) as usize;
            let name = if rng.below(4) == 0 {
                format!("@scope{}/pkg-{package}", rng.below(40))
            } else {
                format!("pkg-{package}")
            };
            let pkg = PathBuf::from(name);
            dirs = vec![
                pkg.clone(),
                pkg.join("lib"),
                pkg.join("dist"),
                pkg.join("lib/internal"),
                pkg.join("src/utils"),
            ];
            for dir in &dirs {
                std::fs::create_dir_all(base.join(dir)).expect("package directory");
            }
            if package % 20 == 0 {
                std::fs::create_dir_all(base.join(".bin")).expect(".bin");
                let _ = std::os::unix::fs::symlink(
                    format!("../{}/lib/index.js", pkg.display()),
                    base.join(format!(".bin/tool-{package}")),
                );
            }
        }
        in_package -= 1;
        let size = ((size * scale) as u64).max(1) as usize;
        let binary = rng.below(100) < 15;
        let name = if binary {
            format!("blob-{i}.node")
        } else {
            format!("file-{i}.js")
        };
        let dir = &dirs[rng.below(dirs.len() as u64) as usize];
        let mut content = Vec::with_capacity(size);
        if binary {
            while content.len() < size {
                content.extend_from_slice(&rng.next().to_le_bytes());
            }
            content.truncate(size);
        } else {
            while content.len() < size {
                let at = rng.below(text.len() as u64) as usize;
                let take = (size - content.len()).min(text.len() - at);
                content.extend_from_slice(&text[at..at + take]);
            }
        }
        std::fs::write(base.join(dir).join(name), &content).expect("file");
        written += size as u64;
    }
    Tree {
        files,
        bytes: written,
    }
}

/// A build-output tree for artifacts: fewer, larger files (bundles, maps, binaries).
fn build_output(root: &Path, files: usize, total: u64, seed: u64) -> Tree {
    let mut rng = Rng(seed);
    let text = corpus(&mut rng);
    let base = root.join("node_modules");
    std::fs::create_dir_all(base.join("assets")).expect("dist");
    let each = total / files as u64;
    for i in 0..files {
        let binary = i % 4 == 0;
        let mut content = Vec::with_capacity(each as usize);
        while (content.len() as u64) < each {
            if binary {
                content.extend_from_slice(&rng.next().to_le_bytes());
            } else {
                let at = rng.below(text.len() as u64) as usize;
                let take = (each as usize - content.len()).min(text.len() - at);
                content.extend_from_slice(&text[at..at + take]);
            }
        }
        content.truncate(each as usize);
        let name = if binary {
            format!("assets/image-{i}.bin")
        } else {
            format!("bundle-{i}.js")
        };
        std::fs::write(base.join(name), &content).expect("file");
    }
    Tree {
        files,
        bytes: each * files as u64,
    }
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

const OPTIONS: TransferOptions = TransferOptions {
    timeout: Duration::from_secs(600),
};

/// The child: one agent-side step, then its time and peak RSS as JSON on stdout.
async fn child(args: &[String]) {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut phases = serde_json::Map::new();
    let mut phase = |name: &str, since: Instant| {
        phases.insert(name.to_owned(), json!(since.elapsed().as_secs_f64()));
    };
    match arg(0).as_str() {
        // archive ROOT TARGET LEVEL [URL]
        "archive" => {
            let root = PathBuf::from(arg(1));
            let level = CompressionLevel::from_name(&arg(3)).expect("level");
            let collected =
                files::collect(&root, &["node_modules".into()], &[], &[]).expect("collect");
            files::write_zip_with(
                &root,
                &collected.entries,
                Path::new(&arg(2)),
                &ZipOptions { level },
            )
            .expect("write_zip");
            phase("archive_s", started);
            if let Some(url) = args.get(4) {
                let upload = Instant::now();
                // moto answers unsigned GETs of private objects with 403.
                let public = [("x-amz-acl".to_owned(), "public-read".to_owned())];
                transfer::upload(&client, url, &public, Path::new(&arg(2)), OPTIONS)
                    .await
                    .expect("upload");
                phase("upload_s", upload);
            }
        }
        // extract ARCHIVE ROOT [URL]
        "extract" => {
            if let Some(url) = args.get(3) {
                transfer::download(&client, url, &[], Path::new(&arg(1)), OPTIONS)
                    .await
                    .expect("download");
                phase("download_s", started);
            }
            let extract = Instant::now();
            files::extract_zip(Path::new(&arg(1)), Path::new(&arg(2))).expect("extract");
            phase("extract_s", extract);
        }
        other => panic!("unknown archive-child step {other:?}"),
    }
    phases.insert("total_s".into(), json!(started.elapsed().as_secs_f64()));
    phases.insert("vm_hwm_kib".into(), json!(vm_hwm_kib()));
    println!("{}", Value::Object(phases));
}

fn run_child(args: &[&str]) -> Value {
    let me = std::env::current_exe().expect("current exe");
    let output = Command::new(me)
        .arg("archive-child")
        .args(args)
        .output()
        .expect("start the child");
    assert!(
        output.status.success(),
        "archive-child {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("child json")
}

/// Seconds of a command, or `None` when it is not installed.
fn timed(program: &str, args: &[&str], dir: &Path) -> Option<f64> {
    let started = Instant::now();
    match Command::new(program).args(args).current_dir(dir).status() {
        Ok(status) if status.success() => Some(started.elapsed().as_secs_f64()),
        Ok(status) => panic!("{program} {args:?} failed: {status}"),
        Err(_) => None,
    }
}

/// An in-process object store: PUT stores the body in a file, GET streams it back.
async fn object_store(dir: PathBuf) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let _ = serve(socket, &dir).await;
            });
        }
    });
    format!("http://{address}")
}

async fn serve(socket: tokio::net::TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut socket = BufReader::with_capacity(256 << 10, socket);
    loop {
        let mut line = String::new();
        if socket.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut length = 0u64;
        loop {
            let mut header = String::new();
            socket.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let file = dir.join(target.replace('/', "_"));
        if method == "PUT" {
            let mut out = tokio::fs::File::create(&file).await?;
            tokio::io::copy(&mut (&mut socket).take(length), &mut out).await?;
            out.flush().await?;
            socket
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await?;
        } else {
            match tokio::fs::File::open(&file).await {
                Ok(mut input) => {
                    let len = input.metadata().await?.len();
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                    socket.get_mut().write_all(head.as_bytes()).await?;
                    tokio::io::copy(&mut input, socket.get_mut()).await?;
                }
                Err(_) => {
                    socket
                        .get_mut()
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .await?
                }
            }
        }
    }
}

/// Starts moto's S3 server on a free port and makes the bucket; `None` when absent.
async fn moto(program: &Path) -> Option<(tokio::process::Child, String)> {
    if !program.is_file() {
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = tokio::process::Command::new(program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .put(format!("{url}/bench"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some((child, format!("{url}/bench")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn mbps(bytes: u64, seconds: f64) -> f64 {
    (bytes as f64 / 1e6 / seconds * 10.0).round() / 10.0
}

fn seconds(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// The fastest of `runs` runs of a child step (by `key`), with the highest peak RSS seen.
fn best(runs: usize, key: &str, mut step: impl FnMut(usize) -> Value) -> Value {
    let mut best: Option<Value> = None;
    let mut rss = 0;
    for run in 0..runs.max(1) {
        let v = step(run);
        rss = rss.max(v["vm_hwm_kib"].as_u64().unwrap_or(0));
        if best
            .as_ref()
            .is_none_or(|b| seconds(&v, key) < seconds(b, key))
        {
            best = Some(v);
        }
    }
    let mut best = best.unwrap_or_default();
    best["vm_hwm_kib"] = json!(rss);
    best
}

/// The fastest of `runs` runs of a command, or why it did not run.
fn best_command(runs: usize, bytes: u64, mut step: impl FnMut(usize) -> Option<f64>) -> Value {
    let mut fastest: Option<f64> = None;
    for run in 0..runs.max(1) {
        match step(run) {
            Some(s) => fastest = Some(fastest.map_or(s, |f: f64| f.min(s))),
            None => return json!("not installed"),
        }
    }
    let s = fastest.unwrap_or(f64::NAN);
    json!({"mb_per_s": mbps(bytes, s), "seconds": s})
}

/// One tree through podrunner (archive + upload, download + extract, per store) and
/// through zip/unzip, each the fastest of `runs`. Every extraction gets a directory of its
/// own, and nothing is deleted until the whole benchmark ends: creating files right after
/// deleting as many makes ext4 scan its recently freed inodes, which would blur the figures.
async fn measure(
    label: &str,
    work: &Path,
    tree: &Tree,
    stores: &[(&str, String)],
    runs: usize,
) -> Value {
    let root = work.join(label);
    let root_s = root.to_str().expect("utf-8 path");
    let bytes = tree.bytes;
    let fresh = |step: &str, run: usize| work.join(format!("{label}-{step}-{run}"));
    let mut report = serde_json::Map::new();
    report.insert("files".into(), json!(tree.files));
    report.insert("mb".into(), json!(bytes as f64 / 1e6));
    // Warm the page cache, so every contender reads the tree from memory.
    let _ = Command::new("sh")
        .args(["-c", "find node_modules -type f -exec cat {} + > /dev/null"])
        .current_dir(&root)
        .status();

    let archive = work.join(format!("{label}.zip"));
    let archive_s = archive.to_str().expect("utf-8 path");
    // The default level last: the extractions below read its archive.
    for level in ["fastest", "fast", "default"] {
        let v = best(runs, "archive_s", |_| {
            run_child(&["archive", root_s, archive_s, level])
        });
        let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        report.insert(
            format!("podrunner_archive_{level}"),
            json!({"mb_per_s": mbps(bytes, seconds(&v, "archive_s")), "seconds": seconds(&v, "archive_s"),
                   "archive_mb": size as f64 / 1e6, "peak_rss_kib": v["vm_hwm_kib"]}),
        );
    }
    let v = best(runs, "extract_s", |run| {
        let out = fresh("extract", run);
        run_child(&["extract", archive_s, out.to_str().expect("utf-8")])
    });
    report.insert(
        "podrunner_extract".into(),
        json!({"mb_per_s": mbps(bytes, seconds(&v, "extract_s")), "seconds": seconds(&v, "extract_s"), "peak_rss_kib": v["vm_hwm_kib"]}),
    );

    for (store, base) in stores {
        let url = format!("{base}/{label}-cache.zip");
        let uploaded = work.join(format!("{label}-{store}.zip"));
        let uploaded_s = uploaded.to_str().expect("utf-8");
        let v = best(runs, "total_s", |_| {
            run_child(&["archive", root_s, uploaded_s, "default", &url])
        });
        let (a, u) = (seconds(&v, "archive_s"), seconds(&v, "upload_s"));
        report.insert(
            format!("podrunner_archive_upload_{store}"),
            json!({"mb_per_s": mbps(bytes, a + u), "archive_s": a, "upload_s": u, "peak_rss_kib": v["vm_hwm_kib"]}),
        );
        let v = best(runs, "total_s", |run| {
            let downloaded = work.join(format!("{label}-{store}-downloaded-{run}.zip"));
            let out = fresh(&format!("{store}-extract"), run);
            run_child(&[
                "extract",
                downloaded.to_str().expect("utf-8"),
                out.to_str().expect("utf-8"),
                &url,
            ])
        });
        let (d, x) = (seconds(&v, "download_s"), seconds(&v, "extract_s"));
        report.insert(
            format!("podrunner_download_extract_{store}"),
            json!({"mb_per_s": mbps(bytes, d + x), "download_s": d, "extract_s": x, "peak_rss_kib": v["vm_hwm_kib"]}),
        );
    }

    report.insert(
        "zip_r_q".into(),
        best_command(runs, bytes, |run| {
            let zipped = work.join(format!("{label}-infozip-{run}.zip"));
            timed(
                "zip",
                &[
                    "-r",
                    "-q",
                    "-y",
                    zipped.to_str().expect("utf-8"),
                    "node_modules",
                ],
                &root,
            )
        }),
    );
    report.insert(
        "unzip_q".into(),
        best_command(runs, bytes, |run| {
            let out = fresh("unzip", run);
            std::fs::create_dir_all(&out).expect("unzip directory");
            timed("unzip", &["-q", archive_s], &out)
        }),
    );
    for tool in ["zip", "unzip"] {
        if report[&format!("{tool}_{}", if tool == "zip" { "r_q" } else { "q" })].is_string() {
            eprintln!("{tool} is not installed: its column is missing (apt-get install {tool})");
        }
    }
    Value::Object(report)
}

/// `archive` (the benchmark) or `archive-child` (one step of it).
pub async fn main(mode: &str, args: &[String]) {
    if mode == "archive-child" {
        return child(args).await;
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let files: usize = flag("--files")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mb: u64 = flag("--mb").and_then(|v| v.parse().ok()).unwrap_or(200);
    let huge_mb: u64 = flag("--huge-mb")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runs: usize = flag("--runs").and_then(|v| v.parse().ok()).unwrap_or(3);
    let moto_path = PathBuf::from(
        flag("--moto").unwrap_or_else(|| "target/bench-venv/bin/moto_server".to_owned()),
    );
    let work = std::env::temp_dir().join(format!("podrunner-archive-bench-{}", std::process::id()));
    std::fs::create_dir_all(work.join("objects")).expect("work dir");

    let mut stores = vec![("in_process", object_store(work.join("objects")).await)];
    let moto = moto(&moto_path).await;
    if let Some((_, url)) = &moto {
        stores.push(("moto", url.clone()));
    }

    let cache = node_modules(&work.join("cache"), files, mb * 1_000_000, 7);
    let artifacts = build_output(&work.join("artifacts"), 400, mb * 1_000_000, 11);
    let mut report = serde_json::Map::new();
    report.insert(
        "cores".into(),
        json!(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        ),
    );
    report.insert(
        "moto".into(),
        json!(if moto.is_some() {
            moto_path.display().to_string()
        } else {
            format!("absent ({}): in-process store only", moto_path.display())
        }),
    );
    report.insert(
        "cache_node_modules".into(),
        measure("cache", &work, &cache, &stores, runs).await,
    );
    report.insert(
        "artifacts_build_output".into(),
        measure("artifacts", &work, &artifacts, &stores, runs).await,
    );
    if huge_mb > 0 {
        // One large file: peak RSS must not grow with the archive.
        let huge = build_output(&work.join("huge"), 1, huge_mb * 1_000_000, 13);
        report.insert(
            "huge_single_file".into(),
            measure("huge", &work, &huge, &stores[..1], 1).await,
        );
    }
    drop(moto);
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(report)).expect("json")
    );
    // Deleting a few hundred thousand files takes a while on a disk mounted with `discard`.
    let _ = std::fs::remove_dir_all(&work);
}
