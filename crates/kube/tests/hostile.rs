//! Hostile and broken job payloads through the pod plan: every value the API server would
//! refuse is refused first (naming the variable and the rule), and any payload the payload
//! type accepts gives either a typed error or a pod the Kubernetes stand-in's validation (the
//! API server's rules) accepts, never a panic.

use std::collections::{BTreeSet, HashMap};

use podrunner_config::{RunnerConfig, SourceText, load_str};
use podrunner_gitlab::JobPayload;
use podrunner_kube::{PlanContext, PlanError, PodPlan, plan};
use podrunner_testkit::kubernetes::validation::{invalid_status, validate_pod};
use proptest::prelude::*;
use serde_json::{Value, json};

const CONTEXT: PlanContext<'static> = PlanContext {
    system_id: "s_0123456789ab",
    init_image: "podrunner:hostile",
    runner_short_token: "abcd1234",
};

fn runner(kubernetes: &str) -> RunnerConfig {
    let toml = format!(
        "concurrent = 1\n[[runners]]\n  name = \"hostile\"\n  executor = \"kubernetes\"\n  [runners.kubernetes]\n    namespace = \"ci\"\n{kubernetes}"
    );
    load_str(&SourceText::new("hostile.toml", toml), &HashMap::new())
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .runners[0]
        .clone()
}

/// Every overwrite allowed, with generous maxima.
fn permissive() -> RunnerConfig {
    runner(concat!(
        "    image = \"alpine:3.20\"\n",
        "    cpu_request = \"100m\"\n    cpu_limit = \"2\"\n",
        "    cpu_request_overwrite_max_allowed = \"8\"\n    cpu_limit_overwrite_max_allowed = \"8\"\n",
        "    memory_request_overwrite_max_allowed = \"16Gi\"\n    memory_limit_overwrite_max_allowed = \"16Gi\"\n",
        "    service_cpu_request_overwrite_max_allowed = \"4\"\n    service_cpu_limit_overwrite_max_allowed = \"4\"\n",
        "    namespace_overwrite_allowed = \".*\"\n    service_account_overwrite_allowed = \".*\"\n",
        "    pod_labels_overwrite_allowed = \".*\"\n    pod_annotations_overwrite_allowed = \".*\"\n",
        "    node_selector_overwrite_allowed = \".*\"\n",
        "    [[runners.kubernetes.services]]\n      name = \"$SERVICE_IMAGE\"\n      alias = \"$SERVICE_ALIAS\"\n",
    ))
}

fn job(vars: &[(&str, &str)], extra: Value) -> JobPayload {
    let mut payload = json!({
        "id": 7, "token": "glcbt-fake-job-token",
        "image": {"name": "alpine:3.20"},
        "runner_info": {"timeout": 3600},
        "variables": vars.iter().map(|(k, v)| json!({"key": k, "value": v, "public": true})).collect::<Vec<_>>(),
    });
    for (key, value) in extra.as_object().into_iter().flatten() {
        payload[key] = value.clone();
    }
    JobPayload::from_value(payload).unwrap()
}

fn refusal(runner: &RunnerConfig, payload: &JobPayload) -> String {
    match plan(runner, payload, &CONTEXT) {
        Ok(planned) => panic!(
            "planned a pod:\n{}",
            serde_json::to_string_pretty(&planned.pod).unwrap()
        ),
        Err(e) => e.to_string(),
    }
}

/// The stand-in's (the API server's) verdict on a planned pod.
fn api_errors(planned: &PodPlan) -> Vec<String> {
    let pod = serde_json::to_value(&planned.pod).unwrap();
    match validate_pod(&pod) {
        Ok(errors) => errors.iter().map(ToString::to_string).collect(),
        Err(decoding) => vec![decoding],
    }
}

