//! The settings a gitlab-runner user relies on beyond the plain keys: `pod_spec` patches,
//! the job's user against `allowed_users`/`allowed_groups`, toleration and bearer-token
//! overwrites. Every pod planned here also passes the Kubernetes stand-in's validation.

use std::collections::HashMap;

use podrunner_config::{RunnerConfig, SourceText, load_str};
use podrunner_gitlab::JobPayload;
use podrunner_kube::job_client::JobBearerToken;
use podrunner_kube::{PlanContext, PodPlan, plan};
use podrunner_testkit::kubernetes::validation::validate_pod;
use serde_json::{Value, json};

const CONTEXT: PlanContext<'static> = PlanContext {
    system_id: "s_0123456789ab",
    init_image: "podrunner:advanced",
    runner_short_token: "abcd1234",
};

fn runner(runner_keys: &str, kubernetes: &str) -> RunnerConfig {
    let toml = format!(
        "concurrent = 1\n[[runners]]\n  name = \"advanced\"\n  executor = \"kubernetes\"\n{runner_keys}  [runners.kubernetes]\n    namespace = \"ci\"\n    image = \"alpine:3.20\"\n{kubernetes}"
    );
    load_str(&SourceText::new("advanced.toml", toml), &HashMap::new())
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .runners[0]
        .clone()
}

const FLAG_ON: &str =
    "  [runners.feature_flags]\n    FF_USE_ADVANCED_POD_SPEC_CONFIGURATION = true\n";

fn patch(patch_type: &str, patch: &str) -> String {
    format!(
        "    [[runners.kubernetes.pod_spec]]\n      name = \"test\"\n      patch_type = \"{patch_type}\"\n      patch = '''\n{patch}\n'''\n"
    )
}

fn job(vars: &[(&str, &str)], extra: Value) -> JobPayload {
    let mut payload = json!({
        "id": 9, "token": "glcbt-fake-job-token",
        "image": {"name": "alpine:3.20"},
        "runner_info": {"timeout": 3600},
        "variables": vars.iter().map(|(k, v)| json!({"key": k, "value": v, "public": true})).collect::<Vec<_>>(),
    });
    for (key, value) in extra.as_object().into_iter().flatten() {
        payload[key] = value.clone();
    }
    JobPayload::from_value(payload).unwrap()
}

/// Plans and checks the pod with the stand-in's (the API server's) rules.
fn planned(runner: &RunnerConfig, payload: &JobPayload) -> PodPlan {
    let planned = plan(runner, payload, &CONTEXT).unwrap_or_else(|e| panic!("{e}"));
    let pod = serde_json::to_value(&planned.pod).unwrap();
    let errors = validate_pod(&pod).expect("the pod decodes");
    assert!(errors.is_empty(), "{errors:?}\n{pod:#}");
    planned
}

fn refusal(runner: &RunnerConfig, payload: &JobPayload) -> String {
    match plan(runner, payload, &CONTEXT) {
        Ok(p) => panic!(
            "planned:\n{}",
            serde_json::to_string_pretty(&p.pod).unwrap()
        ),
        Err(e) => e.to_string(),
    }
}

fn spec(planned: &PodPlan) -> Value {
    serde_json::to_value(planned.pod.spec.as_ref().unwrap()).unwrap()
}

#[test]
fn patches_apply_only_under_the_feature_flag_resolved_as_gitlab_runner_does() {
    let hostname = patch("merge", "hostname: ci-host");
    let off = planned(&runner("", &hostname), &job(&[], json!({})));
    assert!(spec(&off).get("hostname").is_none());
    assert!(
        off.warnings
            .iter()
            .any(|w| w.contains("pod_spec]] is not applied")),
        "{:?}",
        off.warnings
    );
    // On in the runner's feature flags, in its environment, or in the job's variables.
    for (runner_keys, vars) in [
        (FLAG_ON, vec![]),
        (
            "  environment = [\"FF_USE_ADVANCED_POD_SPEC_CONFIGURATION=true\"]\n",
            vec![],
        ),
        ("", vec![("FF_USE_ADVANCED_POD_SPEC_CONFIGURATION", "1")]),
    ] {
        let on = planned(&runner(runner_keys, &hostname), &job(&vars, json!({})));
        assert_eq!(spec(&on)["hostname"], "ci-host", "{runner_keys} {vars:?}");
        assert!(on.warnings.iter().any(|w| w.contains("beta feature")));
    }
    // The runner's setting wins over the job's variable.
    let runner_off = runner(
        "  [runners.feature_flags]\n    FF_USE_ADVANCED_POD_SPEC_CONFIGURATION = false\n",
        &hostname,
    );
    let kept_off = planned(
        &runner_off,
        &job(
            &[("FF_USE_ADVANCED_POD_SPEC_CONFIGURATION", "true")],
            json!({}),
        ),
    );
    assert!(spec(&kept_off).get("hostname").is_none());
    let unparsable = planned(
        &runner("", &hostname),
        &job(
            &[("FF_USE_ADVANCED_POD_SPEC_CONFIGURATION", "yes")],
            json!({}),
        ),
    );
    assert!(spec(&unparsable).get("hostname").is_none());
    assert!(
        unparsable
            .warnings
            .iter()
            .any(|w| w.contains("could not parse feature flag"))
    );
}

