//! `rules`, `only`/`except` and the `rules` of `include` and `workflow`, decided against the
//! local push (`crate::context`). A rule matches when all its clauses (`if`, `changes`,
//! `exists`) do; the first match decides, and none matching means `never`
//! (`lib/gitlab/ci/build/rules.rb`, `lib/gitlab/ci/build/rules/rule/clause/*.rb`). Without
//! `rules`, `only`/`except` decide, `only: [branches, tags]` being the default
//! (`lib/gitlab/ci/build/policy/*.rb`, `lib/gitlab/ci/config/entry/job.rb`).

use globset::{GlobBuilder, GlobMatcher};
use serde_yaml_ng::{Mapping, Value};

use super::expr;
use super::value::{scalar, string_list};
use crate::context::PushContext;

/// Looks a variable up (expanded).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What the first matching rule says.
#[derive(Debug, Clone, Default)]
pub struct RuleOutcome {
    /// `when` of the rule, if it has one.
    pub when: Option<String>,
    /// `start_in`.
    pub start_in: Option<String>,
    /// `allow_failure` of the rule.
    pub allow_failure: Option<Value>,
    /// `variables` of the rule.
    pub variables: Option<Value>,
    /// `needs` of the rule.
    pub needs: Option<Value>,
}

/// A glob as GitLab's `File.fnmatch?` with `FNM_PATHNAME | FNM_DOTMATCH | FNM_EXTGLOB`
/// (`clause/exists.rb`, `clause/changes.rb`): `*` stays within a directory, `**/` spans them,
/// `{a,b}` alternates, dot files match.
fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("{pattern:?} is not a valid glob: {e}"))
}

