//! Job variables: later entries override earlier ones, `$VAR`/`${VAR}` expand against the
//! variables before them (Go `os.Expand` rules), `raw` values are kept as they are.

use podrunner_config::expand_with;
use podrunner_gitlab::payload::JobVariable;

/// One variable as the job sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    /// Name.
    pub key: String,
    /// Value, expanded unless `raw`.
    pub value: String,
    /// Written to a file; the variable holds the path.
    pub file: bool,
    /// Masked in the log.
    pub masked: bool,
    /// Not expanded.
    pub raw: bool,
    /// May appear outside the job (pod spec env).
    pub public: bool,
}

impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value: &dyn std::fmt::Debug = if self.public && !self.masked {
            &self.value
        } else {
            &"[REDACTED]"
        };
        f.debug_struct("Variable")
            .field("key", &self.key)
            .field("value", value)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Variable {
    /// A public variable set by the runner.
    pub fn runner(key: &str, value: impl Into<String>) -> Self {
        Variable {
            key: key.to_owned(),
            value: value.into(),
            file: false,
            masked: false,
            raw: true,
            public: true,
        }
    }

    /// A variable from the job payload.
    pub fn from_payload(v: &JobVariable) -> Self {
        Variable {
            key: v.key.clone(),
            value: v.value.clone(),
            file: v.file,
            masked: v.masked,
            raw: v.raw,
            public: v.public,
        }
    }
}

/// The job's variables, in order.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    list: Vec<Variable>,
}

impl Variables {
    /// Empty.
    pub fn new() -> Self {
        Variables::default()
    }

    /// Appends a variable, expanding it against what is already there unless it is raw.
    pub fn push(&mut self, mut variable: Variable) {
        if !variable.raw {
            variable.value = self.expand(&variable.value);
        }
        self.list.push(variable);
    }

    /// The value of the last variable named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.list
            .iter()
            .rev()
            .find(|v| v.key == key)
            .map(|v| v.value.as_str())
    }

    /// Sets (appends) a runner variable.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.list.push(Variable::runner(key, value));
    }

    /// Expands `$VAR` and `${VAR}` against these variables (unset: empty).
    pub fn expand(&self, text: &str) -> String {
        expand_with(text, |name| self.get(name).map(str::to_owned))
    }

    /// The variables to export, the last of each name, in first-appearance order.
    pub fn effective(&self) -> Vec<&Variable> {
        let mut out: Vec<&Variable> = Vec::new();
        for variable in &self.list {
            if let Some(slot) = out.iter_mut().find(|v| v.key == variable.key) {
                *slot = variable;
            } else {
                out.push(variable);
            }
        }
        out
    }

    /// Values to mask in the log: masked variables, after expansion.
    pub fn masked_values(&self) -> Vec<String> {
        self.effective()
            .into_iter()
            .filter(|v| v.masked && !v.value.is_empty())
            .map(|v| v.value.clone())
            .collect()
    }

    /// Whether a variable is `true`-ish (`true`, `1`, `yes`).
    pub fn flag(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "true" | "1" | "yes" | "on"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(key: &str, value: &str, raw: bool) -> Variable {
        Variable {
            key: key.into(),
            value: value.into(),
            file: false,
            masked: false,
            raw,
            public: true,
        }
    }

    #[test]
    fn later_entries_win_and_expand_against_earlier_ones() {
        let mut v = Variables::new();
        v.push(payload("HOST", "example.com", false));
        v.push(payload("URL", "https://$HOST/x", false));
        v.push(payload("RAW", "keep $HOST", true));
        v.push(payload("HOST", "other.org", false));
        v.push(payload("BRACED", "${HOST}:${MISSING}!", false));
        assert_eq!(v.get("URL"), Some("https://example.com/x"));
        assert_eq!(v.get("RAW"), Some("keep $HOST"));
        assert_eq!(v.get("HOST"), Some("other.org"));
        assert_eq!(v.get("BRACED"), Some("other.org:!"));
        let keys: Vec<&str> = v.effective().iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["HOST", "URL", "RAW", "BRACED"]);
        assert_eq!(v.effective()[0].value, "other.org");
    }

    #[test]
    fn flags_and_masked_values() {
        let mut v = Variables::new();
        v.push(Variable {
            masked: true,
            ..payload("S", "s3cr3t-value", false)
        });
        v.push(payload("GIT_CHECKOUT", "false", false));
        v.push(payload("CI_DEBUG_TRACE", "TRUE", false));
        assert_eq!(v.masked_values(), ["s3cr3t-value"]);
        assert_eq!(v.flag("GIT_CHECKOUT"), Some(false));
        assert_eq!(v.flag("CI_DEBUG_TRACE"), Some(true));
        assert_eq!(v.flag("NOPE"), None);
        assert!(!format!("{:?}", v).contains("s3cr3t-value"));
    }
}
