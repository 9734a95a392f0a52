//! One job of the configuration to the jobs GitLab creates from it (`lib/gitlab/ci/config/
//! entry/job.rb`, `lib/gitlab/ci/pipeline/seed/build.rb`): keywords checked, `default` and
//! `inherit` applied, `rules`/`only`/`except`/`when` decided, `parallel` expanded, variables
//! resolved, and `needs`, `artifacts`, `cache` and `environment` in the payload's shapes.

use podrunner_gitlab::payload::{Artifact, Cache, JobVariable};
use serde_yaml_ng::{Mapping, Value};

use super::keywords::{self, did_you_mean};
use super::rules::{self, RuleOutcome};
use super::value::{scalar, script_lines, string_list};
use super::vars::{self, RawVar, Scope};
use crate::context::{PushContext, slugify};
use crate::model::{AllowFailure, Environment, Job, When};

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

/// GitLab's tier guess from an environment name (`app/models/environment.rb`, `guess_tier`).
fn guess_tier(name: &str) -> &'static str {
    let is = |pattern: &str| {
        regex::Regex::new(pattern)
            .map(|r| r.is_match(name))
            .unwrap_or(false)
    };
    if is("(?i)(dev|review|trunk)") {
        "development"
    } else if is("(?i)(test|tst|int|ac(ce|)pt|qa|qc|control|quality)") {
        "testing"
    } else if is("(?i)(st(a|)g|mod(e|)l|pre|demo|non)") {
        "staging"
    } else if is("(?i)(pr(o|)d|live)") {
        "production"
    } else {
        "other"
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
            environment(job.get("environment"), &scope, name)?
        };
        if let Some(e) = &environment {
            job_predefined.push(raw("CI_ENVIRONMENT_NAME", &e.name));
            job_predefined.push(raw("CI_ENVIRONMENT_SLUG", environment_slug(&e.name)));
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
        let artifacts = artifacts(job.get("artifacts"), &scope, name)?;
        let cache = caches(job.get("cache"), &scope, env.ctx, name)?;
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

/// `CI_ENVIRONMENT_SLUG` (`lib/gitlab/slug/environment.rb`): lowercase letters, digits and
/// single dashes, starting with a letter (else `env-`), at most 24 characters; when the name
/// had to change, cut to 17 and suffixed with the last 6 base-36 digits of its SHA-256.
pub fn environment_slug(name: &str) -> String {
    let mut slug: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !slug.starts_with(|c: char| c.is_ascii_lowercase()) {
        slug.insert_str(0, "env-");
    }
    while slug.contains("--") {
        slug = slug.replace("--", "-");
    }
    if slug.len() > 24 || slug != name {
        let mut cut: String = slug.chars().take(17).collect();
        if !cut.ends_with('-') {
            cut.push('-');
        }
        use sha2::Digest;
        cut.push_str(&base36_tail(&sha2::Sha256::digest(name.as_bytes())));
        cut
    } else {
        slug.trim_end_matches('-').to_owned()
    }
}

/// The last 6 base-36 digits of a big-endian number (Ruby's `to_i(16).to_s(36).last(6)`).
fn base36_tail(bytes: &[u8]) -> String {
    const MODULUS: u64 = 36u64.pow(6);
    let mut rest = bytes
        .iter()
        .fold(0u64, |acc, b| (acc * 256 + u64::from(*b)) % MODULUS);
    let mut digits = Vec::new();
    for _ in 0..6 {
        digits.push(char::from_digit((rest % 36) as u32, 36).unwrap_or('0'));
        rest /= 36;
    }
    digits.iter().rev().collect()
}

fn environment(
    value: Option<&Value>,
    scope: &Scope<'_>,
    name: &str,
) -> Result<Option<Environment>, String> {
    let expand = |text: &str| scope.expand(text).0;
    let (env_name, url, action, tier) = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Mapping(m)) => (
            m.get("name")
                .and_then(scalar)
                .ok_or_else(|| format!("job `{name}`: `environment` needs `name`"))?,
            m.get("url").and_then(scalar),
            m.get("action").and_then(scalar),
            m.get("deployment_tier").and_then(scalar),
        ),
        Some(other) => (
            scalar(other).ok_or_else(|| {
                format!("job `{name}`: `environment` must be a name or a mapping")
            })?,
            None,
            None,
            None,
        ),
    };
    let env_name = expand(&env_name);
    Ok(Some(Environment {
        tier: tier.unwrap_or_else(|| guess_tier(&env_name).to_owned()),
        url: url.map(|u| expand(&u)),
        action: Some(action.unwrap_or_else(|| "start".to_owned())),
        name: env_name,
    }))
}