#[test]
fn derived_aliases_that_are_not_dns_names_are_dropped_and_explicit_ones_refused() {
    let r = runner("");
    let planned = plan(
        &r,
        &job(&[], json!({"services": [{"name": "bitnami/redis:7.2"}]})),
        &CONTEXT,
    )
    .unwrap();
    let spec = planned.pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.host_aliases.as_ref().unwrap()[0].hostnames,
        Some(vec!["bitnami-redis".to_owned()])
    );
    assert_eq!(spec.containers[1].name, "svc-0");
    assert!(
        api_errors(&planned).is_empty(),
        "{:?}",
        api_errors(&planned)
    );
    let text = refusal(
        &r,
        &job(
            &[],
            json!({"services": [{"name": "bitnami/redis:7.2", "alias": "bitnami__redis"}]}),
        ),
    );
    assert!(
        text.starts_with(
            "the alias of service \"bitnami/redis:7.2\": \"bitnami__redis\" is not a valid host alias: a lowercase RFC 1123 subdomain"
        ),
        "{text}"
    );
}

#[test]
fn container_names_never_collide() {
    let r = runner("");
    let payload = job(
        &[],
        json!({"services": [
            {"name": "postgres:16", "alias": "svc-1"},
            {"name": "redis:7"},
            {"name": "redis:7"},
            {"name": "mysql:8", "alias": "build"},
            {"name": "mysql:8", "alias": "podrunner-init"},
            {"name": "mysql:8", "alias": "svc-0 svc-2"},
        ]}),
    );
    let planned = plan(&r, &payload, &CONTEXT).unwrap();
    let names: Vec<&str> = planned.pod.spec.as_ref().unwrap().containers[1..]
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["svc-1", "svc-0", "svc-2", "svc-3", "svc-4", "svc-5"]
    );
    assert!(
        api_errors(&planned).is_empty(),
        "{:?}",
        api_errors(&planned)
    );
}

#[test]
fn images_and_services_are_expanded_before_the_allow_lists() {
    let vars = [
        ("CI_REGISTRY_IMAGE", "registry.example.com/acme/app"),
        ("DB", "postgres"),
    ];
    let payload = job(
        &vars,
        json!({"image": {"name": "$CI_REGISTRY_IMAGE/builder"},
               "services": [{"name": "${DB}:16", "alias": "$DB-db"}]}),
    );
    let allowed = runner(
        "    allowed_images = [\"registry.example.com/acme/*\"]\n    allowed_services = [\"postgres:*\"]\n",
    );
    let planned = plan(&allowed, &payload, &CONTEXT).unwrap();
    let spec = planned.pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("registry.example.com/acme/app/builder")
    );
    assert_eq!(spec.containers[1].image.as_deref(), Some("postgres:16"));
    assert_eq!(spec.containers[1].name, "postgres-db");
    // The allow-list sees the expanded text, not the variable.
    let literal = runner("    allowed_images = [\"$CI_REGISTRY_IMAGE/*\"]\n");
    assert_eq!(
        refusal(&literal, &payload),
        "the image \"registry.example.com/acme/app/builder\" is not allowed by allowed_images"
    );
    let no_services = runner("    allowed_services = [\"redis:*\"]\n");
    assert_eq!(
        refusal(&no_services, &payload),
        "the service image \"postgres:16\" is not allowed by allowed_services"
    );
}