#[test]
fn patches_apply_in_order_each_on_the_result_of_the_one_before() {
    let patches = [
        patch("strategic", "containers:\n- name: build\n  workingDir: /first"),
        patch(
            "json",
            "[{\"op\": \"replace\", \"path\": \"/containers/0/workingDir\", \"value\": \"/second\"}]",
        ),
    ]
    .concat();
    let planned = planned(&runner(FLAG_ON, &patches), &job(&[], json!({})));
    assert_eq!(spec(&planned)["containers"][0]["workingDir"], "/second");
}

#[test]
fn a_patch_file_is_read_for_the_job() {
    let path = std::env::temp_dir().join(format!("podrunner-patch-{}.yaml", std::process::id()));
    std::fs::write(&path, "priorityClassName: ci-high\n").unwrap();
    let config = format!(
        "    [[runners.kubernetes.pod_spec]]\n      patch_path = \"{}\"\n",
        path.display()
    );
    let planned = planned(&runner(FLAG_ON, &config), &job(&[], json!({})));
    assert_eq!(spec(&planned)["priorityClassName"], "ci-high");
    std::fs::write(&path, "hostname: [a\n").unwrap();
    let unreadable = refusal(&runner(FLAG_ON, &config), &job(&[], json!({})));
    assert!(
        unreadable.contains("converting patch to json"),
        "{unreadable}"
    );
    std::fs::remove_file(&path).unwrap();
    let missing = refusal(&runner(FLAG_ON, &config), &job(&[], json!({})));
    assert!(missing.contains("loading patch file"), "{missing}");
    assert!(
        missing.starts_with("pod_spec \"pod_spec[0]\": "),
        "{missing}"
    );
}

#[test]
fn patches_to_what_runs_the_agent_are_refused_naming_the_part() {
    for (patch_type, text, part) in [
        // The docs' own warning: a merge patch replaces the whole list of containers.
        (
            "merge",
            "containers:\n- name: build\n  image: alpine\n  env:\n  - name: env1\n    value: value1",
            "the build container's command",
        ),
        (
            "strategic",
            "containers:\n- name: build\n  command: [sh, -c, 'sleep 1']",
            "the build container's command",
        ),
        (
            "strategic",
            "containers:\n- name: build\n  args: [--verbose]",
            "the build container's command and args",
        ),
        (
            "strategic",
            "containers:\n- name: build\n  env:\n  - name: PODRUNNER_TRACE_PRELUDE_FILE\n    value: /tmp/x",
            "environment variable PODRUNNER_TRACE_PRELUDE_FILE",
        ),
        (
            "strategic",
            "containers:\n- name: build\n  $patch: delete",
            "the build container",
        ),
        (
            "strategic",
            "volumes:\n- name: podrunner-spec\n  $patch: delete",
            "the volume podrunner-spec",
        ),
        (
            "strategic",
            "containers:\n- name: build\n  volumeMounts:\n  - mountPath: /podrunner/handover\n    $patch: delete",
            "mount of podrunner-handover",
        ),
        (
            "json",
            "[{\"op\": \"remove\", \"path\": \"/initContainers/0\"}]",
            "podrunner-init",
        ),
        (
            "json",
            "[{\"op\": \"replace\", \"path\": \"/restartPolicy\", \"value\": \"OnFailure\"}]",
            "restartPolicy",
        ),
    ] {
        let error = refusal(
            &runner(FLAG_ON, &patch(patch_type, text)),
            &job(&[], json!({})),
        );
        assert!(
            error.starts_with("pod_spec \"test\": it changes ")
                && error.contains(part)
                && error.contains("refuses patches to what runs the agent"),
            "{patch_type} {text}: {error}"
        );
    }
}

