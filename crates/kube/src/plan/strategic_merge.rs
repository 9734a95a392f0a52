//! A strategic merge patch on a `PodSpec`, as `k8s.io/apimachinery/pkg/util/strategicpatch`
//! (`patch.go`: `StrategicMergePatch`, `mergeMap`, `mergeSlice`, `normalizeElementOrder`)
//! applies one with `MergeParallelList` and `IgnoreUnmatchedNulls`, the options of
//! `StrategicMergeMapPatch`, which gitlab-runner calls through `strategicpatch.StrategicMergePatch`
//! with `api.PodSpec{}` (`executors/kubernetes/kubernetes.go`, `doPodSpecMerge`).
//!
//! No crate implements it, so it is written here from that behaviour:
//! - maps merge key by key; a `null` value deletes the key (a `null` for an absent key is
//!   dropped); a value of another type, a scalar, or a list without a merge strategy replaces;
//! - `$patch: replace` in a map replaces it, `$patch: delete` empties it; in a merging list an
//!   element `{"$patch": "replace"}` replaces the list and `{"<key>": v, "$patch": "delete"}`
//!   removes the elements with that key;
//! - `$retainKeys` keeps only the listed keys of the original map;
//! - lists with `patchStrategy:"merge"` merge their elements by `patchMergeKey`, matched
//!   elements merge as maps, new ones are added; the patch's elements come in the patch's
//!   order and the others keep their place relative to them, as `mergeSortedSlice` orders them.
//!
//! The merge keys are the `patchStrategy:"merge"` tags of the `k8s.io/api/core/v1` types a
//! `PodSpec` holds (`types.go`); every other list is replaced. `$setElementOrder/` and
//! `$deleteFromPrimitiveList/`, which kubectl generates for diffs, are refused: no merging list
//! of a `PodSpec` holds scalars, and the order of a hand-written patch is its own.

use serde_json::{Map, Value};

/// The struct a map is, as far as its merging lists go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `PodSpec`.
    PodSpec,
    /// `Container` and `EphemeralContainer`.
    Container,
    /// Any other struct or map: its lists are replaced, its maps merged.
    Other,
}

/// The merge key and element shape of a merging list (`patchStrategy:"merge"`,
/// `patchMergeKey` in `k8s.io/api/core/v1/types.go`).
fn merging_list(shape: Shape, field: &str) -> Option<(&'static str, Shape)> {
    match (shape, field) {
        (Shape::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => {
            Some(("name", Shape::Container))
        }
        // `patchStrategy:"merge,retainKeys"`; `$retainKeys` is read in every map.
        (Shape::PodSpec, "volumes" | "resourceClaims") => Some(("name", Shape::Other)),
        (Shape::PodSpec, "imagePullSecrets" | "schedulingGates") => Some(("name", Shape::Other)),
        (Shape::PodSpec, "hostAliases") => Some(("ip", Shape::Other)),
        (Shape::PodSpec, "topologySpreadConstraints") => Some(("topologyKey", Shape::Other)),
        (Shape::Container, "env") => Some(("name", Shape::Other)),
        (Shape::Container, "ports") => Some(("containerPort", Shape::Other)),
        (Shape::Container, "volumeMounts") => Some(("mountPath", Shape::Other)),
        (Shape::Container, "volumeDevices") => Some(("devicePath", Shape::Other)),
        _ => None,
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const UNSUPPORTED_PREFIXES: [&str; 2] = ["$setElementOrder/", "$deleteFromPrimitiveList/"];

/// Applies `patch` (a JSON object) to `spec` (a serialized `PodSpec`).
pub(super) fn apply(spec: Value, patch: Value) -> Result<Value, String> {
    let Value::Object(spec) = spec else {
        return Err("the pod spec is not an object".into());
    };
    let patch = match patch {
        Value::Object(patch) => patch,
        // `handleUnmarshal`: a `null` document is an empty patch.
        Value::Null => Map::new(),
        other => {
            return Err(format!(
                "a strategic merge patch must be an object of PodSpec fields, not {}",
                kind(&other)
            ));
        }
    };
    merge_map(spec, patch, Shape::PodSpec, "spec").map(Value::Object)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `mergeMap`.
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    shape: Shape,
    path: &str,
) -> Result<Map<String, Value>, String> {
    if let Some(directive) = patch.get(DIRECTIVE) {
        // `handleDirectiveInMergeMap`.
        return match directive.as_str() {
            Some("replace") => {
                patch.shift_remove(DIRECTIVE);
                Ok(patch)
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(format!(
                "{path}: unknown patch type {directive}: a map's $patch is replace or delete"
            )),
        };
    }
    if let Some(key) = patch
        .keys()
        .find(|k| UNSUPPORTED_PREFIXES.iter().any(|p| k.starts_with(p)))
    {
        return Err(format!(
            "{path}: the {key:?} directive is not applied by podrunner: write the list as it should be merged"
        ));
    }
    retain_keys(&mut original, &mut patch, path)?;
    for (key, patch_value) in patch {
        if patch_value.is_null() {
            original.shift_remove(&key);
            continue;
        }
        let child = format!("{path}.{key}");
        let Some(original_value) = original.get_mut(&key) else {
            original.insert(key, patch_value);
            continue;
        };
        let merged = match (original_value.take(), patch_value) {
            (Value::Object(o), Value::Object(p)) => {
                Value::Object(merge_map(o, p, Shape::Other, &child)?)
            }
            (Value::Array(o), Value::Array(p)) => match merging_list(shape, &key) {
                Some((merge_key, element)) => {
                    Value::Array(merge_list(o, p, merge_key, element, &child)?)
                }
                None => Value::Array(p),
            },
            (_, p) => p,
        };
        *original_value = merged;
    }
    Ok(original)
}

/// `applyRetainKeysDirective` with `MergeParallelList`.
fn retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    let Some(retain) = patch.shift_remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let bad = || format!("{path}: $retainKeys must be a list of the keys the patch sets");
    let Value::Array(retain) = retain else {
        return Err(bad());
    };
    let retained: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
    if retained.len() != retain.len()
        || patch
            .iter()
            .any(|(k, v)| !v.is_null() && !retained.contains(&k.as_str()))
    {
        return Err(bad());
    }
    original.retain(|k, _| retained.contains(&k.as_str()));
    Ok(())
}

/// Merge-key values compare as Go compares decoded JSON: numbers as numbers.
fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => a == b,
    }
}

fn key_of<'a>(
    element: &'a Map<String, Value>,
    merge_key: &str,
    path: &str,
) -> Result<&'a Value, String> {
    element.get(merge_key).ok_or_else(|| {
        format!(
            "{path}: {} does not contain the merge key {merge_key:?}",
            Value::Object(element.clone())
        )
    })
}

