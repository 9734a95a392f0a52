//! A throwaway git project holding a pipeline, and the builder run on it.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use podrunner_exec::model::{Job, Pipeline};
use podrunner_exec::pipeline::{BuildOptions, PipelineError, build};

/// Runs git in `dir`, panicking on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Tester",
            "-c",
            "user.email=tester@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository on branch `main` with `files` committed as "Commit Title\n\nMore text".
pub fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    write(dir.path(), files);
    git(dir.path(), &["add", "-A"]);
    git(
        dir.path(),
        &["commit", "-q", "-m", "Commit Title", "-m", "More text"],
    );
    dir
}

/// Writes files (directories made).
pub fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }
}

/// Commits everything with `message`.
pub fn commit(dir: &Path, message: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
}

/// Builds `.gitlab-ci.yml` of `dir` with `--var`s.
pub fn try_build(dir: &Path, vars: &[(&str, &str)]) -> Result<Pipeline, PipelineError> {
    build(&BuildOptions {
        file: dir.join(".gitlab-ci.yml"),
        variables: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        working_tree: false,
    })
}

/// Builds a one-file project.
pub fn pipeline(yaml: &str) -> Pipeline {
    let dir = project(&[(".gitlab-ci.yml", yaml)]);
    try_build(dir.path(), &[]).unwrap()
}

/// The error of a one-file project.
pub fn error(yaml: &str) -> String {
    let dir = project(&[(".gitlab-ci.yml", yaml)]);
    try_build(dir.path(), &[]).unwrap_err().to_string()
}

/// Names of the jobs, in order.
pub fn names(p: &Pipeline) -> Vec<String> {
    p.jobs.iter().map(|j| j.name.clone()).collect()
}

/// A job by name.
pub fn job<'a>(p: &'a Pipeline, name: &str) -> &'a Job {
    p.jobs
        .iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("no job {name:?} in {:?}", names(p)))
}

/// A job variable's value.
pub fn var(job: &Job, key: &str) -> Option<String> {
    job.variables
        .iter()
        .find(|v| v.key == key)
        .map(|v| v.value.clone())
}

/// A predefined variable's value.
pub fn predefined(p: &Pipeline, key: &str) -> Option<String> {
    p.predefined
        .iter()
        .find(|v| v.key == key)
        .map(|v| v.value.clone())
}
