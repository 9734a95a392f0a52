//! Loading `.gitlab-ci.yml` text as GitLab does: GitLab reads it with Ruby's
//! `YAML.safe_load` (`lib/gitlab/config/loader/yaml.rb`), which builds a Ruby `Hash`, so a
//! key written twice in one mapping keeps its first position and takes its last value. GitLab
//! says nothing about it; we warn, naming the key and where it is. Anchors and aliases are
//! resolved, `<<` merge keys applied, and custom tags (`!reference`) kept for later.

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_yaml_ng::value::{Tag, TaggedValue};
use serde_yaml_ng::{Mapping, Value};

/// A YAML document that could not be read, with where.
#[derive(Debug)]
pub struct YamlError {
    /// What the parser said.
    pub message: String,
    /// 1-based line and column, when the parser knows them.
    pub location: Option<(usize, usize)>,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, column)) => write!(f, "line {line} column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Parses `text` (one document) into a value; duplicate keys (last wins) are added to
/// `warnings`.
#[cfg(test)]
pub fn load(text: &str, warnings: &mut Vec<String>) -> Result<Value, YamlError> {
    let mut documents = load_documents(text, warnings)?;
    match documents.len() {
        1 => Ok(documents.remove(0)),
        n => Err(YamlError {
            message: format!("{n} documents where one was expected"),
            location: None,
        }),
    }
}

/// Parses every document of `text` (a `spec:` header and the configuration, for instance).
pub fn load_documents(text: &str, warnings: &mut Vec<String>) -> Result<Vec<Value>, YamlError> {
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        out.push(load_one(document, warnings)?);
    }
    if out.is_empty() {
        out.push(Value::Null);
    }
    Ok(out)
}

fn load_one(
    deserializer: serde_yaml_ng::Deserializer<'_>,
    warnings: &mut Vec<String>,
) -> Result<Value, YamlError> {
    let found = RefCell::new(Vec::new());
    let mut value = Seed {
        path: String::new(),
        warnings: &found,
    }
    .deserialize(deserializer)
    .map_err(|e| {
        let location = e.location().map(|l| (l.line(), l.column()));
        let message = e.to_string();
        // serde_yaml_ng appends " at line L column C"; we say it first instead.
        let message = match message.find(" at line ") {
            Some(at) if location.is_some() => message[..at].to_owned(),
            _ => message,
        };
        YamlError { message, location }
    })?;
    value.apply_merge().map_err(|e| YamlError {
        message: format!("a merge key (<<) cannot be applied: {e}"),
        location: None,
    })?;
    for warning in found.into_inner() {
        if !warnings.contains(&warning) {
            warnings.push(warning);
        }
    }
    Ok(value)
}

/// Deserializes one node, knowing its path for warnings.
struct Seed<'a> {
    path: String,
    warnings: &'a RefCell<Vec<String>>,
}

impl Seed<'_> {
    fn child(&self, key: &str) -> Self {
        Seed {
            path: if self.path.is_empty() {
                key.to_owned()
            } else {
                format!("{}:{key}", self.path)
            },
            warnings: self.warnings,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(&items.len().to_string()))? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Mapping::new();
        while let Some(key) = map.next_key_seed(self.child("(key)"))? {
            let name = match &key {
                Value::String(s) => s.clone(),
                other => serde_yaml_ng::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            };
            let value = map.next_value_seed(self.child(&name))?;
            if out.contains_key(&key) && name != "<<" {
                let place = if self.path.is_empty() {
                    "the top level".to_owned()
                } else {
                    format!("`{}`", self.path)
                };
                self.warnings.borrow_mut().push(format!(
                    "duplicated mapping key detected: `{name}` appears twice in {place}; the last one wins, as in GitLab"
                ));
            }
            out.insert(key, value);
        }
        Ok(Value::Mapping(out))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, contents) = data.variant::<String>()?;
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_last_wins_in_first_position_with_a_warning() {
        let mut warnings = Vec::new();
        let value = load("a: 1\nb: 2\na: 3\njob:\n  x: 1\n  x: 2\n", &mut warnings).unwrap();
        let keys: Vec<_> = value.as_mapping().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [Value::from("a"), Value::from("b"), Value::from("job")]
        );
        assert_eq!(value["a"], Value::from(3));
        assert_eq!(value["job"]["x"], Value::from(2));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("`a` appears twice in the top level"));
        assert!(warnings[1].contains("`x` appears twice in `job`"));
    }

    #[test]
    fn anchors_merge_keys_and_tags() {
        let mut warnings = Vec::new();
        let text = "v: &v {A: 1}\nw: &w {B: 2}\nj:\n  <<: [*v, *w]\n  s: !reference [.x, script]\n";
        let value = load(text, &mut warnings).unwrap();
        assert_eq!(value["j"]["A"], Value::from(1));
        assert_eq!(value["j"]["B"], Value::from(2));
        let Value::Tagged(tagged) = &value["j"]["s"] else {
            panic!("tag lost: {:?}", value["j"]["s"]);
        };
        assert_eq!(tagged.tag, "reference");
        assert_eq!(
            tagged.value,
            Value::Sequence(vec![".x".into(), "script".into()])
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn invalid_yaml_has_line_and_column() {
        let error = load("job:\n  script: [a\n  other: b\n", &mut Vec::new()).unwrap_err();
        let (line, column) = error.location.expect("a location");
        assert!(line >= 2, "{error}");
        assert!(column > 0);
        assert!(
            error
                .to_string()
                .starts_with(&format!("line {line} column {column}: "))
        );
    }
}
