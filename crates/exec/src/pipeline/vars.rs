//! Variables as GitLab expands them when it creates the pipeline: one list per job, later
//! entries winning (predefined, then global, then job, then `--var`: the precedence of
//! `doc/ci/variables/index.md`, "CI/CD variable precedence"), each value expanded against
//! the final set. `$$` is a literal `$` (`lib/expand_variables.rb`), `expand: false` values
//! are kept as written, and a name may itself hold a reference (`${URL_${ENV}}`): the inner
//! reference is expanded first. A reference to a variable only the runner knows (the job's
//! directory, its id, a dotenv variable of an earlier job) is left for the runner.

use std::collections::HashMap;

use podrunner_gitlab::payload::JobVariable;

/// One variable before expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawVar {
    /// Name (may itself hold references, expanded first).
    pub key: String,
    /// Value as written.
    pub value: String,
    /// `expand: false`.
    pub raw: bool,
}

/// Variables the runner sets for each job: references to them are left unexpanded.
const RUNNER_ONLY: &[&str] = &[
    "CI_PROJECT_DIR",
    "CI_BUILDS_DIR",
    "CI_JOB_ID",
    "CI_JOB_URL",
    "CI_JOB_TOKEN",
    "CI_JOB_STATUS",
    "CI_JOB_STARTED_AT",
    "CI_JOB_TIMEOUT",
    "CI_REPOSITORY_URL",
    "CI_CONCURRENT_ID",
    "CI_CONCURRENT_PROJECT_ID",
];

/// The set being expanded.
pub struct Scope<'a> {
    values: HashMap<&'a str, (&'a str, bool)>,
}

impl<'a> Scope<'a> {
    /// A scope over `vars` (later wins).
    pub fn new(vars: &'a [RawVar]) -> Self {
        let mut values = HashMap::new();
        for var in vars {
            values.insert(var.key.as_str(), (var.value.as_str(), var.raw));
        }
        Scope { values }
    }

    /// The value of `name`, fully expanded; `None` when unset.
    pub fn get(&self, name: &str) -> Option<String> {
        self.lookup(name, &mut Vec::new()).map(|(v, _)| v)
    }

    fn lookup(&self, name: &str, stack: &mut Vec<String>) -> Option<(String, bool)> {
        if RUNNER_ONLY.contains(&name) {
            return None;
        }
        let (value, raw) = *self.values.get(name)?;
        if raw {
            return Some((value.to_owned(), true));
        }
        if stack.iter().any(|s| s == name) {
            // A loop: the value as written (GitLab leaves circular references alone).
            return Some((value.to_owned(), true));
        }
        stack.push(name.to_owned());
        let expanded = self.expand_inner(value, stack);
        stack.pop();
        Some(expanded)
    }

    /// Expands `text`; the flag says whether every reference was resolved here (false:
    /// some are left, as `${NAME}`, for the runner).
    pub fn expand(&self, text: &str) -> (String, bool) {
        self.expand_inner(text, &mut Vec::new())
    }

