//! `podrunner exec` on local pipelines.

use std::process::Output;

fn exec(args: &[&str], dir: &std::path::Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
        .arg("exec")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_bundled_hello_pipeline_passes_an_artifact_between_jobs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let artifacts = tempfile::tempdir().unwrap();
    let output = exec(
        &[
            "--file",
            "examples/hello/.gitlab-ci.yml",
            "--artifacts-dir",
            artifacts.path().to_str().unwrap(),
        ],
        &root,
    );
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("Hello from podrunner (job build in stage build)"),
        "{out}"
    );
    assert!(out.contains("the artifact of build arrived"), "{out}");
    assert!(
        out.contains("after_script of test sees CI_JOB_STATUS=success"),
        "{out}"
    );
    assert!(
        out.contains("(step_script took "),
        "sections as headers with durations: {out}"
    );
    assert!(!out.contains('\x1b'), "no colours when not on a terminal");
    // A later run of only `test` still receives build's artifact.
    let output = exec(
        &[
            "test",
            "--file",
            "examples/hello/.gitlab-ci.yml",
            "--artifacts-dir",
            artifacts.path().to_str().unwrap(),
        ],
        &root,
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("Downloading artifacts for build"),
        "{}",
        text(&output)
    );
}

#[test]
fn failures_stop_later_stages_and_bad_pipelines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".gitlab-ci.yml"),
        "stages: [one, two]\nflaky:\n  stage: one\n  allow_failure: true\n  script: exit 4\nbroken:\n  stage: one\n  script:\n    - echo \"value is $MY_VAR\"\n    - exit 3\nlater:\n  stage: two\n  script: echo never\n",
    )
    .unwrap();
    let output = exec(&["--var", "MY_VAR=from-cli"], dir.path());
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("value is from-cli") && out.contains("ERROR: Job failed: exit code 3"),
        "{out}"
    );
    assert!(
        out.contains("Skipping later: a job of an earlier stage failed")
            && !out.contains("\nnever"),
        "{out}"
    );
    assert!(out.contains("failed, allowed"), "{out}");

    std::fs::write(
        dir.path().join("ci.yml"),
        "job:\n  script: echo x\n  rules:\n    - if: $CI\n",
    )
    .unwrap();
    let output = exec(&["--file", "ci.yml"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("uses `rules`, which podrunner exec cannot honour"),
        "{}",
        text(&output)
    );
    let output = exec(&["nope", "--file", "ci.yml"], dir.path());
    assert!(
        text(&output).contains("rules"),
        "the file is checked before jobs are looked up: {}",
        text(&output)
    );
}