#[test]
fn what_the_job_may_change_goes_through() {
    // Extra variables, mounts, a sidecar, another builds volume, the build image's resources.
    let text = "containers:\n- name: build\n  env:\n  - name: EXTRA\n    value: '1'\n  volumeMounts:\n  - name: cache\n    mountPath: /cache\n- name: sidecar\n  image: busybox\nvolumes:\n- name: cache\n  emptyDir: {}\n- name: builds\n  $retainKeys: [name, ephemeral]\n  ephemeral:\n    volumeClaimTemplate:\n      spec:\n        accessModes: [ReadWriteOnce]\n        resources:\n          requests:\n            storage: 10Gi";
    let planned = planned(
        &runner(FLAG_ON, &patch("strategic", text)),
        &job(&[], json!({})),
    );
    let spec = spec(&planned);
    let builds = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "builds")
        .unwrap();
    assert!(builds.get("emptyDir").is_none() && builds.get("ephemeral").is_some());
    assert_eq!(spec["containers"].as_array().unwrap().len(), 2);
}

#[test]
fn malformed_patches_are_refused_clearly() {
    // Both or neither of patch and patch_path, and a patch that is not YAML: refused when
    // the config loads.
    for (config, says) in [
        (
            &patch("strategic", "hostnme: typo"),
            "spec.hostnme is not a field of the PodSpec",
        ),
        (
            &patch(
                "strategic",
                "containers:\n- name: build\n  imagePullPolcy: Always",
            ),
            "spec.containers[0].imagePullPolcy is not a field",
        ),
        (
            &patch("json", "{\"op\": \"add\"}"),
            "not a JSON patch (RFC 6902)",
        ),
        (
            &patch("strategic", "terminationGracePeriodSeconds: soon"),
            "is not a PodSpec",
        ),
    ] {
        let error = refusal(&runner(FLAG_ON, config), &job(&[], json!({})));
        assert!(error.contains(says), "{config}: {error}");
    }
}

#[test]
fn a_refused_job_user_keeps_the_configured_context_and_says_so() {
    let lists = "    allowed_users = [\"1000\"]\n    allowed_groups = [\"1000\"]\n";
    let root = job(
        &[("WANTED", "0:0")],
        json!({"image": {"name": "alpine:3.20", "executor_opts": {"kubernetes": {"user": "$WANTED"}}}}),
    );
    let planned = planned(&runner("", lists), &root);
    let build = &spec(&planned)["containers"][0]["securityContext"];
    assert!(build.get("runAsUser").is_none() && build.get("runAsGroup").is_none());
    for expected in [
        "Error parsing 'uid' from image options for container \"build\", using the configured security context: validating UID: user \"0\" is not in the allowed list: [1000]",
        "Error parsing 'gid' from image options for container \"build\", using the configured security context: validating GID: group \"0\" is not in the allowed list: [1000]",
    ] {
        assert!(
            planned.warnings.iter().any(|w| w == expected),
            "{expected} not in {:#?}",
            planned.warnings
        );
    }
    // Root needs listing even with no list; other IDs do not.
    let planned_root = planned_user(&runner("", ""), "0");
    assert!(
        spec(&planned_root)["containers"][0]["securityContext"]
            .get("runAsUser")
            .is_none()
    );
    let planned_any = planned_user(&runner("", ""), "4242");
    assert_eq!(
        spec(&planned_any)["containers"][0]["securityContext"]["runAsUser"],
        4242
    );
}

fn planned_user(runner: &RunnerConfig, user: &str) -> PodPlan {
    planned(
        runner,
        &job(
            &[],
            json!({"image": {"name": "alpine:3.20", "executor_opts": {"kubernetes": {"user": user}}}}),
        ),
    )
}

#[test]
fn security_contexts_win_over_the_job_user() {
    let config = "    [runners.kubernetes.pod_security_context]\n      run_as_user = 1500\n    [runners.kubernetes.build_container_security_context]\n      run_as_group = 2001\n";
    let planned = planned_user(&runner("", config), "1000:1001");
    let build = &spec(&planned)["containers"][0]["securityContext"];
    assert!(build.get("runAsUser").is_none(), "the pod's 1500 applies");
    assert_eq!(build["runAsGroup"], 2001);
    assert!(planned.warnings.iter().any(|w| w == "Overriding user for container \"build\" to \"1000\" is not allowed: user is set to 1500 in pod security context"));
    assert!(planned.warnings.iter().any(|w| w == "Overriding group for container \"build\" to \"1001\" is not allowed: group is set to 2001 in container security context"));
}

