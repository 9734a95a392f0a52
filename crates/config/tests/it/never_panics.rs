//! Arbitrary input never panics the loaders.

use std::collections::HashMap;

use podrunner_config::{HelmOptions, SourceText, load_helm_values, load_str};
use proptest::prelude::*;

/// Fragments that steer generated documents into the deeper parts of the model.
fn fragment() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "concurrent",
        "[[runners]]",
        "[runners.kubernetes]",
        "executor",
        "cpu_request",
        "memory_limit",
        "poll_timeout",
        "namespace",
        "[runners.kubernetes.fargate]",
        "[[runners.kubernetes.fargate.profiles]]",
        "[[runners.kubernetes.fargate.profiles.selectors]]",
        "pull_policy",
        "cleanup_resources_timeout",
        "namespace_overwrite_allowed",
        "[runners.kubernetes.pod_labels]",
        "url",
        "token",
        "[[runners.kubernetes.volumes.host_path]]",
        "[runners.cache.s3]",
        "token_obtained_at",
        "node_tolerations",
        "labels",
    ]);
    let values = prop::sample::select(vec![
        "1",
        "-1",
        "0",
        "\"2\"",
        "\"500m\"",
        "\"1e3\"",
        "\"8Gi\"",
        "\"x\"",
        "[\"always\"]",
        "\"5m\"",
        "\"(\"",
        "true",
        "1.5",
        "{ a = \"b\" }",
        "\"kubernetes\"",
        "\"$X${Y}\"",
        "2025-01-01T00:00:00Z",
        "\"\"",
        "[1, \"a\"]",
        "\"1e99999\"",
    ]);
    (keys, values, any::<bool>()).prop_map(|(k, v, table)| {
        if table || k.starts_with('[') {
            format!("{k}\n")
        } else {
            format!("{k} = {v}\n")
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = load_str(&SourceText::new("c.toml", text.clone()), &HashMap::new());
        let _ = load_helm_values("v.yaml", &text, &HashMap::new(), &HelmOptions::default());
    }

    #[test]
    fn arbitrary_documents_never_panic(parts in prop::collection::vec(fragment(), 0..40)) {
        let text = parts.concat();
        let _ = load_str(&SourceText::new("c.toml", text.clone()), &HashMap::new());
        let indented: String = text.lines().map(|l| format!("    {l}\n")).collect();
        let _ = load_helm_values("v.yaml", &format!("runners:\n  config: |\n{indented}"), &HashMap::new(), &HelmOptions::default());
    }

    #[test]
    fn quantities_and_durations_never_panic(text in "[-+0-9.eEkKMGTPimnu ]{0,24}") {
        if let Ok(q) = text.parse::<podrunner_config::Quantity>() {
            prop_assert_eq!(q.to_string(), text.clone());
            let _ = q.checked_add(&q);
        }
        let _ = text.parse::<podrunner_config::GoDuration>();
    }
}
