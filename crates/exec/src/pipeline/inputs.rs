//! A `spec:` header document and its `inputs` (`lib/gitlab/ci/config/yaml/` loads the header,
//! `lib/gitlab/ci/config/interpolation/` replaces `$[[ inputs.NAME ]]`): each input takes the
//! value the `include` passes, else its `default`; a reference that is a whole value keeps the
//! input's type. Interpolation functions (`| expand_vars`, ...) are not done here and are
//! named.

use serde_yaml_ng::{Mapping, Value};

use super::value::scalar;

/// The configuration of a file's documents, with `given` inputs (from `include:inputs`).
pub fn apply(mut documents: Vec<Value>, given: Option<&Mapping>) -> Result<Value, String> {
    let empty = Mapping::new();
    let given = given.unwrap_or(&empty);
    let header = match documents.len() {
        1 => None,
        2 => {
            let header = documents.remove(0);
            match &header {
                Value::Mapping(m) if m.len() == 1 && m.contains_key("spec") => Some(header),
                _ => {
                    return Err(
                        "has two YAML documents, and the first is not a `spec:` header".to_owned(),
                    );
                }
            }
        }
        n => {
            return Err(format!(
                "has {n} YAML documents; GitLab allows a `spec:` header and the configuration"
            ));
        }
    };
    let mut config = documents.remove(0);
    let Some(header) = header else {
        if !given.is_empty() {
            return Err("is given `inputs`, but has no `spec:inputs` header".to_owned());
        }
        return Ok(config);
    };
    let declared = match header.get("spec").and_then(|s| s.get("inputs")) {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(m)) => m.clone(),
        Some(_) => return Err("`spec:inputs` must be a mapping".to_owned()),
    };
    for key in given.keys() {
        if !declared.contains_key(key) {
            return Err(format!(
                "is given the unknown input `{}`",
                scalar(key).unwrap_or_default()
            ));
        }
    }
    let mut values = Mapping::new();
    for (name, spec) in &declared {
        let value = given
            .get(name)
            .cloned()
            .or_else(|| spec.get("default").cloned())
            .ok_or_else(|| {
                format!(
                    "needs the input `{}`, which has no default; pass it with `include:inputs`",
                    scalar(name).unwrap_or_default()
                )
            })?;
        values.insert(name.clone(), value);
    }
    interpolate(&mut config, &values)?;
    Ok(config)
}

fn interpolate(value: &mut Value, inputs: &Mapping) -> Result<(), String> {
    match value {
        Value::String(text) if text.contains("$[[") => *value = substitute(text, inputs)?,
        Value::Sequence(items) => {
            for item in items {
                interpolate(item, inputs)?;
            }
        }
        Value::Mapping(map) => {
            let entries: Vec<(Value, Value)> = std::mem::take(map).into_iter().collect();
            for (mut key, mut item) in entries {
                interpolate(&mut key, inputs)?;
                interpolate(&mut item, inputs)?;
                map.insert(key, item);
            }
        }
        Value::Tagged(tagged) => interpolate(&mut tagged.value, inputs)?,
        _ => {}
    }
    Ok(())
}

fn substitute(text: &str, inputs: &Mapping) -> Result<Value, String> {
    let re = regex::Regex::new(r"\$\[\[\s*(.*?)\s*\]\]").expect("a valid pattern");
    let lookup = |expression: &str| -> Result<Value, String> {
        if expression.contains('|') {
            return Err(format!(
                "`$[[ {expression} ]]`: interpolation functions are not supported by exec"
            ));
        }
        let name = expression.strip_prefix("inputs.").ok_or_else(|| {
            format!("`$[[ {expression} ]]`: only `inputs.NAME` can be interpolated")
        })?;
        inputs
            .get(name)
            .cloned()
            .ok_or_else(|| format!("`$[[ {expression} ]]`: unknown input `{name}`"))
    };
    if let Some(caps) = re.captures(text)
        && caps.get(0).map(|m| m.as_str()) == Some(text)
    {
        return lookup(&caps[1]);
    }
    let mut out = String::new();
    let mut last = 0;
    for caps in re.captures_iter(text) {
        let whole = caps.get(0).expect("a match");
        out.push_str(&text[last..whole.start()]);
        let value = lookup(&caps[1])?;
        out.push_str(&scalar(&value).ok_or_else(|| {
            format!(
                "`{}`: a list or mapping input cannot be part of a string",
                whole.as_str()
            )
        })?);
        last = whole.end();
    }
    out.push_str(&text[last..]);
    Ok(Value::String(out))
}