    fn expand_inner(&self, text: &str, stack: &mut Vec<String>) -> (String, bool) {
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        let mut complete = true;
        let mut i = 0;
        while i < chars.len() {
            if chars[i] != '$' {
                out.push(chars[i]);
                i += 1;
                continue;
            }
            match chars.get(i + 1) {
                Some('$') => {
                    out.push('$');
                    i += 2;
                }
                Some('{') => {
                    let mut depth = 1;
                    let mut j = i + 2;
                    while j < chars.len() {
                        match chars[j] {
                            '{' => depth += 1,
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    if j >= chars.len() {
                        out.extend(&chars[i..]);
                        break;
                    }
                    let inner: String = chars[i + 2..j].iter().collect();
                    let (name, name_complete) = self.expand_inner(&inner, stack);
                    complete &= name_complete;
                    self.substitute(&name, &mut out, &mut complete, stack);
                    i = j + 1;
                }
                Some(c) if c.is_ascii_alphanumeric() || *c == '_' => {
                    let mut j = i + 1;
                    while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                        j += 1;
                    }
                    let name: String = chars[i + 1..j].iter().collect();
                    self.substitute(&name, &mut out, &mut complete, stack);
                    i = j;
                }
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
        }
        (out, complete)
    }

    fn substitute(
        &self,
        name: &str,
        out: &mut String,
        complete: &mut bool,
        stack: &mut Vec<String>,
    ) {
        match self.lookup(name, stack) {
            Some((value, value_complete)) => {
                out.push_str(&value);
                *complete &= value_complete;
            }
            None => {
                out.push_str(&format!("${{{name}}}"));
                *complete = false;
            }
        }
    }
}

/// The job's variables, resolved: the last of each name, in first-appearance order, each
/// expanded. A value whose references were all resolved is `raw` (the runner must not expand
/// it again: its `$` are literal); one that still refers to runner variables is not.
pub fn resolve(vars: &[RawVar]) -> Vec<JobVariable> {
    let scope = Scope::new(vars);
    let mut order: Vec<&str> = Vec::new();
    for var in vars {
        if !order.contains(&var.key.as_str()) {
            order.push(&var.key);
        }
    }
    order
        .into_iter()
        .map(|key| {
            let (value, raw) = scope.values[key];
            let (value, complete) = if raw {
                (value.to_owned(), true)
            } else {
                scope.expand(value)
            };
            JobVariable {
                key: key.to_owned(),
                value,
                public: true,
                file: false,
                masked: false,
                raw: complete,
            }
        })
        .collect()
}

/// `vars` with names that hold references expanded against the rest (the server-side pass
/// over names).
pub fn expand_names(vars: Vec<RawVar>) -> Vec<RawVar> {
    if !vars.iter().any(|v| v.key.contains('$')) {
        return vars;
    }
    let snapshot = vars.clone();
    let scope = Scope::new(&snapshot);
    vars.into_iter()
        .map(|mut v| {
            if v.key.contains('$') {
                v.key = scope.expand(&v.key).0;
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(key: &str, value: &str, raw: bool) -> RawVar {
        RawVar {
            key: key.into(),
            value: value.into(),
            raw,
        }
    }

    fn value(list: &[JobVariable], key: &str) -> (String, bool) {
        let v = list.iter().find(|v| v.key == key).unwrap();
        (v.value.clone(), v.raw)
    }

    #[test]
    fn nested_names_escapes_raw_and_precedence() {
        let list = resolve(&[
            var("DEV_URL", "dev-url", false),
            var("URL_DEV", "url-dev", false),
            var("A", "${URL_${ENV}}", false),
            var("B", "${${ENV}_URL}", false),
            var("ENV", "DEV", false),
            var("FLAGS", "-al", false),
            var("LS", "ls \"$FLAGS\" $$TMP_DIR", false),
            var("RAW", "2 $FLAGS", true),
            var("OVER", "global", false),
            var("OVER", "job", false),
        ]);
        assert_eq!(value(&list, "A"), ("url-dev".into(), true));
        assert_eq!(value(&list, "B"), ("dev-url".into(), true));
        assert_eq!(value(&list, "LS"), ("ls \"-al\" $TMP_DIR".into(), true));
        assert_eq!(value(&list, "RAW"), ("2 $FLAGS".into(), true));
        assert_eq!(value(&list, "OVER"), ("job".into(), true));
        assert_eq!(list.iter().filter(|v| v.key == "OVER").count(), 1);
    }

    #[test]
    fn runner_and_unknown_references_are_left_for_the_runner() {
        let list = resolve(&[
            var("KUBECONFIG", "$CI_PROJECT_DIR/.kube", false),
            var("FROM_DOTENV", "v=${LATER}", false),
            var("LOOP", "$LOOP2", false),
            var("LOOP2", "$LOOP", false),
        ]);
        assert_eq!(
            value(&list, "KUBECONFIG"),
            ("${CI_PROJECT_DIR}/.kube".into(), false)
        );
        assert_eq!(value(&list, "FROM_DOTENV"), ("v=${LATER}".into(), false));
        assert!(value(&list, "LOOP").0.starts_with("$LOOP"), "a loop ends");
    }
}
