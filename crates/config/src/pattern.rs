//! Regular expressions in `config.toml` (the `*_overwrite_allowed` gates), compiled at load.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A compiled regular expression with its source text. Go's RE2 syntax and Rust's `regex`
/// agree on everything gitlab-runner users write here; matching is unanchored, as in Go.
#[derive(Clone)]
pub struct ConfigRegex {
    regex: regex::Regex,
}

impl ConfigRegex {
    /// Compiles `source`.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        regex::Regex::new(source).map(|regex| ConfigRegex { regex })
    }

    /// Whether the expression matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    /// The source text.
    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }
}

impl PartialEq for ConfigRegex {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for ConfigRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigRegex({:?})", self.as_str())
    }
}

impl Serialize for ConfigRegex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ConfigRegex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        ConfigRegex::new(&source).map_err(|e| {
            let detail = e.to_string();
            let last = detail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid");
            serde::de::Error::custom(format!(
                "{source:?} is not a valid regular expression: {}",
                last.trim()
            ))
        })
    }
}
