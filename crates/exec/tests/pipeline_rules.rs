//! `rules`, `only`/`except` and `when`, against the local repository.

mod pipeline_support;

use pipeline_support::*;
use podrunner_exec::model::{AllowFailure, When};

#[test]
fn rules_if_when_allow_failure_variables_needs() {
    let p = pipeline(
        "variables: {GLOBAL: yes}\nbuild: {stage: build, script: [x]}\nother: {stage: build, script: [x]}\non-main:\n  script: [x]\n  rules:\n    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $GLOBAL\n      when: manual\n      allow_failure: true\n      variables: {FROM_RULE: main}\n      needs: [build]\n    - when: always\nskipped:\n  script: [x]\n  rules:\n    - if: $CI_COMMIT_TAG || $CI_COMMIT_BRANCH =~ /^release\\//\nnever-job:\n  script: [x]\n  rules: [{when: never}]\nfallback:\n  script: [x]\n  when: on_failure\n  rules:\n    - if: $CI_COMMIT_BRANCH != 'main'\n    - if: $CI_COMMIT_BRANCH =~ /MAIN/i\n",
    );
    assert_eq!(names(&p), ["build", "other", "on-main", "fallback"]);
    let j = job(&p, "on-main");
    assert_eq!(
        (j.when.clone(), j.allow_failure.clone()),
        (When::Manual, AllowFailure::Yes)
    );
    assert_eq!(var(j, "FROM_RULE").as_deref(), Some("main"));
    assert_eq!(
        j.needs
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.job.as_str())
            .collect::<Vec<_>>(),
        ["build"]
    );
    assert_eq!(
        job(&p, "fallback").when,
        When::OnFailure,
        "a rule without `when` takes the job's"
    );
}

#[test]
fn manual_allow_failure_defaults_differ_between_job_and_rules() {
    let p = pipeline(
        "job-level: {script: [x], when: manual}\nby-rule: {script: [x], rules: [{when: manual}]}\ndelayed: {script: [x], when: delayed, start_in: 5 minutes}\n",
    );
    assert_eq!(job(&p, "job-level").allow_failure, AllowFailure::Yes);
    assert_eq!(job(&p, "by-rule").allow_failure, AllowFailure::No);
    assert_eq!(
        job(&p, "delayed").when,
        When::Delayed {
            start_in: "5 minutes".into()
        }
    );
}

#[test]
fn allow_failure_exit_codes() {
    let p = pipeline(
        "one: {script: [x], allow_failure: {exit_codes: 3}}\nmany: {script: [x], allow_failure: {exit_codes: [1, 42]}}\n",
    );
    assert_eq!(
        job(&p, "one").allow_failure,
        AllowFailure::ExitCodes(vec![3])
    );
    assert_eq!(
        job(&p, "many").allow_failure,
        AllowFailure::ExitCodes(vec![1, 42])
    );
}

#[test]
fn rules_variables_use_job_variables_and_expand_exists_paths() {
    let dir = project(&[
        (
            ".gitlab-ci.yml",
            "variables:\n  DIR: sub/nested\nfile: {script: [x], rules: [{exists: [present.file]}]}\npaths: {script: [x], rules: [{exists: {paths: [present.file]}}]}\ndir: {script: [x], rules: [{exists: ['sub/*']}]}\nrecursive: {script: [x], rules: [{exists: ['sub/**/*']}]}\nvariable: {script: [x], rules: [{exists: ['${DIR}/deep.file']}]}\nmissing: {script: [x], rules: [{exists: [absent.file]}]}\nmissing-dir: {script: [x], rules: [{exists: ['nothing/**/*']}]}\nempty: {script: [x], rules: [{exists: ['']}]}\njob-var:\n  variables: {MODE: fast}\n  script: [x]\n  rules: [{if: $MODE == 'fast'}]\n",
        ),
        ("present.file", "x"),
        ("sub/.gitkeep", ""),
        ("sub/nested/deep.file", "x"),
    ]);
    let p = try_build(dir.path(), &[]).unwrap();
    assert_eq!(
        names(&p),
        ["file", "paths", "dir", "recursive", "variable", "job-var"]
    );
}

