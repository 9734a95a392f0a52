//! One job of the configuration to the jobs GitLab creates from it (`lib/gitlab/ci/config/
//! entry/job.rb`, `lib/gitlab/ci/pipeline/seed/build.rb`): keywords checked, `default` and
//! `inherit` applied, `rules`/`only`/`except`/`when` decided, `parallel` expanded, variables
//! resolved, `needs` read; `payload` gives `artifacts`, `cache` and `environment` their shapes.

use podrunner_gitlab::payload::JobVariable;
use serde_yaml_ng::{Mapping, Value};

use super::keywords::{self, did_you_mean};
use super::payload;
use super::rules::{self, RuleOutcome};
use super::value::{scalar, script_lines, string_list};
use super::vars::{self, RawVar, Scope};
use crate::context::{PushContext, slugify};
use crate::model::{AllowFailure, Job, When};

/// What every job is built against.
pub struct Env<'a> {
    /// The push.
    pub ctx: &'a PushContext,
    /// Predefined variables of the pipeline.
    pub predefined: Vec<RawVar>,
    /// Global variables (with `workflow:rules` variables).
    pub global: Vec<RawVar>,
    /// `--var`.
    pub cli: Vec<RawVar>,
    /// `default` (with the old top-level `image`, `before_script`, ...).
    pub defaults: Mapping,
    /// Stages.
    pub stages: Vec<String>,
}

/// A `needs` entry before parallel names are known.
#[derive(Debug, Clone)]
pub struct PendingNeed {
    /// The job named.
    pub job: String,
    /// Only these instances of a `parallel:matrix` job (their full names).
    pub instances: Option<Vec<String>>,
    /// `artifacts`.
    pub artifacts: bool,
    /// `optional`.
    pub optional: bool,
}

/// A built job with its `needs` still naming jobs as written.
pub struct Built {
    /// The job.
    pub job: Job,
    /// `needs` as written.
    pub needs: Option<Vec<PendingNeed>>,
}

/// Says a keyword exec cannot honour, once per keyword.
fn note(warnings: &mut Vec<String>, key: &str, job: &str, why: &str) {
    let prefix = format!("`{key}` is ignored");
    if !warnings.iter().any(|w| w.starts_with(&prefix)) {
        warnings.push(format!("{prefix} (first in job `{job}`): {why}"));
    }
}

/// `variables:` as written (`VALUE`, `{value, expand, description, options}`, or null).
pub fn parse_variables(value: Option<&Value>, place: &str) -> Result<Vec<RawVar>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let map = match value {
        Value::Mapping(map) => map,
        Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(format!(
                "{place}: `variables` must be a mapping of names to values"
            ));
        }
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let key = scalar(key).ok_or_else(|| format!("{place}: variable names must be strings"))?;
        let (text, raw) = match value {
            Value::Mapping(details) => {
                for k in details.keys().filter_map(Value::as_str) {
                    if !["value", "expand", "description", "options"].contains(&k) {
                        return Err(format!(
                            "{place}: variable `{key}` has an unknown keyword `{k}`{}",
                            did_you_mean(k, &["value", "expand", "description", "options"])
                        ));
                    }
                }
                let text = match details.get("value") {
                    None | Some(Value::Null) => String::new(),
                    Some(v) => scalar(v).ok_or_else(|| {
                        format!("{place}: variable `{key}`: `value` must be a string")
                    })?,
                };
                (
                    text,
                    details.get("expand").and_then(Value::as_bool) == Some(false),
                )
            }
            Value::Null => (String::new(), false),
            other => (
                scalar(other).ok_or_else(|| {
                    format!("{place}: variable `{key}` must be a string, number or boolean")
                })?,
                false,
            ),
        };
        out.push(RawVar {
            key,
            value: text,
            raw,
        });
    }
    Ok(out)
}

fn raw(key: &str, value: impl Into<String>) -> RawVar {
    RawVar {
        key: key.to_owned(),
        value: value.into(),
        raw: true,
    }
}

/// `inherit:<what>`: true (all), false (none) or a list of names.
fn inherit_filter(job: &Mapping, what: &str) -> Result<Option<Vec<String>>, String> {
    match job.get("inherit").and_then(|i| i.get(what)) {
        None | Some(Value::Bool(true)) => Ok(None),
        Some(Value::Bool(false)) => Ok(Some(Vec::new())),
        Some(other) => string_list(other)
            .map(Some)
            .ok_or_else(|| format!("`inherit:{what}` must be true, false or a list of names")),
    }
}

