//! The stand-in's git server, exercised with the real git client.

use podrunner_testkit::{GitlabStandIn, JobSpec};

fn git(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_with_the_job_token_only() {
    let gitlab = GitlabStandIn::start().await;
    let sha = gitlab
        .create_repository(
            "group/project",
            &[("README.md", "hello\n"), ("src/main.sh", "echo hi\n")],
        )
        .unwrap();
    gitlab.add_runner_token("glrt-x");
    let id = gitlab.enqueue(JobSpec::new("build", &["true"]).git("group/project", &sha));
    gitlab.set_status(id, "running");
    let token = gitlab.job_token(id).unwrap();
    let host = gitlab.url().trim_start_matches("http://").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    let (ok, denied) = tokio::task::spawn_blocking(move || {
        let ok = git(
            &[
                "clone",
                "--quiet",
                &format!("http://gitlab-ci-token:{token}@{host}/group/project.git"),
                "checkout",
            ],
            &dir,
        );
        let denied = git(
            &[
                "clone",
                "--quiet",
                &format!("http://gitlab-ci-token:glcbt-wrong@{host}/group/project.git"),
                "denied",
            ],
            &dir,
        );
        let head = git(&["rev-parse", "HEAD"], &dir.join("checkout"));
        (
            ok.status
                .success()
                .then(|| String::from_utf8_lossy(&head.stdout).trim().to_owned())
                .ok_or(String::from_utf8_lossy(&ok.stderr).into_owned()),
            denied,
        )
    })
    .await
    .unwrap();
    assert_eq!(ok.unwrap(), sha);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Authentication failed")
            || String::from_utf8_lossy(&denied.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let second = gitlab
        .add_commit("group/project", &[("README.md", "changed\n")])
        .unwrap();
    assert_ne!(second, sha);
}