/// Artifacts as GitLab sends them (`app/presenters/ci/build_runner_presenter.rb`): the
/// archive, then one entry per report (`when: always`).
fn artifacts(
    value: Option<&Value>,
    scope: &Scope<'_>,
    name: &str,
) -> Result<Vec<Artifact>, String> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Mapping(m)) => m,
        Some(_) => return Err(format!("job `{name}`: `artifacts` must be a mapping")),
    };
    const KEYS: &[&str] = &[
        "paths",
        "exclude",
        "untracked",
        "when",
        "expire_in",
        "name",
        "expose_as",
        "reports",
        "public",
        "access",
    ];
    for key in map.keys().filter_map(Value::as_str) {
        if !KEYS.contains(&key) {
            return Err(format!(
                "job `{name}`: `artifacts` has an unknown keyword `{key}`{}",
                did_you_mean(key, KEYS)
            ));
        }
    }
    let list = |key: &str| map.get(key).and_then(string_list).unwrap_or_default();
    let when = map
        .get("when")
        .and_then(scalar)
        .unwrap_or_else(|| "on_success".to_owned());
    let expire_in = map.get("expire_in").and_then(scalar).unwrap_or_default();
    let untracked = map
        .get("untracked")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut out = Vec::new();
    if untracked || map.contains_key("paths") {
        out.push(Artifact {
            name: map
                .get("name")
                .and_then(scalar)
                .map(|n| scope.expand(&n).0)
                .unwrap_or_default(),
            untracked,
            paths: list("paths"),
            exclude: list("exclude"),
            when: when.clone(),
            artifact_type: "archive".to_owned(),
            artifact_format: "zip".to_owned(),
            expire_in: expire_in.clone(),
        });
    }
    if let Some(Value::Mapping(reports)) = map.get("reports") {
        for (kind, paths) in reports {
            let kind = scalar(kind).unwrap_or_default();
            // `Ci::JobArtifact::DEFAULT_FILE_NAMES` and `TYPE_AND_FORMAT_PAIRS`
            // (`app/models/ci/job_artifact.rb`) for the reports exec reads; others keep
            // their type with a gzip archive named after it.
            let (file, format) = match kind.as_str() {
                "dotenv" => (".env.gz".to_owned(), "gzip"),
                "junit" => ("junit.xml.gz".to_owned(), "gzip"),
                other => (format!("{other}.gz"), "gzip"),
            };
            out.push(Artifact {
                name: file,
                untracked: false,
                paths: string_list(paths).unwrap_or_default(),
                exclude: Vec::new(),
                when: "always".to_owned(),
                artifact_type: kind,
                artifact_format: format.to_owned(),
                expire_in: expire_in.clone(),
            });
        }
    }
    Ok(out)
}