#[test]
fn exists_reads_the_commit_unless_working_tree() {
    let dir = project(&[(
        ".gitlab-ci.yml",
        "job: {script: [x], rules: [{exists: [new.file]}]}\n",
    )]);
    write(dir.path(), &[("new.file", "uncommitted")]);
    assert!(try_build(dir.path(), &[]).unwrap().jobs.is_empty());
    let p = podrunner_exec::pipeline::build(&podrunner_exec::pipeline::BuildOptions {
        file: dir.path().join(".gitlab-ci.yml"),
        variables: Vec::new(),
        working_tree: true,
    })
    .unwrap();
    assert_eq!(names(&p), ["job"]);
}

#[test]
fn changes_on_the_default_branch_and_on_a_feature_branch() {
    let yaml = "docs: {script: [x], rules: [{changes: ['docs/**/*']}]}\ncode: {script: [x], rules: [{changes: {paths: ['src/*.rs']}}]}\nold: {script: [x], only: {changes: [README.md]}}\n";
    let dir = project(&[
        (".gitlab-ci.yml", yaml),
        ("README.md", "x"),
        ("src/a.rs", "x"),
        ("docs/a.md", "x"),
    ]);
    // The first commit adds every file.
    assert_eq!(
        names(&try_build(dir.path(), &[]).unwrap()),
        ["docs", "code", "old"]
    );
    write(dir.path(), &[("src/a.rs", "y")]);
    commit(dir.path(), "code only");
    assert_eq!(
        names(&try_build(dir.path(), &[]).unwrap()),
        ["code"],
        "HEAD against its parent on the default branch"
    );
    git(dir.path(), &["checkout", "-q", "-b", "feature"]);
    write(dir.path(), &[("src/a.rs", "z")]);
    commit(dir.path(), "code on the branch");
    write(dir.path(), &[("docs/c.md", "x")]);
    commit(dir.path(), "docs");
    assert_eq!(
        names(&try_build(dir.path(), &[]).unwrap()),
        ["docs", "code"],
        "the branch against its merge base with main, not its last commit"
    );
    let compare =
        "code: {script: [x], rules: [{changes: {paths: ['src/*.rs'], compare_to: 'main~1'}}]}\n";
    write(dir.path(), &[(".gitlab-ci.yml", compare)]);
    commit(dir.path(), "compare_to");
    assert_eq!(names(&try_build(dir.path(), &[]).unwrap()), ["code"]);
}

#[test]
fn only_and_except_refs_variables_and_tags() {
    let yaml = "default-only: {script: [x]}\nbranches: {script: [x], only: [branches]}\ntags: {script: [x], only: [tags]}\nmain: {script: [x], only: [main]}\nregex: {script: [x], only: ['/^ma/']}\nexcept-main: {script: [x], except: [main]}\nvars: {script: [x], only: {refs: [branches], variables: ['$CI_COMMIT_REF_NAME == \"main\"']}}\nvars-no: {script: [x], only: {variables: ['$NOPE']}}\nmr: {script: [x], only: [merge_requests]}\n";
    let dir = project(&[(".gitlab-ci.yml", yaml)]);
    let p = try_build(dir.path(), &[]).unwrap();
    assert_eq!(
        names(&p),
        ["default-only", "branches", "main", "regex", "vars"]
    );
    git(dir.path(), &["tag", "v1.0"]);
    git(dir.path(), &["checkout", "-q", "--detach", "v1.0"]);
    let p = try_build(dir.path(), &[]).unwrap();
    assert_eq!(names(&p), ["default-only", "tags", "except-main"]);
    assert_eq!(predefined(&p, "CI_COMMIT_TAG").as_deref(), Some("v1.0"));
    assert_eq!(predefined(&p, "CI_COMMIT_BRANCH"), None);
}

#[test]
fn rules_with_only_is_refused_as_gitlab_does() {
    let e = error("job: {script: [x], only: [main], rules: [{when: always}]}\n");
    assert!(
        e.contains("`rules` may not be used with `only` or `except`"),
        "{e}"
    );
}