#[test]
fn unknown_executor_options_fail_the_job_with_gitlab_runners_message() {
    let runner = runner("", "");
    for (options, message) in [
        (
            json!({"kubernetes": {"user": "1000", "group": "1"}}),
            "Unsupported \"image\" options [group] for \"kubernetes executor\"; supported options are [user]",
        ),
        (
            json!({"podman": {}}),
            "Unsupported \"image\" options [podman] for \"executor_opts\"; supported options are [docker kubernetes]",
        ),
        (
            json!({"kubernetes": {"user": true}}),
            "StringOrInt: input not string or integer",
        ),
    ] {
        let error = refusal(
            &runner,
            &job(
                &[],
                json!({"image": {"name": "alpine:3.20", "executor_opts": options}}),
            ),
        );
        assert!(error.contains(message), "{error}");
    }
    // The docker executor's options are known, and ignored here.
    planned(
        &runner,
        &job(
            &[],
            json!({"image": {"name": "alpine:3.20", "executor_opts": {"docker": {"platform": "linux/arm64", "user": "1"}}}}),
        ),
    );
}

#[test]
fn toleration_overwrites_are_gated_and_checked() {
    let vars = [("KUBERNETES_NODE_TOLERATIONS_1", "dedicated=ci:NoSchedule")];
    let ignored = planned(&runner("", ""), &job(&vars, json!({})));
    assert!(spec(&ignored).get("tolerations").is_none());
    assert!(ignored.warnings.iter().any(|w| w
        == "KUBERNETES_NODE_TOLERATIONS_1 is ignored: node_tolerations_overwrite_allowed is not set"));

    let gated = runner(
        "",
        "    node_tolerations_overwrite_allowed = \"^dedicated=\"\n",
    );
    let added = planned(&gated, &job(&vars, json!({})));
    assert_eq!(
        spec(&added)["tolerations"],
        json!([{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}])
    );
    let error = refusal(
        &gated,
        &job(
            &[("KUBERNETES_NODE_TOLERATIONS_1", "other:NoSchedule")],
            json!({}),
        ),
    );
    assert!(
        error.contains("does not match the allowed pattern"),
        "{error}"
    );

    let open = runner("", "    node_tolerations_overwrite_allowed = \".*\"\n");
    let all = planned(
        &open,
        &job(&[("KUBERNETES_NODE_TOLERATIONS_1", "")], json!({})),
    );
    assert_eq!(spec(&all)["tolerations"], json!([{"operator": "Exists"}]));
    for (value, says) in [
        ("dedicated=ci:Sometimes", "not a valid toleration effect"),
        ("bad key!:NoSchedule", "not a valid toleration key"),
        ("dedicated=two words", "not a valid toleration value"),
        ("=value", "operator must be Exists when `key` is empty"),
    ] {
        let error = refusal(
            &open,
            &job(&[("KUBERNETES_NODE_TOLERATIONS_X", value)], json!({})),
        );
        assert!(
            error.starts_with("KUBERNETES_NODE_TOLERATIONS_X: ") && error.contains(says),
            "{value}: {error}"
        );
    }
}

#[test]
fn a_job_bearer_token_is_kept_for_the_job_writes_and_never_written() {
    let token = "eyJhbGciOiJSUzI1NiJ9.fake-job-token";
    let payload = job(&[("KUBERNETES_BEARER_TOKEN", token)], json!({}));
    let ignored = planned(&runner("", ""), &payload);
    assert!(
        ignored.warnings.iter().any(|w| w
            == "KUBERNETES_BEARER_TOKEN is ignored: bearer_token_overwrite_allowed is not set")
    );
    assert_eq!(ignored.bearer_token, None);
    let allowed_runner = runner("", "    bearer_token_overwrite_allowed = true\n");
    let allowed = planned(&allowed_runner, &payload);
    assert_eq!(allowed.bearer_token, Some(JobBearerToken::new(token)));
    assert!(allowed.warnings.is_empty(), "{:?}", allowed.warnings);
    // An adopted pod's job goes on with the same token.
    assert_eq!(
        podrunner_kube::plan::job_bearer_token(&allowed_runner, &payload),
        Some(JobBearerToken::new(token))
    );
    for plan in [&ignored, &allowed] {
        let pod = serde_json::to_string(&plan.pod).unwrap();
        assert!(!pod.contains(token), "{pod}");
        assert!(!format!("{plan:?}").contains(token));
        assert!(!plan.warnings.iter().any(|w| w.contains(token)));
    }
    let empty = job(&[("KUBERNETES_BEARER_TOKEN", "")], json!({}));
    assert_eq!(planned(&allowed_runner, &empty).bearer_token, None);
}
