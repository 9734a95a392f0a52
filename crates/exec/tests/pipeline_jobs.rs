//! Variables, parallel, needs, environment, cache, artifacts and predefined variables.

mod pipeline_support;

use pipeline_support::*;

#[test]
fn variables_precedence_escaping_expand_false_and_nested_names() {
    let dir = project(&[(
        ".gitlab-ci.yml",
        "variables:\n  DEV_URL: dev-url\n  URL_DEV: url-dev\n  OVERRIDDEN: global\n  CI_PIPELINE_ID: global\n  RAW_G: {value: '2 $DEV_URL', expand: false}\n  EMPTY:\njob:\n  variables:\n    URL: ${URL_${ENV}}\n    OTHER: ${${ENV}_URL}\n    ENV: DEV\n    OVERRIDDEN: job\n    FROM_CLI: job\n    FLAGS: '-al'\n    LS: 'ls \"$FLAGS\" $$TMP_DIR'\n    RAW: {value: '2 $FLAGS', expand: false}\n    COOKED: {value: '3 $FLAGS', expand: true}\n    DIR: $CI_PROJECT_DIR/out\n  script: [x]\n",
    )]);
    let p = try_build(dir.path(), &[("FROM_CLI", "cli $ENV")]).unwrap();
    let j = job(&p, "job");
    assert_eq!(var(j, "URL").as_deref(), Some("url-dev"));
    assert_eq!(var(j, "OTHER").as_deref(), Some("dev-url"));
    assert_eq!(
        var(j, "OVERRIDDEN").as_deref(),
        Some("job"),
        "job over global"
    );
    assert_eq!(
        var(j, "CI_PIPELINE_ID").as_deref(),
        Some("global"),
        "global over predefined"
    );
    assert_eq!(
        var(j, "FROM_CLI").as_deref(),
        Some("cli DEV"),
        "--var over job"
    );
    assert_eq!(var(j, "LS").as_deref(), Some("ls \"-al\" $TMP_DIR"));
    assert_eq!(var(j, "RAW").as_deref(), Some("2 $FLAGS"));
    assert_eq!(var(j, "RAW_G").as_deref(), Some("2 $DEV_URL"));
    assert_eq!(var(j, "COOKED").as_deref(), Some("3 -al"));
    assert_eq!(var(j, "EMPTY").as_deref(), Some(""));
    let ls = j.variables.iter().find(|v| v.key == "LS").unwrap();
    assert!(
        ls.raw,
        "a resolved value is not expanded again by the runner"
    );
    let dir_var = j.variables.iter().find(|v| v.key == "DIR").unwrap();
    assert_eq!(
        (dir_var.value.as_str(), dir_var.raw),
        ("${CI_PROJECT_DIR}/out", false),
        "the job's directory is the runner's"
    );
}

#[test]
fn predefined_push_variables_from_the_repository() {
    let dir = project(&[(".gitlab-ci.yml", "job: {script: [x]}\n")]);
    git(dir.path(), &["checkout", "-q", "-b", "Feature/Login_2"]);
    git(
        dir.path(),
        &[
            "remote",
            "add",
            "origin",
            "git@gitlab.example.com:group/sub/app.git",
        ],
    );
    let p = try_build(dir.path(), &[]).unwrap();
    let sha = git(dir.path(), &["rev-parse", "HEAD"]);
    let get = |k: &str| predefined(&p, k).unwrap_or_else(|| panic!("{k} unset"));
    assert_eq!(get("CI_COMMIT_BRANCH"), "Feature/Login_2");
    assert_eq!(get("CI_COMMIT_REF_NAME"), "Feature/Login_2");
    assert_eq!(get("CI_COMMIT_REF_SLUG"), "feature-login-2");
    assert_eq!(get("CI_DEFAULT_BRANCH"), "main");
    assert_eq!(get("CI_COMMIT_SHA"), sha);
    assert_eq!(get("CI_COMMIT_SHORT_SHA"), sha[..8]);
    assert_eq!(get("CI_COMMIT_TITLE"), "Commit Title");
    assert_eq!(get("CI_COMMIT_MESSAGE"), "Commit Title\n\nMore text");
    assert_eq!(get("CI_COMMIT_DESCRIPTION"), "More text");
    assert_eq!(get("CI_PIPELINE_SOURCE"), "push");
    assert_eq!(get("CI_PROJECT_PATH"), "group/sub/app");
    assert_eq!(get("CI_PROJECT_NAMESPACE"), "group/sub");
    assert_eq!(get("CI_PROJECT_NAME"), "app");
    assert_eq!(get("CI_PROJECT_PATH_SLUG"), "group-sub-app");
    assert_eq!(get("CI_SERVER_HOST"), "gitlab.example.com");
}