fn as_maps(list: Vec<Value>, path: &str) -> Result<Vec<Map<String, Value>>, String> {
    list.into_iter()
        .map(|v| match v {
            Value::Object(m) => Ok(m),
            other => Err(format!(
                "{path}: every element of this list is an object, not {}",
                kind(&other)
            )),
        })
        .collect()
}

/// `mergeSlice` for a list of maps with a merge key.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
    element: Shape,
    path: &str,
) -> Result<Vec<Value>, String> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let mut original = as_maps(original, path)?;
    let patch = as_maps(patch, path)?;

    // `mergeSliceWithSpecialElements`.
    let mut plain = Vec::new();
    let mut replace = false;
    for item in patch {
        match item.get(DIRECTIVE) {
            None => plain.push(item),
            Some(directive) => match directive.as_str() {
                Some("delete") => {
                    let value = key_of(&item, merge_key, path)?.clone();
                    original.retain(|o| !o.get(merge_key).is_some_and(|v| same_key(v, &value)));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(format!(
                        "{path}: merging lists cannot yet be specified in the patch"
                    ));
                }
                _ => return Err(format!("{path}: unknown patch type {directive}")),
            },
        }
    }
    let patch = if replace {
        original = plain;
        Vec::new()
    } else {
        plain
    };

    // `mergeSliceWithoutSpecialElements`.
    let order: Vec<Value> = original
        .iter()
        .map(|o| key_of(o, merge_key, path).cloned())
        .collect::<Result<_, _>>()?;
    let patch_order: Vec<Value> = patch
        .iter()
        .map(|p| key_of(p, merge_key, path).cloned())
        .collect::<Result<_, _>>()?;
    let mut merged = original;
    for item in patch {
        let value = key_of(&item, merge_key, path)?.clone();
        let child = format!("{path}[{merge_key}={value}]");
        match merged
            .iter()
            .position(|o| o.get(merge_key).is_some_and(|v| same_key(v, &value)))
        {
            Some(at) => {
                let current = std::mem::take(&mut merged[at]);
                merged[at] = merge_map(current, item, element, &child)?;
            }
            None => merged.push(item),
        }
    }

    // `normalizeElementOrder`: the patch's elements in its order, the others in theirs,
    // interleaved by `mergeSortedSlice`.
    let index = |list: &[Value], item: &Map<String, Value>| {
        item.get(merge_key)
            .and_then(|v| list.iter().position(|o| same_key(o, v)))
    };
    let (mut from_patch, mut server_only): (Vec<_>, Vec<_>) = merged
        .into_iter()
        .partition(|m| index(&patch_order, m).is_some());
    from_patch.sort_by_key(|m| index(&patch_order, m));
    server_only.sort_by_key(|m| index(&order, m));
    let mut out = Vec::with_capacity(from_patch.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = from_patch.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => match (index(&order, l), index(&order, r)) {
                (Some(li), Some(ri)) => li < ri,
                _ => false,
            },
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next.map(Value::Object));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({
            "restartPolicy": "Never",
            "nodeSelector": {"a": "1"},
            "tolerations": [{"key": "x", "operator": "Exists"}],
            "containers": [
                {"name": "build", "image": "alpine", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "resources": {"requests": {"cpu": "1"}}},
                {"name": "svc-0", "image": "redis"}
            ],
            "volumes": [{"name": "builds", "emptyDir": {}}]
        })
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let patched = apply(
            spec(),
            json!({"containers": [{"name": "build", "resources": {"requests": {"memory": "1Gi"}},
                                   "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}]}]}),
        )
        .unwrap();
        let build = &patched["containers"][0];
        assert_eq!(build["name"], "build");
        assert_eq!(build["image"], "alpine");
        assert_eq!(
            build["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        // The patch's elements in its order, the others where they were relative to them.
        assert_eq!(
            build["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "two"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(patched["containers"][1]["name"], "svc-0");
    }

    #[test]
    fn new_elements_come_before_the_ones_the_patch_does_not_name() {
        let patched = apply(
            spec(),
            json!({"containers": [{"name": "sidecar", "image": "envoy"}]}),
        )
        .unwrap();
        let names: Vec<&str> = patched["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["sidecar", "build", "svc-0"]);
    }

    #[test]
    fn lists_without_a_strategy_and_scalars_are_replaced_maps_merged() {
        let patched = apply(
            spec(),
            json!({"tolerations": [{"key": "y", "operator": "Exists"}], "nodeSelector": {"b": "2"}, "hostname": "ci"}),
        )
        .unwrap();
        assert_eq!(
            patched["tolerations"],
            json!([{"key": "y", "operator": "Exists"}])
        );
        assert_eq!(patched["nodeSelector"], json!({"a": "1", "b": "2"}));
        assert_eq!(patched["hostname"], "ci");
    }

    #[test]
    fn nulls_and_directives() {
        let patched = apply(
            spec(),
            json!({"nodeSelector": null, "absent": null,
                   "containers": [{"name": "svc-0", "$patch": "delete"}],
                   "volumes": [{"name": "builds", "$retainKeys": ["name", "ephemeral"], "ephemeral": {"volumeClaimTemplate": {}}}]}),
        )
        .unwrap();
        assert!(patched.get("nodeSelector").is_none());
        assert!(patched.get("absent").is_none());
        assert_eq!(patched["containers"].as_array().unwrap().len(), 1);
        assert_eq!(
            patched["volumes"],
            json!([{"name": "builds", "ephemeral": {"volumeClaimTemplate": {}}}])
        );
        let replaced = apply(
            spec(),
            json!({"containers": [{"$patch": "replace"}, {"name": "only"}]}),
        )
        .unwrap();
        assert_eq!(replaced["containers"], json!([{"name": "only"}]));
        let map_replaced = apply(
            spec(),
            json!({"nodeSelector": {"$patch": "replace", "c": "3"}}),
        )
        .unwrap();
        assert_eq!(map_replaced["nodeSelector"], json!({"c": "3"}));
    }

    #[test]
    fn malformed_patches_are_refused() {
        for (patch, says) in [
            (
                json!({"containers": [{"image": "x"}]}),
                "does not contain the merge key \"name\"",
            ),
            (json!({"containers": ["build"]}), "is an object"),
            (
                json!({"containers": [{"name": "build", "$patch": "merge"}]}),
                "cannot yet be specified",
            ),
            (
                json!({"nodeSelector": {"$patch": "merge"}}),
                "unknown patch type",
            ),
            (
                json!({"$setElementOrder/containers": [{"name": "build"}]}),
                "not applied by podrunner",
            ),
            (
                json!({"volumes": [{"name": "builds", "$retainKeys": ["name"], "hostPath": {"path": "/x"}}]}),
                "$retainKeys",
            ),
            (json!([{"op": "add"}]), "must be an object"),
        ] {
            let error = apply(spec(), patch.clone()).unwrap_err();
            assert!(error.contains(says), "{patch}: {error}");
        }
    }
}