fn any_file_matches(
    patterns: &[String],
    files: &[String],
    lookup: Lookup<'_>,
) -> Result<bool, String> {
    for pattern in patterns {
        let pattern = super::vars_expand(pattern, lookup);
        if pattern.is_empty() {
            continue;
        }
        let matcher = glob(&pattern)?;
        if files.iter().any(|f| matcher.is_match(f)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The paths of `exists:`/`changes:` (a list, or a mapping with `paths`).
fn paths_of(value: &Value, keyword: &str) -> Result<(Vec<String>, Option<String>), String> {
    match value {
        Value::Mapping(map) => {
            let paths = map
                .get("paths")
                .and_then(string_list)
                .ok_or_else(|| format!("`{keyword}` as a mapping needs `paths:`"))?;
            Ok((paths, map.get("compare_to").and_then(scalar)))
        }
        other => Ok((
            string_list(other).ok_or_else(|| format!("`{keyword}` must be a list of paths"))?,
            None,
        )),
    }
}

/// Whether every clause of `rule` holds.
pub fn clauses_match(
    rule: &Mapping,
    ctx: &PushContext,
    lookup: Lookup<'_>,
) -> Result<bool, String> {
    if let Some(condition) = rule.get("if") {
        let text = scalar(condition).ok_or("`rules:if` must be a string")?;
        if !expr::parse(&text)?.eval(lookup)? {
            return Ok(false);
        }
    }
    if let Some(value) = rule.get("changes") {
        let (paths, compare_to) = paths_of(value, "rules:changes")?;
        let changed = match compare_to {
            Some(base) => ctx.changed_since(&super::vars_expand(&base, lookup))?,
            None => ctx.changed.clone(),
        };
        if !any_file_matches(&paths, &changed, lookup)? {
            return Ok(false);
        }
    }
    if let Some(value) = rule.get("exists") {
        let (paths, _) = paths_of(value, "rules:exists")?;
        if !any_file_matches(&paths, &ctx.files, lookup)? {
            return Ok(false);
        }
    }
    Ok(true)
}

const RULE_KEYS: &[&str] = &[
    "if",
    "changes",
    "exists",
    "when",
    "start_in",
    "allow_failure",
    "variables",
    "needs",
    "interruptible",
    "auto_cancel",
];

/// The first rule of `rules` that matches, or `None` (the job, include or pipeline is not
/// created).
pub fn first_match(
    rules: &Value,
    ctx: &PushContext,
    lookup: Lookup<'_>,
) -> Result<Option<RuleOutcome>, String> {
    let Value::Sequence(list) = rules else {
        return Err("`rules` must be a list".to_owned());
    };
    for rule in list {
        let rule = match rule {
            Value::Mapping(m) => m,
            // A nested list (from `!reference`) is flattened, as GitLab does.
            Value::Sequence(_) => {
                if let Some(found) = first_match(rule, ctx, lookup)? {
                    return Ok(Some(found));
                }
                continue;
            }
            _ => return Err("each entry of `rules` must be a mapping".to_owned()),
        };
        for key in rule.keys().filter_map(Value::as_str) {
            if !RULE_KEYS.contains(&key) {
                return Err(format!(
                    "`rules` has an unknown keyword `{key}`{}",
                    super::keywords::did_you_mean(key, RULE_KEYS)
                ));
            }
        }
        if clauses_match(rule, ctx, lookup)? {
            return Ok(Some(RuleOutcome {
                when: rule.get("when").and_then(scalar),
                start_in: rule.get("start_in").and_then(scalar),
                allow_failure: rule.get("allow_failure").cloned(),
                variables: rule.get("variables").cloned(),
                needs: rule.get("needs").cloned(),
            }));
        }
    }
    Ok(None)
}

/// Whether a job with this `only`/`except` is in the pipeline.
pub fn only_except(job: &Mapping, ctx: &PushContext, lookup: Lookup<'_>) -> Result<bool, String> {
    let only = match job.get("only") {
        Some(value) => policy_matches(value, ctx, lookup, "only")?,
        None => true,
    };
    let except = match job.get("except") {
        Some(value) => policy_matches(value, ctx, lookup, "except")?,
        None => false,
    };
    Ok(only && !except)
}

/// Whether one `only`/`except` value matches: every kind given (`refs`, `variables`,
/// `changes`, `kubernetes`) must match (`lib/gitlab/ci/build/policy/`).
fn policy_matches(
    value: &Value,
    ctx: &PushContext,
    lookup: Lookup<'_>,
    keyword: &str,
) -> Result<bool, String> {
    match value {
        Value::Mapping(map) => {
            for key in map.keys().filter_map(Value::as_str) {
                if !["refs", "variables", "changes", "kubernetes"].contains(&key) {
                    return Err(format!("`{keyword}` has an unknown keyword `{key}`"));
                }
            }
            if let Some(refs) = map.get("refs") {
                let refs =
                    string_list(refs).ok_or_else(|| format!("`{keyword}:refs` must be a list"))?;
                if !refs_match(&refs, ctx)? {
                    return Ok(false);
                }
            }
            if let Some(vars) = map.get("variables") {
                let list = string_list(vars).ok_or_else(|| {
                    format!("`{keyword}:variables` must be a list of expressions")
                })?;
                let mut any = false;
                for text in list {
                    any |= expr::parse(&text)?.eval(lookup)?;
                }
                if !any {
                    return Ok(false);
                }
            }
            if let Some(changes) = map.get("changes") {
                let (paths, _) = paths_of(changes, &format!("{keyword}:changes"))?;
                if !any_file_matches(&paths, &ctx.changed, lookup)? {
                    return Ok(false);
                }
            }
            if map.get("kubernetes").is_some() {
                // `kubernetes: active` needs a deployment integration, which a local push has not.
                return Ok(false);
            }
            Ok(true)
        }
        other => {
            let refs = string_list(other)
                .ok_or_else(|| format!("`{keyword}` must be a list of refs or a mapping"))?;
            refs_match(&refs, ctx)
        }
    }
}

/// `only:refs` of a push (`policy/refs.rb`): keywords of the source and kind, `/regex/`
/// against the ref name, else the ref name itself (`name@project` compares the name).
fn refs_match(refs: &[String], ctx: &PushContext) -> Result<bool, String> {
    let name = ctx.ref_name();
    for entry in refs {
        let entry = entry.split_once('@').map_or(entry.as_str(), |(r, _)| r);
        let matched = match entry {
            "branches" => ctx.branch.is_some(),
            "tags" => ctx.tag.is_some(),
            "pushes" => true,
            "api"
            | "chat"
            | "external"
            | "external_pull_requests"
            | "merge_requests"
            | "pipelines"
            | "schedules"
            | "triggers"
            | "web" => false,
            pattern if pattern.len() > 1 && pattern.starts_with('/') => {
                let end = pattern.rfind('/').unwrap_or(0);
                let (body, flags) = (&pattern[1..end.max(1)], &pattern[end + 1..]);
                let full = if flags.contains('i') {
                    format!("(?i){body}")
                } else {
                    body.to_owned()
                };
                regex::Regex::new(&full)
                    .map_err(|e| format!("{pattern} is not a valid regular expression: {e}"))?
                    .is_match(&name)
            }
            literal => literal == name,
        };
        if matched {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_gitlab_fnmatch() {
        let files = vec![
            "existsDir/.gitkeep".to_owned(),
            "existsDir/nested/recursive.file".to_owned(),
            "a.txt".to_owned(),
        ];
        let none = |_: &str| None;
        let m = |p: &str| any_file_matches(&[p.to_owned()], &files, &none).unwrap();
        assert!(m("existsDir/*"), "dot files match");
        assert!(m("existsDir/**/*"));
        assert!(m("existsDir/**/recursive.file"));
        assert!(!m("*.file"), "* stays in one directory");
        assert!(m("{b,a}.txt"));
        assert!(!m("notExistsDir/**/*"));
        assert!(!m(""), "an empty path matches nothing");
    }
}