#[test]
fn parallel_and_matrix_names_nodes_and_needs() {
    let p = pipeline(
        "build:\n  stage: build\n  script: [x]\n  parallel:\n    matrix:\n      - NAME: [foo, bar]\n      - NAME: beb\nnumbered: {stage: build, script: [x], parallel: 2}\ntest:\n  script: [x]\n  needs: [build, {job: numbered, artifacts: false}]\none:\n  script: [x]\n  needs: [{job: build, parallel: {matrix: [{NAME: bar}]}}]\n",
    );
    assert_eq!(
        names(&p),
        [
            "build: [foo]",
            "build: [bar]",
            "build: [beb]",
            "numbered 1/2",
            "numbered 2/2",
            "test",
            "one"
        ]
    );
    let bar = job(&p, "build: [bar]");
    assert_eq!(
        (bar.base_name.as_str(), bar.parallel),
        ("build", Some((2, 3)))
    );
    assert_eq!(var(bar, "NAME").as_deref(), Some("bar"));
    let needs: Vec<(String, bool)> = job(&p, "test")
        .needs
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| (n.job.clone(), n.artifacts))
        .collect();
    assert_eq!(
        needs,
        [
            ("build: [foo]".into(), true),
            ("build: [bar]".into(), true),
            ("build: [beb]".into(), true),
            ("numbered 1/2".into(), false),
            ("numbered 2/2".into(), false)
        ]
    );
    let one: Vec<&str> = job(&p, "one")
        .needs
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.job.as_str())
        .collect();
    assert_eq!(one, ["build: [bar]"]);
}

#[test]
fn needs_optional_project_and_dependencies() {
    let p = pipeline(
        "a: {stage: build, script: [x]}\nb:\n  script: [x]\n  needs:\n    - a\n    - {job: gone, optional: true}\n    - {project: other/project, job: release, ref: main}\n  dependencies: [a]\n",
    );
    let b = job(&p, "b");
    assert_eq!(
        b.needs
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.job.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(b.dependencies.as_deref(), Some(&["a".to_owned()][..]));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("another project or pipeline"))
    );
    let e = error("a: {script: [x]}\nb: {script: [x], dependencies: [a]}\n");
    assert!(
        e.contains("dependency `a` is not in an earlier stage"),
        "{e}"
    );
    let same_stage =
        pipeline("a: {script: [x]}\nb: {script: [x], needs: [a], dependencies: [a]}\n");
    assert_eq!(
        job(&same_stage, "b").dependencies.as_deref(),
        Some(&["a".to_owned()][..])
    );
    let e = error("a: {script: [x], dependencies: [invalid]}\n");
    assert!(
        e.contains("dependencies: [invalid] for `a` cannot be found"),
        "{e}"
    );
}

#[test]
fn environment_name_url_expanded_and_tier() {
    let p = pipeline(
        "plain: {script: [x], environment: dev-domain}\nfull:\n  script: [x]\n  variables: {SUFFIX: long-string}\n  environment:\n    name: stage-$SUFFIX\n    url: https://$CI_COMMIT_REF_SLUG.example.com\n    action: stop\n    deployment_tier: production\n",
    );
    let plain = job(&p, "plain").environment.clone().unwrap();
    assert_eq!(
        (
            plain.name.as_str(),
            plain.tier.as_str(),
            plain.action.as_deref()
        ),
        ("dev-domain", "development", Some("start"))
    );
    let full = job(&p, "full").environment.clone().unwrap();
    assert_eq!(full.name, "stage-long-string");
    assert_eq!(full.url.as_deref(), Some("https://main.example.com"));
    assert_eq!(
        (full.tier.as_str(), full.action.as_deref()),
        ("production", Some("stop"))
    );
}