/// The instances of a job: `(name, (index, total), matrix variables)`.
type Instance = (String, Option<(u32, u32)>, Vec<RawVar>);

/// `parallel: N` → `job 1/N`...; `parallel:matrix` → `job: [a, b]` for each combination
/// (`lib/gitlab/ci/config/normalizer/number_strategy.rb`, `matrix_strategy.rb`; the product is
/// taken in key order, first key outermost).
pub fn instances(name: &str, parallel: Option<&Value>) -> Result<Vec<Instance>, String> {
    let Some(parallel) = parallel else {
        return Ok(vec![(name.to_owned(), None, Vec::new())]);
    };
    if let Some(n) = parallel.as_u64() {
        if !(1..=200).contains(&n) {
            return Err(format!(
                "job `{name}`: `parallel` must be between 1 and 200"
            ));
        }
        let total = n as u32;
        return Ok((1..=total)
            .map(|i| (format!("{name} {i}/{total}"), Some((i, total)), Vec::new()))
            .collect());
    }
    let combos =
        matrix_combinations(parallel.get("matrix").ok_or_else(|| {
            format!("job `{name}`: `parallel` must be a number or have `matrix`")
        })?)
        .map_err(|e| format!("job `{name}`: {e}"))?;
    let total = combos.len() as u32;
    Ok(combos
        .into_iter()
        .enumerate()
        .map(|(i, vars)| {
            let label = vars
                .iter()
                .map(|v| v.value.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            (
                format!("{name}: [{label}]"),
                Some((i as u32 + 1, total)),
                vars,
            )
        })
        .collect())
}

fn matrix_combinations(matrix: &Value) -> Result<Vec<Vec<RawVar>>, String> {
    let Value::Sequence(entries) = matrix else {
        return Err("`parallel:matrix` must be a list".to_owned());
    };
    let mut out = Vec::new();
    for entry in entries {
        let Value::Mapping(map) = entry else {
            return Err("each `parallel:matrix` entry must be a mapping".to_owned());
        };
        let mut combos: Vec<Vec<RawVar>> = vec![Vec::new()];
        for (key, values) in map {
            let key = scalar(key).ok_or("matrix variable names must be strings")?;
            let values = string_list(values)
                .ok_or_else(|| format!("matrix variable `{key}` must be a value or a list"))?;
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    let key = key.clone();
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(RawVar {
                            key: key.clone(),
                            value: v.clone(),
                            raw: false,
                        });
                        c
                    })
                })
                .collect();
        }
        out.extend(combos);
    }
    if out.len() > 200 {
        return Err("`parallel:matrix` makes more than 200 jobs".to_owned());
    }
    Ok(out)
}

