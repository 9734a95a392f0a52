//! `podrunner exec --list` and `--preview`: the pipeline as GitLab would build it, without
//! running anything.

use std::path::Path;
use std::process::{Command, Output};

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        std::fs::write(dir.path().join(path), text).unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "first"]);
    dir
}

fn exec(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .arg("exec")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

const PIPELINE: &str = "include: base.yml\nstages: [build, test]\nbuild:\n  extends: .base\n  parallel: 2\ntest:\n  script: [echo test]\n  needs: [build]\n  allow_failure: true\nmanual:\n  script: [echo manual]\n  when: manual\ntag-only:\n  script: [echo tag]\n  rules:\n    - if: $CI_COMMIT_TAG\n";

#[test]
fn list_shows_jobs_with_stage_when_allow_failure_and_needs() {
    let dir = project(&[
        (".gitlab-ci.yml", PIPELINE),
        (
            "base.yml",
            ".base:\n  stage: build\n  script: [echo build]\n  tags: [docker]\n",
        ),
    ]);
    let output = exec(dir.path(), &["--list"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "name       stage  when        allow_failure  needs\n\
         build 1/2  build  on_success  false\n\
         build 2/2  build  on_success  false\n\
         test       test   on_success  true           [build 1/2, build 2/2]\n\
         manual     test   manual      true\n"
    );
    assert!(stderr.contains("warning: `tags` is ignored"), "{stderr}");
}

#[test]
fn preview_prints_the_configuration_after_include_and_extends() {
    let dir = project(&[
        (".gitlab-ci.yml", PIPELINE),
        (
            "base.yml",
            ".base:\n  stage: build\n  script: [echo build]\n",
        ),
    ]);
    let output = exec(dir.path(), &["--preview"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with(".base:\n"),
        "included jobs come first: {stdout}"
    );
    assert!(
        stdout.contains("build:\n  stage: build\n  script:\n  - echo build\n  parallel: 2\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("include:") && !stdout.contains("extends:"),
        "{stdout}"
    );
}

#[test]
fn list_names_a_bad_keyword_with_a_suggestion() {
    let dir = project(&[(".gitlab-ci.yml", "job:\n  scirpt: [x]\n")]);
    let output = exec(dir.path(), &["--list"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr.contains("unknown keyword `scirpt` (did you mean `script`?)"),
        "{stderr}"
    );
}
