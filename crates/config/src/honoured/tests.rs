//! The key walk, the textual check of honoured keys and the lookup rules.

use super::*;

fn segments(key: &str) -> Vec<&str> {
    key.split('.').collect()
}

#[test]
fn families_match_within_a_segment_and_literal_keys_win() {
    assert_eq!(
        key_matches(
            "runners.kubernetes.helper_cpu_*",
            &segments("runners.kubernetes.helper_cpu_limit")
        ),
        Some(false)
    );
    assert_eq!(
        key_matches(
            "runners.kubernetes.helper_cpu_*",
            &segments("runners.kubernetes.helper_cpu_")
        ),
        Some(false)
    );
    assert_eq!(
        key_matches(
            "runners.kubernetes.cpu_*",
            &segments("runners.kubernetes.helper_cpu_limit")
        ),
        None
    );
    assert_eq!(
        key_matches("runners.kubernetes", &segments("runners.kubernetes.image")),
        None
    );
    let (_, setting) = resolve(&segments("runners.kubernetes.helper_image")).unwrap();
    assert_eq!(setting.key, "runners.kubernetes.helper_image");
}

#[test]
fn everything_below_an_ignored_table_is_ignored() {
    let (len, setting) = resolve(&segments("runners.docker.image")).unwrap();
    assert_eq!((len, setting.key), (2, "runners.docker"));
    let (_, setting) = resolve(&segments(
        "runners.kubernetes.helper_container_security_context.privileged",
    ))
    .unwrap();
    assert!(setting.advice().is_some());
    let (_, setting) = resolve(&segments("runners.kubernetes.services.suspend_data_path")).unwrap();
    assert!(
        setting.advice().is_some(),
        "the deepest entry decides below an honoured one"
    );
    let (_, setting) = resolve(&segments("runners.kubernetes.services.alias")).unwrap();
    assert!(setting.advice().is_none());
}

/// The key-walk test: a key the model reads that is in neither list fails here, so a new
/// field needs a decision.
#[test]
fn every_key_the_model_reads_is_honoured_or_listed() {
    let keys = model_keys();
    assert!(keys.len() > 250, "the walk found only {} keys", keys.len());
    for expected in [
        "concurrent",
        "runners.limit",
        "runners.kubernetes.cpu_request",
        "runners.kubernetes.pod_spec.patch_type",
        "runners.cache.s3.BucketName",
        "runners.docker",
        "session_server.listen_address",
        "runners.feature_flags.FF_TIMESTAMPS",
        "runners.kubernetes.volumes.host_path.mount_propagation",
        "runners.kubernetes.fargate.profiles.selectors.namespace",
    ] {
        assert!(
            keys.iter().any(|k| k == expected),
            "the walk misses {expected}"
        );
    }
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| resolve(&segments(k)).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "neither honoured nor listed as ignored in crates/config/src/honoured/table.rs: {missing:#?}"
    );
}

/// Every entry decides some key the model reads: a renamed or removed key leaves no entry
/// behind, and no two entries claim the same key.
#[test]
fn every_entry_covers_a_model_key_and_none_overlap() {
    let keys = model_keys();
    for setting in SETTINGS {
        let covers = keys.iter().any(|k| {
            let segments = segments(k);
            (1..=segments.len()).any(|len| key_matches(setting.key, &segments[..len]).is_some())
        });
        assert!(covers, "{} matches no key the model reads", setting.key);
        let same = SETTINGS.iter().filter(|s| s.key == setting.key).count();
        assert_eq!(same, 1, "{} is listed {same} times", setting.key);
    }
    for key in &keys {
        let segments = segments(key);
        for len in 1..=segments.len() {
            let families: Vec<&str> = SETTINGS
                .iter()
                .filter(|s| key_matches(s.key, &segments[..len]) == Some(false))
                .map(|s| s.key)
                .collect();
            assert!(
                families.len() <= 1,
                "{key}: several families match: {families:?}"
            );
        }
    }
}

/// The text check: each honoured entry's `by` occurs in the product's source outside
/// crates/config (whitespace ignored, test modules cut off). It is textual: it shows the
/// key is read there, not what is done with it.
#[test]
fn honoured_keys_are_read_by_the_product() {
    let product = product_source();
    let missing: Vec<String> = SETTINGS
        .iter()
        .filter_map(|setting| match setting.treatment {
            Treatment::Honoured { by } => {
                let needle: String = by.chars().filter(|c| !c.is_whitespace()).collect();
                (!product.contains(&needle)).then(|| format!("{}: {by:?}", setting.key))
            }
            _ => None,
        })
        .collect();
    assert!(
        missing.is_empty(),
        "these occur nowhere in the product's source; the keys may no longer be honoured:\n{}",
        missing.join("\n")
    );
}

fn product_source() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut text = String::new();
    for krate in [
        "kube",
        "manager",
        "agent",
        "podrunner",
        "exec",
        "gitlab",
        "cache",
    ] {
        collect(&root.join(krate).join("src"), &mut text);
    }
    assert!(text.len() > 100_000, "the product's source was not found");
    text
}

fn collect(dir: &std::path::Path, text: &mut String) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, text);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let source = std::fs::read_to_string(&path).expect("read source");
            text.extend(
                without_tests(&source)
                    .chars()
                    .filter(|c| !c.is_whitespace()),
            );
        }
    }
}

/// `source` without its `#[cfg(test)]` modules: from the attribute to the next line that is
/// a lone `}` (rustfmt closes a top-level module there).
fn without_tests(source: &str) -> String {
    let mut out = String::new();
    let mut in_tests = false;
    let mut lines = source.lines().peekable();
    while let Some(line) = lines.next() {
        if in_tests {
            in_tests = line != "}";
        } else if line == "#[cfg(test)]"
            && lines.peek().is_some_and(|next| next.starts_with("mod "))
        {
            in_tests = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
