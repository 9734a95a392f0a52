//! Keys read but not honoured: reported only when set, once per ignored table, with their
//! place; and `docs/configuration.md` lists the same keys with the same advice.

use podrunner_config::honoured::{SETTINGS, Treatment};
use podrunner_config::{HelmOptions, load_helm_values};

use crate::{load, test_env};

const FULL: &str = include_str!("../fixtures/full-config.toml");

fn listed(text: &str) -> Vec<String> {
    load(text)
        .unwrap()
        .not_honoured
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn defaults_and_empty_tables_are_not_settings() {
    // gitlab-runner's `register` writes empty cache tables; they set nothing.
    let text = "concurrent = 1\n[[runners]]\n  url = \"https://gitlab.example.com/\"\n  token = \"glrt-x\"\n  executor = \"kubernetes\"\n  [runners.cache]\n    [runners.cache.s3]\n    [runners.cache.gcs]\n  [runners.kubernetes]\n    namespace = \"ci\"\n";
    assert_eq!(listed(text), Vec::<String>::new());
}

#[test]
fn an_ignored_table_is_listed_once_at_its_place() {
    let text = "concurrent = 1\n[[runners]]\n  executor = \"kubernetes\"\n  [runners.cache]\n    Type = \"s3\"\n    [runners.cache.s3]\n      BucketName = \"b\"\n  [runners.kubernetes]\n    helper_image = \"x\"\n    cpu_request = \"1\"\n    [[runners.kubernetes.autoscaler.policy]]\n      idle_count = 1\n    [[runners.kubernetes.autoscaler.policy]]\n      idle_count = 2\n";
    assert_eq!(
        listed(text),
        [
            "config.toml:9:5: runners[0].kubernetes.helper_image — podrunner needs no helper image: the agent runs in the build container",
            "config.toml:11:26: runners[0].kubernetes.autoscaler — pause-pod pre-warming is not offered: for warm node capacity use your cluster autoscaler's over-provisioning",
        ]
    );
}

#[test]
fn honoured_keys_are_not_listed_and_flags_count_one_by_one() {
    let text = "concurrent = 1\n[[runners]]\n  executor = \"kubernetes\"\n  [runners.feature_flags]\n    FF_TIMESTAMPS = false\n    FF_USE_FASTZIP = true\n  [runners.kubernetes]\n    poll_timeout = 60\n    poll_interval = 5\n    [runners.kubernetes.pod_security_context]\n      run_as_user = 1000\n      [runners.kubernetes.pod_security_context.seccomp_profile]\n        type = \"RuntimeDefault\"\n";
    let text = listed(text);
    // run_as_user and the pod-level seccomp_profile are applied to the pod: not listed.
    assert_eq!(text.len(), 2, "{text:#?}");
    assert!(text[0].starts_with("config.toml:6:5: runners[0].feature_flags.FF_USE_FASTZIP — "));
    assert!(text[1].starts_with("config.toml:9:5: runners[0].kubernetes.poll_interval — "));
}

/// The full fixture sets every key: each ignored entry it touches is listed, and nothing is
/// listed that the table calls honoured.
#[test]
fn the_full_config_lists_its_ignored_keys() {
    let loaded = load(FULL).unwrap();
    let keys: Vec<&str> = loaded.not_honoured.iter().map(|s| s.key).collect();
    for expected in [
        "connection_max_age",
        "sentry_dsn",
        "user",
        "labels",
        "session_server",
        "runners.cache.s3.RoleARN",
        "runners.feature_flags.FF_PRINT_POD_EVENTS",
        "runners.kubernetes.helper_image",
        "runners.kubernetes.autoscaler",
        "runners.kubernetes.suspend_pvc_size",
        "runners.kubernetes.services.suspend_data_path",
    ] {
        assert!(
            keys.contains(&expected),
            "{expected} is not listed: {keys:#?}"
        );
    }
    for setting in &loaded.not_honoured {
        let entry = SETTINGS.iter().find(|s| s.key == setting.key).unwrap();
        assert!(matches!(entry.treatment, Treatment::Ignored { .. }));
        assert!(setting.location.is_some(), "{setting} has no location");
    }
    for honoured in [
        "log_level",
        "log_format",
        "concurrent",
        "runners.kubernetes.pod_spec",
        "runners.kubernetes.pod_disruption_budget",
        "runners.kubernetes.allowed_users",
        "runners.kubernetes.allowed_groups",
        "runners.kubernetes.node_tolerations_overwrite_allowed",
        "runners.kubernetes.bearer_token_overwrite_allowed",
        "runners.feature_flags.FF_USE_ADVANCED_POD_SPEC_CONFIGURATION",
    ] {
        assert!(!keys.contains(&honoured));
    }
}

#[test]
fn helm_values_report_the_first_runner_of_runners_config_with_its_place() {
    let text = "gitlabUrl: https://gitlab.example.com\nrunners:\n  config: |\n    [[runners]]\n      [runners.kubernetes]\n        namespace = \"ci\"\n        logs_base_dir = \"/tmp\"\n    [[runners]]\n      [runners.kubernetes]\n        helper_image = \"x\"\n";
    let loaded =
        load_helm_values("values.yaml", text, &test_env(), &HelmOptions::default()).unwrap();
    let listed: Vec<String> = loaded.not_honoured.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert!(
        listed[0].starts_with("values.yaml:7:9: runners[0].kubernetes.logs_base_dir — not applied"),
        "{listed:#?}"
    );
    // The chart's own default runners.config sets nothing podrunner ignores.
    let default = load_helm_values(
        "values.yaml",
        "gitlabUrl: https://gitlab.example.com\n",
        &test_env(),
        &HelmOptions::default(),
    )
    .unwrap();
    assert!(default.not_honoured.is_empty());
}

const START: &str = "<!-- read-but-not-honoured:start (generated from crates/config/src/honoured/table.rs; UPDATE_DOCS=1 rewrites it) -->";
const END: &str = "<!-- read-but-not-honoured:end -->";

/// The list in `docs/configuration.md`, as the table makes it.
fn doc_list() -> String {
    let mut out = String::from("| key | what to do instead |\n|---|---|\n");
    for setting in SETTINGS {
        if let Treatment::Ignored { advice } = setting.treatment {
            out.push_str(&format!(
                "| `{}` | {} |\n",
                setting.key,
                advice.replace('|', "\\|")
            ));
        }
    }
    out
}

#[test]
fn the_docs_list_the_same_keys_with_the_same_advice() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(start), Some(end)) = (doc.find(START), doc.find(END)) else {
        panic!("{} has no {START} ... {END} section", path.display());
    };
    let current = &doc[start + START.len()..end];
    let expected = format!("\n{}", doc_list());
    if current != expected {
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let updated = format!("{}{expected}{}", &doc[..start + START.len()], &doc[end..]);
            std::fs::write(&path, updated).unwrap();
        } else {
            panic!(
                "docs/configuration.md's list of settings read but not honoured differs from crates/config/src/honoured/table.rs; run with UPDATE_DOCS=1 to rewrite it"
            );
        }
    }
}
