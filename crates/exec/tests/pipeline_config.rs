//! The configuration as GitLab assembles it: YAML, `include`, `extends`, `!reference`,
//! `default`, `inherit`, `workflow`, and bad input.

mod pipeline_support;

use pipeline_support::*;
use podrunner_exec::pipeline::{BuildOptions, PipelineError, preview};

#[test]
fn duplicate_keys_last_wins_and_anchors_still_resolve() {
    let p = pipeline(
        "variables: &foo\n  FOO: \"1\"\nvariables: &bar\n  BAR: \"2\"\nplain:\n  script: [echo]\nanchored:\n  variables:\n    <<: *foo\n  script: [echo]\n",
    );
    assert_eq!(
        p.variables
            .iter()
            .map(|v| v.key.as_str())
            .collect::<Vec<_>>(),
        ["BAR"],
        "the last `variables` wins"
    );
    assert_eq!(var(job(&p, "plain"), "FOO"), None);
    assert_eq!(
        var(job(&p, "anchored"), "FOO").as_deref(),
        Some("1"),
        "the first anchor is still defined"
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("duplicated mapping key detected: `variables`")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn invalid_yaml_names_line_and_column() {
    let e = error("job:\n  script: [a\n  stage: b\n");
    assert!(e.contains("not valid YAML: line "), "{e}");
    assert!(e.contains(" column "), "{e}");
}

#[test]
fn include_local_lists_globs_and_rules() {
    let dir = project(&[
        (
            ".gitlab-ci.yml",
            "include:\n  - ci/base.yml\n  - local: 'ci/extra/*.yml'\n  - local: ci/never.yml\n    rules:\n      - if: $CI_COMMIT_BRANCH == 'release'\n  - local: ci/exists.yml\n    rules:\n      - exists: [marker.txt]\nvariables:\n  FROM_MAIN: main\nbase-job:\n  variables:\n    OVERRIDDEN: main\n",
        ),
        (
            "ci/base.yml",
            "include: ci/nested.yml\nbase-job:\n  script: [echo base]\n  variables:\n    OVERRIDDEN: base\n    KEPT: base\n",
        ),
        ("ci/nested.yml", "nested-job:\n  script: [echo nested]\n"),
        ("ci/extra/a.yml", "extra-a:\n  script: [echo a]\n"),
        ("ci/extra/b.yml", "extra-b:\n  script: [echo b]\n"),
        ("ci/never.yml", "never-job:\n  script: [echo never]\n"),
        ("ci/exists.yml", "exists-job:\n  script: [echo exists]\n"),
        ("marker.txt", "x"),
    ]);
    let p = try_build(dir.path(), &[]).unwrap();
    assert_eq!(
        names(&p),
        ["nested-job", "base-job", "extra-a", "extra-b", "exists-job"]
    );
    let base = job(&p, "base-job");
    assert_eq!(
        var(base, "OVERRIDDEN").as_deref(),
        Some("main"),
        "the including file wins"
    );
    assert_eq!(
        var(base, "KEPT").as_deref(),
        Some("base"),
        "mappings merge deeply"
    );
}

#[test]
fn include_loops_and_missing_files_are_named() {
    let dir = project(&[
        (".gitlab-ci.yml", "include: a.yml\njob: {script: [x]}\n"),
        ("a.yml", "include: .gitlab-ci.yml\n"),
    ]);
    let e = try_build(dir.path(), &[]).unwrap_err().to_string();
    assert!(e.contains("includes itself"), "{e}");
    let e = error("include: missing.yml\njob: {script: [x]}\n");
    assert!(e.contains("include `missing.yml`"), "{e}");
}

#[test]
fn remote_includes_are_warned_not_refused() {
    let p = pipeline(
        "include:\n  - remote: https://example.com/ci.yml\n  - template: Bash.gitlab-ci.yml\njob: {script: [x]}\n",
    );
    assert_eq!(names(&p), ["job"]);
    assert_eq!(
        p.warnings
            .iter()
            .filter(|w| w.contains("is not read"))
            .count(),
        2,
        "{:?}",
        p.warnings
    );
}

#[test]
fn extends_multi_level_and_lists_in_order() {
    let p = pipeline(
        ".ancient: {stage: test, variables: {A: ancient, B: ancient}}\n.elder: {extends: .ancient, variables: {B: elder}}\n.before:\n  before_script: [echo before]\n  script: [echo not-this]\n.parent: {extends: .before, script: [echo parent]}\n.after: {extends: .elder, after_script: [echo after], script: [echo not-this-either]}\njob: {extends: [.after, .parent], variables: {C: job}}\n",
    );
    let j = job(&p, "job");
    assert_eq!(j.script, ["echo parent"], "the later parent wins");
    assert_eq!(j.before_script, ["echo before"]);
    assert_eq!(j.after_script, ["echo after"]);
    assert_eq!(
        (var(j, "A"), var(j, "B"), var(j, "C")),
        (
            Some("ancient".into()),
            Some("elder".into()),
            Some("job".into())
        )
    );
}

#[test]
fn extends_cycles_and_unknown_parents_are_named() {
    let e = error(
        "a: {extends: b, script: [x]}\nb: {extends: c, script: [y]}\nc: {extends: a, script: [z]}\n",
    );
    assert!(
        e.contains("circular dependency detected in `extends`: a → b → c → a"),
        "{e}"
    );
    let e = error("job: {extends: .missing, script: [x]}\n");
    assert!(e.contains("unknown key in `extends`: `.missing`"), "{e}");
}

#[test]
fn reference_is_resolved_after_extends() {
    // `.variables` gets its variables from `extends`; a `!reference` to them works only
    // when `extends` is applied first (GitLab's order).
    let p = pipeline(
        ".defaults:\n  variables: {FOO: foo}\n.wrapper:\n  variables: !reference [.defaults, variables]\n.variables:\n  extends: .wrapper\n.setup:\n  script: [echo one, !reference [.base, script]]\n.base:\n  script: [echo two]\njob:\n  variables: !reference [.variables, variables]\n  script:\n    - !reference [.setup, script]\n    - echo three\n",
    );
    let j = job(&p, "job");
    assert_eq!(var(j, "FOO").as_deref(), Some("foo"));
    assert_eq!(j.script, ["echo one", "echo two", "echo three"]);
    let e = error("job:\n  script: [!reference [.nothing, script]]\n");
    assert!(
        e.contains("!reference [.nothing, script] could not be found"),
        "{e}"
    );
}

#[test]
fn default_and_inherit() {
    let p = pipeline(
        "default:\n  before_script: [echo default]\n  timeout: 1h\nvariables: {V1: one, V2: two, V3: three}\nall: {script: [x]}\nnone:\n  inherit: {default: false, variables: false}\n  script: [x]\nsome:\n  inherit: {default: [timeout], variables: [V1, V2]}\n  script: [x]\nown:\n  before_script: [echo own]\n  script: [x]\n",
    );
    let all = job(&p, "all");
    assert_eq!(
        (all.before_script.clone(), all.timeout),
        (vec!["echo default".to_owned()], Some(3600))
    );
    assert_eq!(all.variables.len(), 3);
    let none = job(&p, "none");
    assert!(none.before_script.is_empty() && none.timeout.is_none() && none.variables.is_empty());
    let some = job(&p, "some");
    assert!(some.before_script.is_empty());
    assert_eq!(some.timeout, Some(3600));
    assert_eq!(
        some.variables
            .iter()
            .map(|v| v.key.as_str())
            .collect::<Vec<_>>(),
        ["V1", "V2"]
    );
    assert_eq!(job(&p, "own").before_script, ["echo own"]);
}

#[test]
fn workflow_rules_variables_and_name() {
    let p = pipeline(
        "workflow:\n  name: 'Pipeline for $CI_COMMIT_BRANCH ($KIND)'\n  rules:\n    - if: $CI_COMMIT_TAG\n      variables: {KIND: tag}\n    - if: $CI_COMMIT_BRANCH\n      variables: {KIND: branch}\njob: {script: [x]}\n",
    );
    assert_eq!(p.name.as_deref(), Some("Pipeline for main (branch)"));
    assert_eq!(var(job(&p, "job"), "KIND").as_deref(), Some("branch"));
    let dir = project(&[(
        ".gitlab-ci.yml",
        "workflow:\n  rules:\n    - if: $CI_COMMIT_BRANCH == 'main'\n      when: never\n    - when: always\njob: {script: [x]}\n",
    )]);
    assert!(matches!(
        try_build(dir.path(), &[]),
        Err(PipelineError::NotCreated { .. })
    ));
    let dir = project(&[(
        ".gitlab-ci.yml",
        "workflow:\n  rules:\n    - if: $CI_COMMIT_TAG\njob: {script: [x]}\n",
    )]);
    assert!(
        try_build(dir.path(), &[])
            .unwrap_err()
            .to_string()
            .contains("no entry of `workflow:rules` matches")
    );
}

#[test]
fn unknown_keywords_have_did_you_mean() {
    let e = error("job: {scirpt: [x], script: [y]}\n");
    assert!(
        e.contains("job `job` has an unknown keyword `scirpt` (did you mean `script`?)"),
        "{e}"
    );
    let e = error("stagse: [a]\njob: {script: [y]}\n");
    assert!(
        e.contains("`stagse` is neither a global keyword nor a job")
            && e.contains("did you mean `stages`"),
        "{e}"
    );
    let e = error("job:\n  script: [y]\n  rules:\n    - iff: $X\n");
    assert!(
        e.contains("unknown keyword `iff` (did you mean `if`?)"),
        "{e}"
    );
}

#[test]
fn keywords_that_cannot_run_here_are_said_once_and_do_not_refuse_the_file() {
    let p = pipeline(
        "a: {script: [x], tags: [docker]}\nb: {script: [x], tags: [docker]}\nbridge: {trigger: other/project}\nc: {script: [x], needs: [a]}\n",
    );
    assert_eq!(names(&p), ["a", "b", "c"]);
    assert_eq!(
        p.warnings
            .iter()
            .filter(|w| w.starts_with("`tags` is ignored"))
            .count(),
        1,
        "{:?}",
        p.warnings
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("`bridge` triggers a downstream pipeline"))
    );
}

#[test]
fn needs_loops_are_named() {
    let e = error("a: {script: [x], needs: [b]}\nb: {script: [x], needs: [a]}\n");
    assert!(e.contains("`needs` loop: a → b → a"), "{e}");
    let e = error("a: {stage: build, script: [x], needs: [b]}\nb: {stage: test, script: [x]}\n");
    assert!(e.contains("in a later stage"), "{e}");
    let e = error("a: {script: [x], needs: [ghost]}\n");
    assert!(
        e.contains("needs `ghost`, which is not in the pipeline"),
        "{e}"
    );
}

#[test]
fn preview_shows_the_configuration_after_include_extends_and_reference() {
    let dir = project(&[
        (
            ".gitlab-ci.yml",
            "include: base.yml\njob:\n  extends: .base\n  script:\n    - !reference [.base, script]\n    - echo own\n",
        ),
        (
            "base.yml",
            ".base:\n  stage: build\n  script: [echo base]\n",
        ),
    ]);
    let text = preview(&BuildOptions {
        file: dir.path().join(".gitlab-ci.yml"),
        variables: Vec::new(),
        working_tree: false,
    })
    .unwrap();
    assert!(
        !text.contains("include") && !text.contains("extends") && !text.contains("!reference"),
        "{text}"
    );
    assert!(
        text.contains("job:\n  stage: build\n  script:\n  - echo base\n  - echo own\n"),
        "{text}"
    );
}

#[test]
fn spec_inputs_header_with_defaults_and_include_inputs() {
    let dir = project(&[
        (
            ".gitlab-ci.yml",
            "spec:\n  inputs:\n    stage: {default: test}\n---\ninclude:\n  - local: job.yml\n    inputs: {name: given, count: 2}\nmain-job:\n  stage: $[[ inputs.stage ]]\n  script: [echo main]\n",
        ),
        (
            "job.yml",
            "spec:\n  inputs:\n    name:\n    count: {default: 1}\n    suffix: {default: x}\n---\n'job-$[[ inputs.name ]]-$[[ inputs.suffix ]]':\n  script:\n    - echo $[[ inputs.name ]]\n  parallel: $[[ inputs.count ]]\n",
        ),
    ]);
    let p = try_build(dir.path(), &[]).unwrap();
    assert_eq!(
        names(&p),
        ["job-given-x 1/2", "job-given-x 2/2", "main-job"],
        "a whole-value input keeps its type (parallel: 2)"
    );
    assert_eq!(job(&p, "job-given-x 1/2").script, ["echo given"]);
    let dir = project(&[
        (".gitlab-ci.yml", "include: job.yml\n"),
        (
            "job.yml",
            "spec:\n  inputs:\n    name:\n---\njob: {script: [x]}\n",
        ),
    ]);
    let e = try_build(dir.path(), &[]).unwrap_err().to_string();
    assert!(
        e.contains("needs the input `name`, which has no default"),
        "{e}"
    );
    let e = error("a: 1\n---\nb: 2\n");
    assert!(e.contains("the first is not a `spec:` header"), "{e}");
}