#[test]
fn cache_keys_default_files_and_prefix() {
    let dir = project(&[
        (
            ".gitlab-ci.yml",
            "variables: {K: mykey}\nnone: {script: [x], cache: {paths: [vendor/]}}\nnamed: {script: [x], cache: {key: $K-$CI_COMMIT_REF_SLUG, paths: [a/], policy: pull}}\nfiles: {script: [x], cache: [{key: {files: [Cargo.lock]}, paths: [target/]}, {key: {files: [Cargo.lock], prefix: rust}, paths: [b/]}, {key: {files: [missing.lock], prefix: p}, paths: [c/]}]}\n",
        ),
        ("Cargo.lock", "lock v1"),
    ]);
    let p = try_build(dir.path(), &[]).unwrap();
    let none = &job(&p, "none").cache[0];
    assert_eq!(
        (none.key.as_str(), none.policy.as_str(), none.when.as_str()),
        ("default", "pull-push", "on_success")
    );
    assert_eq!(job(&p, "named").cache[0].key, "mykey-main");
    let blob = git(dir.path(), &["rev-parse", "HEAD:Cargo.lock"]);
    let files = &job(&p, "files").cache;
    assert_eq!(files[0].key.len(), 40);
    assert_ne!(
        files[0].key, blob,
        "a digest of the blob ids, not the id itself"
    );
    assert_eq!(files[1].key, format!("rust-{}", files[0].key));
    assert_eq!(files[2].key, "p-default");
    // The key follows the file's content.
    write(dir.path(), &[("Cargo.lock", "lock v2")]);
    commit(dir.path(), "bump");
    let again = try_build(dir.path(), &[]).unwrap();
    assert_ne!(job(&again, "files").cache[0].key, files[0].key);
}

#[test]
fn artifacts_archive_and_reports_as_gitlab_sends_them() {
    let p = pipeline(
        "job:\n  script: [x]\n  artifacts:\n    name: out-$CI_COMMIT_REF_SLUG\n    paths: [out/]\n    exclude: [out/*.tmp]\n    expire_in: 1 day\n    reports:\n      dotenv: [build.env, more.env]\nreports-only:\n  script: [x]\n  artifacts:\n    reports: {junit: report.xml}\n",
    );
    let a = &job(&p, "job").artifacts;
    assert_eq!(a.len(), 2);
    assert_eq!(
        (
            a[0].name.as_str(),
            a[0].artifact_type.as_str(),
            a[0].artifact_format.as_str(),
            a[0].when.as_str()
        ),
        ("out-main", "archive", "zip", "on_success")
    );
    assert_eq!(a[0].exclude, ["out/*.tmp"]);
    assert_eq!(
        (
            a[1].artifact_type.as_str(),
            a[1].artifact_format.as_str(),
            a[1].name.as_str(),
            a[1].when.as_str()
        ),
        ("dotenv", "gzip", ".env.gz", "always")
    );
    assert_eq!(a[1].paths, ["build.env", "more.env"]);
    let r = &job(&p, "reports-only").artifacts;
    assert_eq!(r.len(), 1, "no archive without paths");
    assert_eq!(r[0].artifact_type, "junit");
}

#[test]
fn stages_services_image_and_list() {
    let p = pipeline(
        "stages: [build, deploy]\nimage: alpine\nfirst: {stage: deploy, script: [x], services: [{name: postgres}, redis], needs: []}\nsecond: {stage: build, script: [x], allow_failure: true, image: {name: busybox}}\npre: {stage: .pre, script: [x]}\n",
    );
    assert_eq!(p.stages, [".pre", "build", "deploy", ".post"]);
    assert_eq!(
        names(&p),
        ["pre", "second", "first"],
        "stage order, then file order"
    );
    let first = job(&p, "first");
    assert_eq!(
        (first.image.as_deref(), first.services.clone()),
        (
            Some("alpine"),
            vec!["postgres".to_owned(), "redis".to_owned()]
        )
    );
    assert_eq!(job(&p, "second").image.as_deref(), Some("busybox"));
    let table = podrunner_exec::pipeline::list(&p);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "name    stage   when        allow_failure  needs");
    assert_eq!(lines[2], "second  build   on_success  true");
    assert_eq!(lines[3], "first   deploy  on_success  false          []");
    assert!(
        error("job: {stage: nope, script: [x]}\n").contains("chosen stage `nope` does not exist")
    );
}
