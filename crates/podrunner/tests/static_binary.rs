//! The static podrunner binary in an empty root filesystem (bubblewrap), as in a `scratch`
//! image or a job image without anything podrunner needs. `scripts/test` builds the binary
//! (`+crt-static`) and sets `PODRUNNER_STATIC_BINARY`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use podrunner_gitlab::{
    ClientOptions, Features, GitlabClient, JobRequestOutcome, RunnerInfo, Secret,
};
use podrunner_testkit::{GitlabStandIn, JobSpec};

fn static_binary() -> PathBuf {
    let path = std::env::var_os("PODRUNNER_STATIC_BINARY")
        .map(PathBuf::from)
        .expect(
            "PODRUNNER_STATIC_BINARY is not set: scripts/test builds the static binary and sets it",
        );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// A root holding only the static podrunner (and what `extra` adds).
fn root_with_podrunner(extra: impl FnOnce(&Path)) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(static_binary(), root.path().join("podrunner")).unwrap();
    extra(root.path());
    root
}

fn bwrap(root: &Path, share_net: bool, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new("bwrap");
    command.args(["--unshare-all", "--die-with-parent"]);
    if share_net {
        command.arg("--share-net");
    }
    command
        .arg("--bind")
        .arg(root)
        .arg("/")
        .args([
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--clearenv",
            "--setenv",
            "PATH",
            "/bin",
        ])
        .args(args);
    command
}

#[test]
fn version_and_config_check_in_an_empty_root() {
    let root = root_with_podrunner(|root| {
        std::fs::write(root.join("config.toml"), "concurrent = 1\n[[runners]]\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n    namespace = \"ci\"\n    cpu_request = \"2\"\n").unwrap();
    });
    let version = bwrap(root.path(), false, &["/podrunner", "--version"])
        .output()
        .expect("bwrap (bubblewrap) must be installed");
    assert!(
        version.status.success(),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("podrunner {}", env!("CARGO_PKG_VERSION"))
    );
    let check = bwrap(
        root.path(),
        false,
        &["/podrunner", "config", "check", "-c", "/config.toml"],
    )
    .output()
    .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("cpu request 2"));
    // The init container's job: copy itself where the build container will find it.
    let install = bwrap(
        root.path(),
        false,
        &["/podrunner", "install-agent", "/podrunner-bin"],
    )
    .output()
    .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    assert!(root.path().join("podrunner-bin/podrunner").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_a_job_in_an_image_with_only_a_shell() {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox-static must be installed (.ci/run installs it)");
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token("glrt-static");
    let head = gitlab
        .create_repository(
            "group/static",
            &[("message.txt", "fetched by the built-in git\n")],
        )
        .unwrap();
    let id = gitlab.enqueue(
        JobSpec::new(
            "static",
            &[
                "cat message.txt",
                "echo \"running as PID 1? $(cat /proc/1/comm)\"",
            ],
        )
        .git("group/static", &head),
    );
    let client = GitlabClient::new(&ClientOptions {
        url: gitlab.url().to_owned(),
        ..Default::default()
    })
    .unwrap();
    let info = RunnerInfo::new(
        "18.9.0",
        "kubernetes",
        Features {
            refspecs: true,
            ..Features::network()
        },
    );
    let JobRequestOutcome::Job(job) = client
        .request_job(&Secret::new("glrt-static"), "s_0123456789ab", &info, None)
        .await
        .outcome
    else {
        panic!("no job")
    };
    // GitLab's two-phase commit: the job runs once the manager acknowledges it.
    let (outcome, _) = client
        .update_job(
            job.job.id,
            &podrunner_gitlab::UpdateJobRequest {
                info: info.clone(),
                token: job.job.token.clone(),
                state: podrunner_gitlab::JobState::Running,
                failure_reason: None,
                checksum: None,
                output: None,
                exit_code: None,
            },
        )
        .await;
    assert_eq!(outcome, podrunner_gitlab::UpdateOutcome::Succeeded);
    let root = root_with_podrunner(|root| {
        std::fs::create_dir_all(root.join("bin")).unwrap();
        for applet in ["sh", "cat"] {
            std::fs::copy(&busybox, root.join("bin").join(applet)).unwrap();
        }
        let spec = serde_json::json!({"gitlab": {"url": gitlab.url()}, "job": job, "builds_dir": "/builds", "executor": "kubernetes"});
        std::fs::write(root.join("spec.json"), spec_file(spec)).unwrap();
    });
    let path = root.path().to_owned();
    let status = tokio::task::spawn_blocking(move || {
        bwrap(
            &path,
            true,
            &["--as-pid-1", "/podrunner", "agent", "--spec", "/spec.json"],
        )
        .status()
        .unwrap()
    })
    .await
    .unwrap();
    let view = gitlab
        .wait_for_job(id, Duration::from_secs(10), |j| {
            j.status == "success" || j.status == "failed"
        })
        .await;
    let trace = String::from_utf8_lossy(&view.trace).into_owned();
    assert!(status.success() && view.status == "success", "{trace}");
    assert!(
        trace.contains("(built-in git)") && trace.contains("fetched by the built-in git"),
        "{trace}"
    );
    assert!(
        trace.contains("running as PID 1? podrunner"),
        "the agent is PID 1 of the sandbox and does init duties: {trace}"
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