fn parse_needs(
    value: &Value,
    name: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<PendingNeed>, String> {
    let items = match value {
        Value::Sequence(items) => items.clone(),
        other => vec![other.clone()],
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::Mapping(m) => {
                if m.contains_key("project") || m.contains_key("pipeline") {
                    warnings.push(format!("job `{name}`: a `needs` entry on another project or pipeline ({}) is dropped: exec has only this pipeline", scalar(m.get("job").unwrap_or(&Value::Null)).unwrap_or_default()));
                    continue;
                }
                let job = m
                    .get("job")
                    .and_then(scalar)
                    .ok_or_else(|| format!("job `{name}`: each `needs` entry needs `job`"))?;
                let instances = match m.get("parallel").and_then(|p| p.get("matrix")) {
                    Some(matrix) => Some(
                        matrix_combinations(matrix)?
                            .into_iter()
                            .map(|vars| {
                                format!(
                                    "{job}: [{}]",
                                    vars.iter()
                                        .map(|v| v.value.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            })
                            .collect(),
                    ),
                    None => None,
                };
                out.push(PendingNeed {
                    job,
                    instances,
                    artifacts: m.get("artifacts").and_then(Value::as_bool).unwrap_or(true),
                    optional: m.get("optional").and_then(Value::as_bool).unwrap_or(false),
                });
            }
            other => out.push(PendingNeed {
                job: scalar(&other)
                    .ok_or_else(|| format!("job `{name}`: `needs` must list job names"))?,
                instances: None,
                artifacts: true,
                optional: false,
            }),
        }
    }
    Ok(out)
}

fn parse_when(text: &str, start_in: Option<String>, name: &str) -> Result<Option<When>, String> {
    Ok(Some(match text {
        "on_success" => When::OnSuccess,
        "on_failure" => When::OnFailure,
        "always" => When::Always,
        "manual" => When::Manual,
        "delayed" => When::Delayed {
            start_in: start_in
                .ok_or_else(|| format!("job `{name}`: `when: delayed` needs `start_in`"))?,
        },
        "never" => return Ok(None),
        other => {
            return Err(format!(
                "job `{name}`: `when: {other}` is not one of on_success, on_failure, always, manual, delayed, never{}",
                did_you_mean(
                    other,
                    &[
                        "on_success",
                        "on_failure",
                        "always",
                        "manual",
                        "delayed",
                        "never"
                    ]
                )
            ));
        }
    }))
}

fn parse_allow_failure(value: &Value, name: &str) -> Result<AllowFailure, String> {
    match value {
        Value::Bool(true) => Ok(AllowFailure::Yes),
        Value::Bool(false) => Ok(AllowFailure::No),
        Value::Mapping(m) => {
            let codes = m.get("exit_codes").ok_or_else(|| {
                format!("job `{name}`: `allow_failure` as a mapping needs `exit_codes`")
            })?;
            let list = match codes {
                Value::Sequence(items) => items
                    .iter()
                    .map(|c| c.as_i64().map(|c| c as i32))
                    .collect::<Option<Vec<_>>>(),
                other => other.as_i64().map(|c| vec![c as i32]),
            };
            list.map(AllowFailure::ExitCodes)
                .ok_or_else(|| format!("job `{name}`: `allow_failure:exit_codes` must be integers"))
        }
        _ => Err(format!(
            "job `{name}`: `allow_failure` must be true, false or {{exit_codes: [...]}}"
        )),
    }
}

/// GitLab's durations (`ChronicDuration`): `3600`, `1h 30m`, `2 hours 10 minutes`, `90s`.
pub fn parse_duration(text: &str) -> Option<u64> {
    if let Ok(seconds) = text.trim().parse::<u64>() {
        return Some(seconds);
    }
    let re = regex::Regex::new(r"(?i)(\d+)\s*([a-z]*)").ok()?;
    let mut total = 0;
    for caps in re.captures_iter(text) {
        let n: u64 = caps[1].parse().ok()?;
        let unit = match caps[2].to_ascii_lowercase().trim_end_matches('s') {
            "" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hr" | "hour" => 3600,
            "d" | "day" => 86_400,
            "w" | "wk" | "week" => 604_800,
            _ => return None,
        };
        total += n * unit;
    }
    (total > 0).then_some(total)
}

/// Builds the jobs GitLab creates from `name` (none when its rules leave it out).
pub fn build(
    name: &str,
    job: &Mapping,
    env: &Env<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Built>, String> {
    for key in job.keys() {
        let key = scalar(key).unwrap_or_default();
        if !keywords::JOB.contains(&key.as_str()) {
            return Err(format!(
                "job `{name}` has an unknown keyword `{key}`{}",
                did_you_mean(&key, keywords::JOB)
            ));
        }
        if let Some((_, why)) = keywords::NOT_HERE.iter().find(|(k, _)| *k == key) {
            note(warnings, &key, name, why);
        }
    }
    if job.contains_key("trigger") {
        warnings.push(format!("job `{name}` triggers a downstream pipeline (`trigger`), which needs GitLab: it is not in this pipeline"));
        return Ok(Vec::new());
    }
    if job.contains_key("run") {
        warnings.push(format!("job `{name}` uses CI/CD Steps (`run`), which exec cannot run: it is not in this pipeline; write it as `script`"));
        return Ok(Vec::new());
    }
    if job.contains_key("rules") && (job.contains_key("only") || job.contains_key("except")) {
        return Err(format!(
            "job `{name}`: `rules` may not be used with `only` or `except` (GitLab refuses it too)"
        ));
    }
    // `default` and `inherit:default`.
    let mut job = job.clone();
    let inherit_default = inherit_filter(&job, "default")?;
    for (key, value) in &env.defaults {
        let Some(key) = key.as_str() else { continue };
        let inherited = inherit_default
            .as_ref()
            .is_none_or(|list| list.iter().any(|k| k == key));
        if inherited && !job.contains_key(key) {
            job.insert(Value::from(key), value.clone());
        }
    }
    let script = script_lines(job.get("script").unwrap_or(&Value::Null))
        .ok_or_else(|| format!("job `{name}`: `script` must be a string or a list of strings"))?;
    if script.is_empty() {
        return Err(format!(
            "job `{name}` has no `script` (every job needs `script`, `trigger` or `run`)"
        ));
    }
    let stage = job
        .get("stage")
        .and_then(scalar)
        .unwrap_or_else(|| "test".to_owned());
    if !env.stages.contains(&stage) {
        return Err(format!(
            "job `{name}`: chosen stage `{stage}` does not exist; available stages are {}",
            env.stages.join(", ")
        ));
    }
    // Variables: inherited global ones, then the job's (names expanded).
    let inherit_variables = inherit_filter(&job, "variables")?;
    let global: Vec<RawVar> = env
        .global
        .iter()
        .filter(|v| {
            inherit_variables
                .as_ref()
                .is_none_or(|list| list.contains(&v.key))
        })
        .cloned()
        .collect();
    let own = parse_variables(job.get("variables"), &format!("job `{name}`"))?;
    let mut layers: Vec<RawVar> = env
        .predefined
        .iter()
        .cloned()
        .chain(global.iter().cloned())
        .chain(own.iter().cloned())
        .chain(env.cli.iter().cloned())
        .collect();
    layers = vars::expand_names(layers);
    // Rules, or only/except.
    let outcome = {
        let scope_vars = {
            let mut v = layers.clone();
            v.push(raw("CI_JOB_NAME", name));
            v.push(raw("CI_JOB_STAGE", &stage));
            v
        };
        let scope = Scope::new(&scope_vars);
        let lookup = |n: &str| scope.get(n);
        match job.get("rules") {
            Some(list) => match rules::first_match(list, env.ctx, &lookup)
                .map_err(|e| format!("job `{name}`: {e}"))?
            {
                Some(outcome) => Some(outcome),
                None => return Ok(Vec::new()),
            },
            None => {
                if !rules::only_except(&job, env.ctx, &lookup)
                    .map_err(|e| format!("job `{name}`: {e}"))?
                {
                    return Ok(Vec::new());
                }
                None
            }
        }
    };
    let RuleOutcome {
        when: rule_when,
        start_in: rule_start_in,
        allow_failure: rule_allow_failure,
        variables: rule_variables,
        needs: rule_needs,
    } = outcome.clone().unwrap_or_default();
    let job_when = job.get("when").and_then(scalar);
    let when_text = rule_when
        .clone()
        .or(job_when.clone())
        .unwrap_or_else(|| "on_success".to_owned());
    let start_in = rule_start_in.or_else(|| job.get("start_in").and_then(scalar));
    let Some(when) = parse_when(&when_text, start_in, name)? else {
        return Ok(Vec::new());
    };
    let allow_failure = match (rule_allow_failure.as_ref(), job.get("allow_failure")) {
        (Some(value), _) | (None, Some(value)) => parse_allow_failure(value, name)?,
        // A job-level `when: manual` may fail by default; one from `rules` may not
        // (`entry/job.rb` `ignored?`, `doc/ci/jobs/job_control.md`).
        (None, None) if when == When::Manual && rule_when.is_none() => AllowFailure::Yes,
        (None, None) => AllowFailure::No,
    };
    let rule_vars = parse_variables(rule_variables.as_ref(), &format!("job `{name}` rules"))?;
    let needs_value = rule_needs.as_ref().or(job.get("needs"));
    let needs = needs_value
        .map(|v| parse_needs(v, name, warnings))
        .transpose()?;
    let dependencies = job
        .get("dependencies")
        .map(|v| {
            string_list(v)
                .ok_or_else(|| format!("job `{name}`: `dependencies` must be a list of job names"))
        })
        .transpose()?;
    let lines = |key: &str| -> Result<Vec<String>, String> {
        script_lines(job.get(key).unwrap_or(&Value::Null))
            .ok_or_else(|| format!("job `{name}`: `{key}` must be a string or a list of strings"))
    };
    let before_script = lines("before_script")?;
    let after_script = lines("after_script")?;
    let image = match job.get("image") {
        Some(Value::Mapping(m)) => m.get("name").and_then(scalar),
        Some(other) => scalar(other),
        None => None,
    };
    let services = match job.get("services") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|s| match s {
                Value::Mapping(m) => m.get("name").and_then(scalar),
                other => scalar(other),
            })
            .collect(),
        Some(_) => return Err(format!("job `{name}`: `services` must be a list")),
    };
    let timeout = job
        .get("timeout")
        .map(|v| {
            scalar(v).and_then(|t| parse_duration(&t)).ok_or_else(|| {
                format!("job `{name}`: timeout {v:?} is not a duration such as \"1h 30m\"")
            })
        })
        .transpose()?;
    let retry = match job.get("retry") {
        None => 0,
        Some(Value::Mapping(m)) => m.get("max").and_then(Value::as_u64).unwrap_or(0) as u32,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("job `{name}`: `retry` must be 0, 1, 2 or {{max: ...}}"))?
            as u32,
    };
    if retry > 2 {
        return Err(format!("job `{name}`: `retry` may be at most 2"));
    }
    let mut built = Vec::new();
    for (full_name, parallel, matrix) in instances(name, job.get("parallel"))? {
        // The job's own variables, in precedence order; predefined ones come first and
        // stay out of `Job::variables`.
        let mut user: Vec<RawVar> = global.clone();
        user.extend(own.iter().cloned());
        user.extend(matrix.iter().cloned());
        user.extend(rule_vars.iter().cloned());
        user.extend(env.cli.iter().cloned());
        let user = vars::expand_names(user);
        let mut job_predefined = vec![
            raw("CI_JOB_NAME", &full_name),
            raw("CI_JOB_NAME_SLUG", slugify(&full_name)),
            raw("CI_JOB_STAGE", &stage),
            raw("CI_NODE_TOTAL", parallel.map_or(1, |p| p.1).to_string()),
        ];
        if let Some((index, _)) = parallel {
            job_predefined.push(raw("CI_NODE_INDEX", index.to_string()));
        }
        let environment = {
            let scope_vars: Vec<RawVar> = env
                .predefined
                .iter()
                .cloned()
                .chain(job_predefined.iter().cloned())
                .chain(user.iter().cloned())
                .collect();
            let scope = Scope::new(&scope_vars);
            payload::environment(job.get("environment"), &scope, name)?
        };
        if let Some(e) = &environment {
            job_predefined.push(raw("CI_ENVIRONMENT_NAME", &e.name));
            job_predefined.push(raw(
                "CI_ENVIRONMENT_SLUG",
                payload::environment_slug(&e.name),
            ));
            job_predefined.push(raw("CI_ENVIRONMENT_TIER", &e.tier));
            if let Some(url) = &e.url {
                job_predefined.push(raw("CI_ENVIRONMENT_URL", url));
            }
            if let Some(action) = &e.action {
                job_predefined.push(raw("CI_ENVIRONMENT_ACTION", action));
            }
        }
        let all: Vec<RawVar> = env
            .predefined
            .iter()
            .cloned()
            .chain(job_predefined.iter().cloned())
            .chain(user.iter().cloned())
            .collect();
        let resolved = vars::resolve(&all);
        let user_keys: Vec<&str> = user.iter().map(|v| v.key.as_str()).collect();
        let variables: Vec<JobVariable> = resolved
            .into_iter()
            .filter(|v| user_keys.contains(&v.key.as_str()))
            .collect();
        let scope = Scope::new(&all);
        let artifacts = payload::artifacts(job.get("artifacts"), &scope, name)?;
        let cache = payload::caches(job.get("cache"), &scope, env.ctx, name)?;
        built.push(Built {
            job: Job {
                name: full_name,
                base_name: name.to_owned(),
                stage: stage.clone(),
                image: image.clone(),
                services: services.clone(),
                variables,
                before_script: before_script.clone(),
                script: script.clone(),
                after_script: after_script.clone(),
                artifacts,
                cache,
                needs: None,
                dependencies: dependencies.clone(),
                when: when.clone(),
                allow_failure: allow_failure.clone(),
                environment,
                parallel,
                timeout,
                retry,
            },
            needs: needs.clone(),
        });
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2 hours 10 minutes"), Some(7800));
        assert_eq!(parse_duration("1h 30m"), Some(5400));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn parallel_names_and_matrix_order() {
        let names = |yaml: &str| -> Vec<(String, Option<(u32, u32)>)> {
            let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
            instances("job", Some(&v))
                .unwrap()
                .into_iter()
                .map(|(n, p, _)| (n, p))
                .collect()
        };
        assert_eq!(
            names("2"),
            [
                ("job 1/2".to_owned(), Some((1, 2))),
                ("job 2/2".to_owned(), Some((2, 2)))
            ]
        );
        assert_eq!(names("1"), [("job 1/1".to_owned(), Some((1, 1)))]);
        let matrix = names("matrix: [{NAME: [foo, bar], TIER: [dev, pro]}, {NAME: beb}]");
        let just: Vec<&str> = matrix.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            just,
            [
                "job: [foo, dev]",
                "job: [foo, pro]",
                "job: [bar, dev]",
                "job: [bar, pro]",
                "job: [beb]"
            ]
        );
        assert_eq!(matrix[4].1, Some((5, 5)));
    }
}