/// Caches as GitLab sends them (`lib/gitlab/ci/pipeline/seed/build/cache.rb`): the key
/// expanded, `default` when none (`entry/cache.rb`), `key:files` digested from the files'
/// blob ids at HEAD, `key:files_commits` from their last commits, with `prefix`.
fn caches(
    value: Option<&Value>,
    scope: &Scope<'_>,
    ctx: &PushContext,
    name: &str,
) -> Result<Vec<Cache>, String> {
    let entries = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items.clone(),
        Some(other) => vec![other.clone()],
    };
    let mut out = Vec::new();
    for entry in entries {
        let Value::Mapping(map) = entry else {
            return Err(format!("job `{name}`: each `cache` must be a mapping"));
        };
        const KEYS: &[&str] = &[
            "key",
            "paths",
            "untracked",
            "policy",
            "when",
            "unprotect",
            "fallback_keys",
        ];
        for key in map.keys().filter_map(Value::as_str) {
            if !KEYS.contains(&key) {
                return Err(format!(
                    "job `{name}`: `cache` has an unknown keyword `{key}`{}",
                    did_you_mean(key, KEYS)
                ));
            }
        }
        let key = match map.get("key") {
            None | Some(Value::Null) => "default".to_owned(),
            Some(Value::Mapping(k)) => {
                let prefix = k
                    .get("prefix")
                    .and_then(scalar)
                    .map(|p| scope.expand(&p).0)
                    .unwrap_or_default();
                let digest = if let Some(files) = k.get("files").and_then(string_list) {
                    let ids = ctx.blob_ids(&expand_patterns(&files, ctx));
                    digest(ids)
                } else if let Some(files) = k.get("files_commits").and_then(string_list) {
                    digest(
                        files
                            .iter()
                            .filter_map(|f| ctx.last_commit_of(std::slice::from_ref(f)))
                            .collect(),
                    )
                } else {
                    None
                };
                [prefix, digest.unwrap_or_else(|| "default".to_owned())]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("-")
            }
            Some(other) => scope.expand(&scalar(other).unwrap_or_default()).0,
        };
        out.push(Cache {
            key,
            untracked: map
                .get("untracked")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            policy: map
                .get("policy")
                .and_then(scalar)
                .unwrap_or_else(|| "pull-push".to_owned()),
            paths: map.get("paths").and_then(string_list).unwrap_or_default(),
            when: map
                .get("when")
                .and_then(scalar)
                .unwrap_or_else(|| "on_success".to_owned()),
            fallback_keys: map
                .get("fallback_keys")
                .and_then(string_list)
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

fn expand_patterns(patterns: &[String], ctx: &PushContext) -> Vec<String> {
    let mut out = Vec::new();
    for pattern in patterns.iter().filter(|p| !p.is_empty()) {
        if pattern.contains('*') {
            if let Ok(glob) = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
            {
                let m = glob.compile_matcher();
                out.extend(ctx.files.iter().filter(|f| m.is_match(f)).cloned());
            }
        } else {
            out.push(pattern.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

fn digest(mut hashes: Vec<String>) -> Option<String> {
    hashes.sort();
    hashes.dedup();
    (!hashes.is_empty()).then(|| super::sha1::hex(hashes.join("-").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_slugs_as_gitlab() {
        assert_eq!(
            base36_tail(&[0xaa; 32]),
            "q517sa",
            "GitLab's own test vector"
        );
        assert_eq!(environment_slug("production"), "production");
        assert_eq!(
            environment_slug("staging-1234567890123456"),
            "staging-1234567890123456"
        );
        // The slugs gitlab-ci-local's `environment` test expects.
        assert_eq!(environment_slug("Stage Domain"), "stage-domain-ip33nk");
        assert_eq!(
            environment_slug("stage-domain-foobar-long-string"),
            "stage-domain-foob-yafktx"
        );
        assert!(environment_slug("1/foo").starts_with("env-1-foo-"));
        assert!(environment_slug("review/1-foo").starts_with("review-1-foo-"));
    }

    #[test]
    fn tiers_and_durations() {
        assert_eq!(guess_tier("review/app"), "development");
        assert_eq!(guess_tier("qa"), "testing");
        assert_eq!(guess_tier("Stage Domain"), "staging");
        assert_eq!(guess_tier("production"), "production");
        assert_eq!(guess_tier("notprod"), "production");
        assert_eq!(guess_tier("somewhere"), "other");
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