#[test]
fn services_get_the_jobs_public_variables_and_their_own_expanded() {
    let mut payload = json!({
        "id": 7, "image": {"name": "alpine:3.20"},
        "variables": [
            {"key": "POSTGRES_PASSWORD", "value": "fake-public-password", "public": true},
            {"key": "PROJECT_SETTING", "value": "fake-non-public-setting", "public": false},
            {"key": "MASKED_TOKEN", "value": "fake-masked-marker", "public": false, "masked": true},
            {"key": "CONFIG_FILE", "value": "fake file body", "public": true, "file": true},
        ],
        "services": [{"name": "postgres:16", "variables": [
            {"key": "POSTGRES_USER", "value": "app-$POSTGRES_PASSWORD"},
            {"key": "FROM_SETTING", "value": "$PROJECT_SETTING"},
        ]}],
    });
    payload["runner_info"] = json!({"timeout": 60});
    let planned = plan(
        &runner(""),
        &JobPayload::from_value(payload).unwrap(),
        &CONTEXT,
    )
    .unwrap();
    let env: Vec<(String, String)> = planned.pod.spec.as_ref().unwrap().containers[1]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // A service's own variable may reference a non-public one: an explicit opt-in
    // (`GetServiceVariables` in gitlab-runner's `common/build.go`).
    assert_eq!(
        pairs,
        [
            ("POSTGRES_PASSWORD", "fake-public-password"),
            ("POSTGRES_USER", "app-fake-public-password"),
            ("FROM_SETTING", "fake-non-public-setting"),
        ]
    );
    let yaml = serde_json::to_string(&planned.pod).unwrap();
    assert!(!yaml.contains("fake-masked-marker") && !yaml.contains("fake file body"));
}

#[test]
fn overwrites_the_api_server_would_refuse_are_refused_naming_the_variable() {
    let r = permissive();
    let cases: &[(&str, &str, &str)] = &[
        (
            "KUBERNETES_NAMESPACE_OVERWRITE",
            "CI_Team",
            "KUBERNETES_NAMESPACE_OVERWRITE: \"CI_Team\" is not a valid namespace: a lowercase RFC 1123 label must consist of",
        ),
        (
            "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE",
            "ci builder",
            "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE: \"ci builder\" is not a valid service account name: a lowercase RFC 1123 subdomain",
        ),
        (
            "KUBERNETES_POD_LABELS_1",
            "team name=x",
            "KUBERNETES_POD_LABELS_1: \"team name\" is not a valid label key: name part must consist of",
        ),
        (
            "KUBERNETES_POD_ANNOTATIONS_1",
            "example.com/cost center=ops",
            "KUBERNETES_POD_ANNOTATIONS_1: \"example.com/cost center\" is not a valid annotation key: name part must consist of",
        ),
        (
            "KUBERNETES_NODE_SELECTOR_1",
            "pool=ci runners",
            "KUBERNETES_NODE_SELECTOR_1: \"ci runners\" is not a valid node selector value: a valid label must be an empty string",
        ),
        (
            "KUBERNETES_NODE_SELECTOR_2",
            "a/b/c=x",
            "KUBERNETES_NODE_SELECTOR_2: \"a/b/c\" is not a valid node selector key: a valid label key must consist",
        ),
        (
            "KUBERNETES_CPU_REQUEST",
            "-1",
            "KUBERNETES_CPU_REQUEST: -1 must be greater than 0",
        ),
        (
            "KUBERNETES_MEMORY_LIMIT",
            "0",
            "KUBERNETES_MEMORY_LIMIT: 0 must be greater than 0",
        ),
        (
            "KUBERNETES_CPU_REQUEST",
            "3",
            "KUBERNETES_CPU_REQUEST = 3 is above cpu_limit = 2: a request must be less than or equal to its limit",
        ),
    ];
    for (variable, value, message) in cases {
        let text = match plan(&r, &job(&[(variable, value)], json!({})), &CONTEXT) {
            Ok(planned) => panic!("{variable}={value} planned a pod: {:?}", planned.warnings),
            Err(e) => e.to_string(),
        };
        assert!(text.starts_with(message), "{variable}={value}: {text}");
    }
    // Both sides overwritten: both are named.
    let text = refusal(
        &r,
        &job(
            &[
                ("KUBERNETES_CPU_REQUEST", "4"),
                ("KUBERNETES_CPU_LIMIT", "3"),
            ],
            json!({}),
        ),
    );
    assert_eq!(
        text,
        "KUBERNETES_CPU_REQUEST = 4 is above KUBERNETES_CPU_LIMIT = 3: a request must be less than or equal to its limit"
    );
    // Label values are sanitized as gitlab-runner's sanitizeLabel does; its own labels stay.
    let planned = plan(
        &r,
        &job(
            &[
                ("KUBERNETES_POD_LABELS_1", "team=Platform Team!"),
                ("KUBERNETES_POD_LABELS_2", "job.runner.gitlab.com/pod=mine"),
            ],
            json!({}),
        ),
        &CONTEXT,
    )
    .unwrap();
    let labels = planned.pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "Platform_Team");
    assert_eq!(labels["job.runner.gitlab.com/pod"], "podrunner-job-7");
    assert!(
        planned
            .warnings
            .iter()
            .any(|w| w.starts_with("KUBERNETES_POD_LABELS_2 is ignored"))
    );
    // Annotations past the API server's 256 KiB.
    let big = format!("example.com/big={}", "x".repeat(256 * 1024));
    let text = refusal(
        &r,
        &job(&[("KUBERNETES_POD_ANNOTATIONS_1", &big)], json!({})),
    );
    assert!(text.contains("more than the 262144 bytes"), "{text}");
}

