//! `podrunner exec` on local pipelines.

use std::process::Output;

#[path = "support/hostile_zips.rs"]
mod hostile_zips;

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
    assert!(out.contains("failed (allowed): exit code 4"), "{out}");

    // `rules` are evaluated as GitLab would for a push; a misspelt keyword is named.
    std::fs::write(
        dir.path().join("ci.yml"),
        "job:\n  script: echo ran-by-rule\n  rules:\n    - if: $CI\n\
         skipped:\n  script: echo never-printed\n  rules:\n    - if: $NOPE == \"x\"\n",
    )
    .unwrap();
    let output = exec(&["--file", "ci.yml"], dir.path());
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("ran-by-rule") && !out.contains("never-printed"),
        "{out}"
    );
    std::fs::write(dir.path().join("ci.yml"), "job:\n  scirpt: echo x\n").unwrap();
    let output = exec(&["nope", "--file", "ci.yml"], dir.path());
    assert!(
        text(&output).contains("did you mean `script`"),
        "the file is checked before jobs are looked up: {}",
        text(&output)
    );
}

fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_named(&path, name));
        }
        if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
    out
}

#[test]
fn job_names_are_never_paths() {
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("project");
    let artifacts = root.path().join("one/two/three/artifacts");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join(".gitlab-ci.yml"),
        "stages: [build, test]\n\"x/../../../escaped\":\n  stage: build\n  script: echo built > out.txt\n  artifacts:\n    paths: [out.txt]\nlater:\n  stage: test\n  script: cat out.txt\n",
    )
    .unwrap();
    let output = exec(&["--artifacts-dir", artifacts.to_str().unwrap()], &project);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("built"),
        "the artifact still reaches later jobs: {out}"
    );
    let escaped: Vec<_> = files_named(root.path(), "escaped")
        .into_iter()
        .chain(files_named(root.path(), "artifacts.zip"))
        .filter(|p| !p.starts_with(&artifacts))
        .collect();
    assert!(
        escaped.is_empty(),
        "written outside the artifacts directory: {escaped:?}"
    );
}

#[test]
fn hostile_artifacts_write_nothing_outside_and_leave_nothing_behind() {
    let outside = tempfile::tempdir().unwrap();
    for (name, archive) in hostile_zips::all(outside.path()) {
        let root = tempfile::tempdir().unwrap();
        let project = root.path().join("project");
        let artifacts = root.path().join("artifacts");
        std::fs::create_dir_all(artifacts.join("build")).unwrap();
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(artifacts.join("build/artifacts.zip"), archive).unwrap();
        std::fs::write(
            project.join(".gitlab-ci.yml"),
            "stages: [build, test]\nbuild:\n  stage: build\n  script: true\ntest:\n  stage: test\n  needs: [build]\n  script: echo ran\n",
        )
        .unwrap();
        let output = exec(
            &["test", "--artifacts-dir", artifacts.to_str().unwrap()],
            &project,
        );
        let out = text(&output);
        assert_eq!(output.status.code(), Some(1), "{name}: {out}");
        assert!(
            out.contains("nothing was extracted") || out.contains("cannot be read"),
            "{name}: {out}"
        );
        hostile_zips::assert_nothing_escaped(name, outside.path(), &project);
    }
}

#[test]
fn the_default_state_directory_is_private_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join(".gitlab-ci.yml"),
        "job:\n  script: echo hi > out.txt\n  artifacts:\n    paths: [out.txt]\n",
    )
    .unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_podrunner"))
            .arg("exec")
            .current_dir(project.path())
            .env("HOME", home.path())
            .env_remove("XDG_STATE_HOME")
            .output()
            .unwrap()
    };
    let output = run();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let state = home.path().join(".local/state/podrunner/exec");
    let dirs: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let mode = std::fs::metadata(&dirs[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(dirs[0].join("artifacts/job/artifacts.zip").is_file());
    std::fs::set_permissions(&dirs[0], std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = run();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("is open to other users (mode 777)"),
        "{}",
        text(&output)
    );
}

#[test]
fn artifact_entries_replace_links_in_the_working_tree_and_never_write_through_them() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "original").unwrap();
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("project");
    let artifacts = root.path().join("artifacts");
    std::fs::create_dir_all(artifacts.join("build")).unwrap();
    std::fs::create_dir_all(&project).unwrap();
    std::os::unix::fs::symlink(&victim, project.join("out.txt")).unwrap();
    std::fs::write(
        artifacts.join("build/artifacts.zip"),
        hostile_zips::build(&[hostile_zips::Entry::File("out.txt", b"from the artifact")]),
    )
    .unwrap();
    std::fs::write(
        project.join(".gitlab-ci.yml"),
        "stages: [build, test]\nbuild:\n  stage: build\n  script: true\ntest:\n  stage: test\n  needs: [build]\n  script: cat out.txt\n",
    )
    .unwrap();
    let output = exec(
        &["test", "--artifacts-dir", artifacts.to_str().unwrap()],
        &project,
    );
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("from the artifact"), "{out}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
}
