//! Small readers of YAML values.

use serde_yaml_ng::Value;

/// A string, number or boolean as text.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A scalar or a list of scalars (nested lists flattened).
pub fn string_list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Sequence(items) => {
            let mut out = Vec::new();
            for item in items {
                out.extend(string_list(item)?);
            }
            Some(out)
        }
        Value::Null => Some(Vec::new()),
        other => scalar(other).map(|s| vec![s]),
    }
}

/// Script lines: a string or a list, nested lists (from `!reference`) flattened.
pub fn script_lines(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Null => Some(Vec::new()),
        other => string_list(other),
    }
}