#[test]
fn a_claim_name_from_a_variable_must_name_a_volume() {
    let r = runner(
        "    [[runners.kubernetes.volumes.pvc]]\n      name = \"cache-$CI_PROJECT_NAME\"\n      mount_path = \"/cache\"\n",
    );
    let text = refusal(&r, &job(&[("CI_PROJECT_NAME", "My_App")], json!({})));
    assert!(
        text.starts_with(
            "volumes.pvc name \"cache-$CI_PROJECT_NAME\": \"cache-My_App\" is not a valid volume name: a lowercase RFC 1123 label"
        ),
        "{text}"
    );
    assert!(
        plan(
            &r,
            &job(&[("CI_PROJECT_NAME", "my-app")], json!({})),
            &CONTEXT
        )
        .is_ok()
    );
}

#[test]
fn a_huge_timeout_saturates_the_deadline() {
    for timeout in [i64::MAX, i64::MAX - 100, 1 << 40, i64::from(i32::MAX)] {
        let planned = plan(
            &runner(""),
            &job(&[], json!({"runner_info": {"timeout": timeout}})),
            &CONTEXT,
        )
        .unwrap();
        assert_eq!(
            planned.pod.spec.as_ref().unwrap().active_deadline_seconds,
            Some(i64::from(i32::MAX)),
            "{timeout}"
        );
        assert!(
            api_errors(&planned).is_empty(),
            "{:?}",
            api_errors(&planned)
        );
    }
}

#[test]
fn the_stand_ins_status_names_the_field() {
    // The message a refused plan would have got from the API server, for the record.
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "build", "image": "x"}, {"name": "bitnami__redis", "image": "x"}]}});
    let errors = validate_pod(&pod).unwrap();
    let status = invalid_status("Pod", "p", &errors);
    assert!(status["message"].as_str().unwrap().starts_with(
        "Pod \"p\" is invalid: spec.containers[1].name: Invalid value: \"bitnami__redis\""
    ));
}

/// Strings a careless or hostile user might write.
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9._/:@$-]{0,24}",
        2 => "[A-Za-z0-9 _=./:${}*!-]{0,40}",
        1 => any::<String>(),
        1 => Just(String::new()),
        1 => "x{60,70}",
        1 => Just("$CI_REGISTRY_IMAGE/builder".to_owned()),
        1 => Just("bitnami/redis".to_owned()),
        1 => Just("svc-0".to_owned()),
        1 => Just("build".to_owned()),
        1 => Just("podrunner-init".to_owned()),
        1 => Just("-1".to_owned()),
        1 => Just("99999999999999999999Ei".to_owned()),
        1 => Just("key=value".to_owned()),
    ]
}

