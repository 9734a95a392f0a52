//! `podrunner register`, `verify` and `unregister` against the testkit GitLab.

use std::path::Path;
use std::process::Output;

use podrunner_testkit::GitlabStandIn;

async fn podrunner(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .args(args)
        .env_remove("CONFIG_FILE")
        .env_remove("CI_SERVER_TOKEN")
        .env_remove("CI_SERVER_URL")
        .output()
        .await
        .expect("run podrunner")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn register_then_verify_then_unregister_with_an_authentication_token() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token("glrt-abcdefghijklmnop");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");

    let output = podrunner(&[
        "register",
        "-c",
        arg(&config),
        "--url",
        gitlab.url(),
        "--token",
        "glrt-abcdefghijklmnop",
        "--name",
        "eks",
        "--executor",
        "kubernetes",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("glrt-abcdefgh…")
            && !text(&output).contains("glrt-abcdefghijklmnop"),
        "the token is shortened: {}",
        text(&output)
    );
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("token = \"glrt-abcdefghijklmnop\"")
            && written.contains("executor = \"kubernetes\"")
            && written.contains("concurrent = 1"),
        "{written}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600,
        "config.toml holds tokens"
    );
    let system_id = std::fs::read_to_string(dir.path().join(".runner_system_id"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        system_id.len() == 14 && (system_id.starts_with("s_") || system_id.starts_with("r_")),
        "{system_id}"
    );
    assert_eq!(
        gitlab.managers(),
        vec![("glrt-abcdefghijklmnop".to_owned(), system_id.clone())],
        "verify announced this manager"
    );

    // The written file is a valid configuration.
    let check = podrunner(&["config", "check", "-c", arg(&config)]).await;
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    let output = podrunner(&["verify", "-c", arg(&config)]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("Verifying runner eks (glrt-abcdefgh…)... is valid"),
        "{}",
        text(&output)
    );

    // Registering again with the same token updates the entry instead of adding one.
    let output = podrunner(&[
        "register",
        "-c",
        arg(&config),
        "--url",
        gitlab.url(),
        "--token",
        "glrt-abcdefghijklmnop",
        "--name",
        "eks",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        std::fs::read_to_string(&config)
            .unwrap()
            .matches("[[runners]]")
            .count(),
        1
    );

    let output = podrunner(&["unregister", "-c", arg(&config), "--name", "eks"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        gitlab.managers().is_empty(),
        "DELETE runners/managers removed this manager"
    );
    assert!(
        gitlab.runner_token_valid("glrt-abcdefghijklmnop"),
        "the runner itself stays in GitLab"
    );
    assert!(
        !std::fs::read_to_string(&config)
            .unwrap()
            .contains("glrt-abcdefghijklmnop")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_registration_and_verify_of_a_removed_runner() {
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_registration_token("GR1348941reg");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "# mine\nconcurrent = 4\n").unwrap();

    let output = podrunner(&[
        "register",
        "-c",
        arg(&config),
        "--url",
        gitlab.url(),
        "--registration-token",
        "GR1348941reg",
        "--executor",
        "shell",
        "--name",
        "legacy",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.starts_with("# mine\nconcurrent = 4\n") && written.contains("executor = \"shell\""),
        "{written}"
    );
    let register = gitlab
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v4/runners")
        .unwrap();
    assert_eq!(
        register.json.as_ref().unwrap()["run_untagged"],
        true,
        "no tags: run untagged"
    );

    let output = podrunner(&[
        "register",
        "-c",
        arg(&config),
        "--url",
        gitlab.url(),
        "--token",
        "wrong",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("refused the token (403)"),
        "{}",
        text(&output)
    );

    // The runner is deleted in GitLab: verify says so, and --delete cleans the file.
    let token = written
        .lines()
        .find_map(|l| l.trim().strip_prefix("token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let output = podrunner(&["unregister", "-c", arg(&config), "--token", &token]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = podrunner(&[
        "register",
        "-c",
        arg(&config),
        "--url",
        gitlab.url(),
        "--registration-token",
        "GR1348941reg",
        "--executor",
        "shell",
        "--name",
        "second",
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let written = std::fs::read_to_string(&config).unwrap();
    let token = written
        .lines()
        .find_map(|l| l.trim().strip_prefix("token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let unregister_in_gitlab_only = reqwest_free_delete(&gitlab, &token).await;
    assert!(unregister_in_gitlab_only);
    let output = podrunner(&["verify", "-c", arg(&config)]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("is removed"), "{}", text(&output));
    let output = podrunner(&["verify", "-c", arg(&config), "--delete"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(!std::fs::read_to_string(&config).unwrap().contains(&token));

    let output = podrunner(&["unregister", "-c", arg(&config)]).await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "one of --name, --token, --all-runners is required"
    );
}

/// Deletes a legacy runner in GitLab behind podrunner's back, with a raw HTTP request.
async fn reqwest_free_delete(gitlab: &GitlabStandIn, token: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = gitlab.url().trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = format!("{{\"token\":\"{token}\"}}");
    let request = format!(
        "DELETE /api/v4/runners HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.starts_with("HTTP/1.1 204")
}

#[tokio::test(flavor = "multi_thread")]
async fn register_never_writes_through_a_stale_or_planted_temporary_file() {
    use std::os::unix::fs::PermissionsExt;
    let gitlab = GitlabStandIn::start().await;
    gitlab.add_runner_token("glrt-abcdefghijklmnop");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let args = [
        "register",
        "-c",
        arg(&config),
        "--url",
        gitlab.url(),
        "--token",
        "glrt-abcdefghijklmnop",
        "--name",
        "eks",
        "--executor",
        "kubernetes",
    ];
    let register = || podrunner(&args);
    // A stale world-readable temporary file from an earlier run.
    let stale = dir.path().join("config.toml.tmp");
    std::fs::write(&stale, "stale").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = register().await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600,
        "the token file is private"
    );
    assert_eq!(std::fs::read_to_string(&stale).unwrap(), "stale");
    std::fs::remove_file(&stale).unwrap();

    // A link under that name, pointing where another user can read.
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("stolen");
    std::os::unix::fs::symlink(&target, &stale).unwrap();
    std::fs::remove_file(&config).unwrap();
    let output = register().await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(!target.exists(), "written through the planted link");
    assert!(
        std::fs::symlink_metadata(&config)
            .unwrap()
            .file_type()
            .is_file()
    );
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("glrt-abcdefghijklmnop")
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") && n != "config.toml.tmp")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