/// Variable names, many of them the overwrites the plan reads.
fn variable_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "KUBERNETES_NAMESPACE_OVERWRITE", "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE",
            "KUBERNETES_POD_LABELS_1", "KUBERNETES_POD_LABELS_2", "KUBERNETES_POD_ANNOTATIONS_1",
            "KUBERNETES_NODE_SELECTOR_1", "KUBERNETES_CPU_REQUEST", "KUBERNETES_CPU_LIMIT",
            "KUBERNETES_MEMORY_REQUEST", "KUBERNETES_MEMORY_LIMIT", "KUBERNETES_SERVICE_CPU_LIMIT",
            "SERVICE_IMAGE", "SERVICE_ALIAS", "CI_REGISTRY_IMAGE", "CI_JOB_URL",
        ]).prop_map(str::to_owned),
        1 => odd_string(),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(json!(i64::MAX)),
        2 => Just(json!(i64::MIN)),
        2 => Just(json!(0)),
        2 => Just(json!(-1)),
        8 => any::<i64>().prop_map(|n| json!(n)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(1e300)),
        1 => Just(Value::Null),
    ]
}

fn variable() -> impl Strategy<Value = Value> {
    (variable_name(), odd_string(), any::<[bool; 4]>()).prop_map(|(key, value, [p, f, m, r])| {
        json!({"key": key, "value": value, "public": p, "file": f, "masked": m, "raw": r})
    })
}

fn service() -> impl Strategy<Value = Value> {
    (
        odd_string(),
        odd_string(),
        prop::collection::vec(odd_string(), 0..3),
        prop::collection::vec(variable(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(name, alias, entrypoint, variables, ports)| {
            json!({"name": name, "alias": alias, "entrypoint": entrypoint, "variables": variables,
                   "ports": if ports { json!([{"number": 8080}]) } else { json!([]) }})
        })
}

/// A payload shaped as GitLab sends it, every field hostile.
fn payload() -> impl Strategy<Value = Value> {
    (
        number(),
        number(),
        odd_string(),
        odd_string(),
        prop::collection::vec(variable(), 0..12),
        prop::collection::vec(service(), 0..5),
        odd_string(),
    )
        .prop_map(|(id, timeout, name, path, variables, services, image)| {
            json!({
                "id": id, "token": "glcbt-fake-job-token",
                "job_info": {"name": name, "project_full_path": path, "project_id": 1},
                "runner_info": {"timeout": timeout},
                "variables": variables, "services": services,
                "image": {"name": image},
                "git_info": {"ref": name, "sha": path},
            })
        })
}

/// Any JSON at all.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "id",
                    "image",
                    "services",
                    "variables",
                    "name",
                    "alias",
                    "key",
                    "value",
                    "public",
                    "runner_info",
                    "timeout",
                    "job_info",
                    "entrypoint",
                    "ports",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Plans `raw` with each runner: a typed error or a pod the API server accepts, with unique
/// container names and no masked value of the marker variable in it.
fn check(raw: Value) -> Result<(), TestCaseError> {
    let Ok(payload) = JobPayload::from_value(raw) else {
        return Ok(());
    };
    for r in [runner(""), permissive()] {
        match plan(&r, &payload, &CONTEXT) {
            Ok(planned) => {
                let errors = api_errors(&planned);
                prop_assert!(errors.is_empty(), "the API server would refuse: {errors:?}");
                let spec = planned.pod.spec.as_ref().unwrap();
                let mut names = BTreeSet::new();
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                {
                    prop_assert!(names.insert(c.name.clone()), "two containers {:?}", c.name);
                }
            }
            Err(e) => {
                // Typed, and it says something.
                let _: &PlanError = &e;
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn hostile_payloads_plan_to_an_error_or_an_acceptable_pod(raw in payload()) {
        check(raw)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn any_json_the_payload_type_accepts_never_panics_the_plan(raw in any_json()) {
        check(raw)?;
    }
}
