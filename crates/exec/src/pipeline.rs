//! A local `.gitlab-ci.yml` to the pipeline GitLab would create for a push of the local
//! repository: [`build`] (and [`preview`], the configuration after `include`, `extends` and
//! `!reference`). The older [`Pipeline::parse`] stays until the runner side moves to
//! [`build`].

mod build;
mod expr;
mod inputs;
mod jobs;
mod keywords;
mod list;
mod payload;
mod resolve;
mod rules;
mod sha1;
mod value;
mod vars;
mod yaml;

pub use build::{BuildOptions, build, preview};
pub use list::list;
pub use payload::environment_slug;

use std::collections::{BTreeMap, HashSet};

use serde_yaml_ng::{Mapping, Value};

/// Why a pipeline file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Not YAML.
    #[error("{file}: not valid YAML: {message}")]
    Yaml {
        /// The file.
        file: String,
        /// What the parser said (with line and column).
        message: String,
    },
    /// `workflow:rules` create no pipeline for this push.
    #[error("{file}: no pipeline is created for this push: {reason}")]
    NotCreated {
        /// The file.
        file: String,
        /// Which rule decided.
        reason: String,
    },
    /// Valid YAML, but not a pipeline podrunner can run.
    #[error("{file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Expands `$VAR`/`${VAR}` in `text` with `lookup` (unset: empty), for paths and names.
fn vars_expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let re = regex::Regex::new(r"\$\$|\$\{(\w+)\}|\$(\w+)").expect("a valid pattern");
    re.replace_all(text, |caps: &regex::Captures<'_>| {
        match caps.get(1).or_else(|| caps.get(2)) {
            Some(name) => lookup(name.as_str()).unwrap_or_default(),
            None => "$".to_owned(),
        }
    })
    .into_owned()
}

/// Artifacts of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactsSpec {
    /// Archive name.
    pub name: Option<String>,
    /// Paths and globs.
    pub paths: Vec<String>,
    /// Excluded globs.
    pub exclude: Vec<String>,
    /// Include untracked files.
    pub untracked: bool,
    /// `on_success`, `on_failure`, `always`.
    pub when: Option<String>,
    /// Expiry.
    pub expire_in: Option<String>,
}

/// One job, with `extends` and `default` applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineJob {
    /// Name.
    pub name: String,
    /// Stage.
    pub stage: String,
    /// Image (informational: exec runs on this machine).
    pub image: Option<String>,
    /// Job variables, `(key, value, raw)`.
    pub variables: Vec<(String, String, bool)>,
    /// `before_script`.
    pub before_script: Vec<String>,
    /// `script`.
    pub script: Vec<String>,
    /// `after_script`.
    pub after_script: Vec<String>,
    /// Artifacts.
    pub artifacts: Option<ArtifactsSpec>,
    /// `cache`, passed to the agent as GitLab would.
    pub cache: Option<serde_json::Value>,
    /// `needs` job names.
    pub needs: Option<Vec<String>>,
    /// `dependencies` job names.
    pub dependencies: Option<Vec<String>>,
    /// Failure does not fail the pipeline.
    pub allow_failure: bool,
    /// Timeout in seconds.
    pub timeout: Option<u64>,
}

/// A parsed pipeline.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    /// Stages in order (with `.pre` first and `.post` last).
    pub stages: Vec<String>,
    /// Global variables, `(key, value, raw)`.
    pub variables: Vec<(String, String, bool)>,
    /// Jobs in stage order, then file order.
    pub jobs: Vec<PipelineJob>,
    /// Things that were ignored, with why.
    pub warnings: Vec<String>,
}

const GLOBAL_KEYS: &[&str] = &[
    "stages",
    "variables",
    "default",
    "include",
    "workflow",
    "image",
    "services",
    "before_script",
    "after_script",
    "cache",
    "spec",
];
const JOB_KEYS: &[&str] = &[
    "stage",
    "image",
    "variables",
    "before_script",
    "script",
    "after_script",
    "artifacts",
    "cache",
    "needs",
    "dependencies",
    "allow_failure",
    "timeout",
    "extends",
    "tags",
    "interruptible",
    "retry",
    "services",
    "rules",
    "only",
    "except",
    "when",
    "environment",
    "coverage",
    "parallel",
    "trigger",
    "release",
    "resource_group",
    "inherit",
    "secrets",
    "id_tokens",
    "pages",
    "hooks",
    "identity",
    "manual_confirmation",
    "dast_configuration",
    "run",
];
/// Keywords that only mean something to GitLab's scheduler or other runners: reported, ignored.
const IGNORED_JOB_KEYS: &[&str] = &[
    "tags",
    "interruptible",
    "retry",
    "environment",
    "coverage",
    "resource_group",
    "id_tokens",
    "identity",
    "pages",
];
/// Keywords whose effect exec cannot give: the job is refused with the keyword named.
const UNSUPPORTED_JOB_KEYS: &[&str] = &[
    "services",
    "rules",
    "only",
    "except",
    "when",
    "parallel",
    "trigger",
    "release",
    "inherit",
    "secrets",
    "hooks",
    "manual_confirmation",
    "dast_configuration",
    "run",
];
const DEFAULT_KEYS: &[&str] = &[
    "image",
    "before_script",
    "after_script",
    "cache",
    "timeout",
    "artifacts",
    "tags",
    "interruptible",
    "retry",
    "services",
    "hooks",
    "id_tokens",
];

impl Pipeline {
    /// Parses a pipeline file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Pipeline, PipelineError> {
        let invalid = |message: String| PipelineError::Invalid {
            file: file.to_owned(),
            message,
        };
        let mut root: Value = serde_yaml_ng::from_str(text).map_err(|e| PipelineError::Yaml {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        root.apply_merge()
            .map_err(|e| invalid(format!("a YAML merge key (<<) cannot be applied: {e}")))?;
        let snapshot = root.clone();
        resolve_references(&mut root, &snapshot, 0).map_err(invalid)?;
        let Value::Mapping(top) = root else {
            return Err(invalid(
                "the file must be a mapping of job names and global keywords".to_owned(),
            ));
        };
        let mut pipeline = Pipeline::default();
        if top.contains_key("include") {
            return Err(invalid("`include` needs GitLab to fetch the included files; inline them to run the pipeline with podrunner exec".to_owned()));
        }
        if top.contains_key("workflow") {
            pipeline
                .warnings
                .push("`workflow` is ignored: exec runs the pipeline it is given".to_owned());
        }
        let mut stages: Vec<String> = match top.get("stages") {
            Some(value) => string_list(value)
                .ok_or_else(|| invalid("`stages` must be a list of names".to_owned()))?,
            None => vec!["build".into(), "test".into(), "deploy".into()],
        };
        stages.retain(|s| s != ".pre" && s != ".post");
        stages.insert(0, ".pre".into());
        stages.push(".post".into());
        pipeline.variables =
            variables(top.get("variables")).map_err(|e| invalid(format!("variables: {e}")))?;
        let mut defaults = match top.get("default") {
            Some(Value::Mapping(map)) => map.clone(),
            Some(_) => return Err(invalid("`default` must be a mapping".to_owned())),
            None => Mapping::new(),
        };
        for key in [
            "image",
            "before_script",
            "after_script",
            "cache",
            "services",
        ] {
            if let Some(value) = top.get(key)
                && !defaults.contains_key(key)
            {
                defaults.insert(Value::from(key), value.clone());
            }
        }
        let mut jobs = Vec::new();
        for (key, value) in &top {
            let Some(name) = key.as_str() else { continue };
            if GLOBAL_KEYS.contains(&name) || name.starts_with('.') {
                continue;
            }
            let Value::Mapping(_) = value else {
                return Err(invalid(format!("job {name:?} must be a mapping")));
            };
            let resolved = extend(name, &top, 0).map_err(invalid)?;
            let mut job = resolved;
            for (key, value) in &defaults {
                if let Some(key) = key.as_str()
                    && DEFAULT_KEYS.contains(&key)
                    && !job.contains_key(key)
                {
                    job.insert(Value::from(key), value.clone());
                }
            }
            jobs.push(convert(name, &job, &mut pipeline.warnings).map_err(invalid)?);
        }
        for job in &jobs {
            if !stages.contains(&job.stage) {
                return Err(invalid(format!(
                    "job {:?} uses stage {:?}, which is not in `stages` ({})",
                    job.name,
                    job.stage,
                    stages[1..stages.len() - 1].join(", ")
                )));
            }
            for need in job
                .needs
                .iter()
                .flatten()
                .chain(job.dependencies.iter().flatten())
            {
                if !jobs.iter().any(|j| &j.name == need) {
                    return Err(invalid(format!(
                        "job {:?} depends on {need:?}, which is not a job of this pipeline",
                        job.name
                    )));
                }
            }
        }
        jobs.sort_by_key(|job| {
            stages
                .iter()
                .position(|s| s == &job.stage)
                .unwrap_or(usize::MAX)
        });
        pipeline.stages = stages;
        pipeline.jobs = jobs;
        Ok(pipeline)
    }

    /// The jobs whose artifacts `job` receives: `dependencies` if given, else `needs`, else
    /// every job of earlier stages.
    pub fn artifact_sources(&self, job: &PipelineJob) -> Vec<String> {
        if let Some(dependencies) = &job.dependencies {
            return dependencies.clone();
        }
        if let Some(needs) = &job.needs {
            return needs.clone();
        }
        let stage_index = self
            .stages
            .iter()
            .position(|s| s == &job.stage)
            .unwrap_or(0);
        self.jobs
            .iter()
            .filter(|j| self.stages.iter().position(|s| s == &j.stage).unwrap_or(0) < stage_index)
            .map(|j| j.name.clone())
            .collect()
    }
}

/// Replaces `!reference [job, key, ...]` with what it points at (one level of nesting in
/// lists is flattened, as GitLab does for scripts).
fn resolve_references(value: &mut Value, root: &Value, depth: usize) -> Result<(), String> {
    if depth > 10 {
        return Err("`!reference` tags nest more than 10 levels".to_owned());
    }
    match value {
        Value::Tagged(tagged) if tagged.tag == "reference" => {
            let path = string_list(&tagged.value).ok_or(
                "a `!reference` tag takes a list of keys, e.g. !reference [.setup, script]",
            )?;
            let mut target = root;
            for key in &path {
                target = target.get(key.as_str()).ok_or_else(|| {
                    format!("`!reference [{}]` points at nothing", path.join(", "))
                })?;
            }
            let mut resolved = target.clone();
            resolve_references(&mut resolved, root, depth + 1)?;
            *value = resolved;
        }
        Value::Sequence(items) => {
            let mut flattened = Vec::with_capacity(items.len());
            for item in items.iter_mut() {
                let was_reference = matches!(item, Value::Tagged(t) if t.tag == "reference");
                resolve_references(item, root, depth)?;
                match item {
                    Value::Sequence(inner) if was_reference => {
                        flattened.extend(inner.iter().cloned())
                    }
                    other => flattened.push(other.clone()),
                }
            }
            *items = flattened;
        }
        Value::Mapping(map) => {
            for (_, item) in map.iter_mut() {
                resolve_references(item, root, depth)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The job's mapping with `extends` applied: parents deep-merged, the child winning.
fn extend(name: &str, top: &Mapping, depth: usize) -> Result<Mapping, String> {
    if depth > 11 {
        return Err(format!(
            "`extends` of {name:?} nests more than 11 levels (or loops)"
        ));
    }
    let Some(Value::Mapping(job)) = top.get(name) else {
        return Err(format!(
            "`extends` names {name:?}, which is not defined in this file"
        ));
    };
    let parents = match job.get("extends") {
        None => Vec::new(),
        Some(value) => string_list(value)
            .ok_or_else(|| format!("`extends` of {name:?} must be a name or a list of names"))?,
    };
    let mut merged = Mapping::new();
    for parent in parents {
        let resolved = extend(&parent, top, depth + 1)?;
        deep_merge(&mut merged, &resolved);
    }
    deep_merge(&mut merged, job);
    merged.remove("extends");
    Ok(merged)
}

fn deep_merge(base: &mut Mapping, over: &Mapping) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(Value::Mapping(existing)), Value::Mapping(incoming)) => {
                deep_merge(existing, incoming)
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        other => scalar(other).map(|s| vec![s]),
    }
}

/// Script lines: a string or a list, nested lists flattened.
fn script_lines(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Sequence(items) => {
            let mut lines = Vec::new();
            for item in items {
                lines.extend(script_lines(item)?);
            }
            Some(lines)
        }
        other => scalar(other).map(|s| vec![s]),
    }
}

fn variables(value: Option<&Value>) -> Result<Vec<(String, String, bool)>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Value::Mapping(map) = value else {
        return Err("must be a mapping of names to values".to_owned());
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let key = key
            .as_str()
            .ok_or("variable names must be strings")?
            .to_owned();
        let (text, raw) = match value {
            Value::Mapping(details) => {
                let text = details.get("value").and_then(scalar).unwrap_or_default();
                let raw = details
                    .get("expand")
                    .and_then(Value::as_bool)
                    .map(|e| !e)
                    .unwrap_or(false);
                (text, raw)
            }
            Value::Null => (String::new(), false),
            other => (
                scalar(other)
                    .ok_or_else(|| format!("{key}: a value must be a string, number or boolean"))?,
                false,
            ),
        };
        out.push((key, text, raw));
    }
    Ok(out)
}

fn convert(name: &str, job: &Mapping, warnings: &mut Vec<String>) -> Result<PipelineJob, String> {
    let mut seen = HashSet::new();
    for key in job.keys().filter_map(Value::as_str) {
        seen.insert(key);
        if UNSUPPORTED_JOB_KEYS.contains(&key) {
            return Err(format!(
                "job {name:?} uses `{key}`, which podrunner exec cannot honour; remove it, or run the job in GitLab"
            ));
        }
        if IGNORED_JOB_KEYS.contains(&key) {
            warnings.push(format!(
                "job {name:?}: `{key}` is ignored by podrunner exec"
            ));
        } else if !JOB_KEYS.contains(&key) {
            return Err(format!("job {name:?} has an unknown keyword `{key}`"));
        }
    }
    let lines = |key: &str| -> Result<Vec<String>, String> {
        match job.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(value) => script_lines(value).ok_or_else(|| {
                format!("job {name:?}: `{key}` must be a string or a list of strings")
            }),
        }
    };
    let script = lines("script")?;
    if script.is_empty() {
        return Err(format!("job {name:?} has no `script`"));
    }
    let names = |key: &str| -> Result<Option<Vec<String>>, String> {
        match job.get(key) {
            None => Ok(None),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|item| match item {
                    Value::Mapping(m) => m
                        .get("job")
                        .and_then(scalar)
                        .ok_or_else(|| format!("job {name:?}: each `{key}` entry needs a `job`")),
                    other => scalar(other)
                        .ok_or_else(|| format!("job {name:?}: `{key}` must list job names")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(format!("job {name:?}: `{key}` must be a list of job names")),
        }
    };
    let artifacts = match job.get("artifacts") {
        None | Some(Value::Null) => None,
        Some(Value::Mapping(a)) => {
            let mut known: BTreeMap<&str, ()> = BTreeMap::new();
            for key in a.keys().filter_map(Value::as_str) {
                known.insert(key, ());
                if ![
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
                ]
                .contains(&key)
                {
                    return Err(format!("job {name:?}: unknown artifacts keyword `{key}`"));
                }
                if ["reports", "expose_as", "public", "access"].contains(&key) {
                    warnings.push(format!(
                        "job {name:?}: `artifacts:{key}` is ignored by podrunner exec"
                    ));
                }
            }
            Some(ArtifactsSpec {
                name: a.get("name").and_then(scalar),
                paths: a.get("paths").and_then(string_list).unwrap_or_default(),
                exclude: a.get("exclude").and_then(string_list).unwrap_or_default(),
                untracked: a.get("untracked").and_then(Value::as_bool).unwrap_or(false),
                when: a.get("when").and_then(scalar),
                expire_in: a.get("expire_in").and_then(scalar),
            })
        }
        Some(_) => return Err(format!("job {name:?}: `artifacts` must be a mapping")),
    };
    let image = match job.get("image") {
        Some(Value::Mapping(m)) => m.get("name").and_then(scalar),
        Some(other) => scalar(other),
        None => None,
    };
    let timeout = match job.get("timeout") {
        None => None,
        Some(value) => Some(
            parse_timeout(&scalar(value).unwrap_or_default()).ok_or_else(|| {
                format!("job {name:?}: timeout {value:?} is not a duration such as \"1h 30m\"")
            })?,
        ),
    };
    let cache = job
        .get("cache")
        .map(|c| serde_json::to_value(c).unwrap_or(serde_json::Value::Null))
        .map(|c| {
            if c.is_array() {
                c
            } else {
                serde_json::Value::Array(vec![c])
            }
        });
    Ok(PipelineJob {
        name: name.to_owned(),
        stage: job
            .get("stage")
            .and_then(scalar)
            .unwrap_or_else(|| "test".to_owned()),
        image,
        variables: variables(job.get("variables"))
            .map_err(|e| format!("job {name:?}: variables: {e}"))?,
        before_script: lines("before_script")?,
        script,
        after_script: lines("after_script")?,
        artifacts,
        cache,
        needs: names("needs")?,
        dependencies: names("dependencies")?,
        allow_failure: job
            .get("allow_failure")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        timeout,
    })
}

/// GitLab's human durations: `3600`, `1h`, `1h 30m`, `2 hours 10 minutes`, `90s`.
fn parse_timeout(text: &str) -> Option<u64> {
    if let Ok(seconds) = text.trim().parse::<u64>() {
        return Some(seconds);
    }
    let mut total = 0u64;
    let mut number: Option<u64> = None;
    let mut word = String::new();
    let flush = |number: &mut Option<u64>, word: &mut String, total: &mut u64| -> Option<()> {
        if let Some(n) = number.take() {
            let unit = match word.trim_end_matches('s') {
                "h" | "hr" | "hour" => 3600,
                "m" | "min" | "minute" => 60,
                "" | "sec" | "second" => 1,
                "d" | "day" => 86_400,
                _ => return None,
            };
            *total += n * unit;
        }
        word.clear();
        Some(())
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !word.is_empty() {
                flush(&mut number, &mut word, &mut total)?;
            }
            number = Some(number.unwrap_or(0) * 10 + u64::from(c.to_digit(10)?));
        } else if c.is_alphabetic() {
            word.push(c.to_ascii_lowercase());
        } else if c.is_whitespace() && !word.is_empty() {
            flush(&mut number, &mut word, &mut total)?;
        }
    }
    flush(&mut number, &mut word, &mut total)?;
    (total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPELINE: &str = r#"
stages: [build, test]
variables:
  GREETING: hello
  LITERAL: { value: "$NOT_EXPANDED", expand: false }
default:
  before_script: [echo default-before]
.common: &common
  variables:
    SHARED: "yes"
  after_script:
    - echo cleanup
.setup:
  script:
    - echo setup-one
    - echo setup-two
build:
  <<: *common
  stage: build
  script:
    - !reference [.setup, script]
    - echo building
  artifacts:
    paths: [out/]
    expire_in: 1 day
test:
  extends: .common
  stage: test
  needs: [build]
  tags: [docker]
  timeout: 1h 30m
  script: echo testing
"#;

    #[test]
    fn anchors_references_extends_and_defaults() {
        let pipeline = Pipeline::parse(PIPELINE, ".gitlab-ci.yml").unwrap();
        assert_eq!(pipeline.stages, [".pre", "build", "test", ".post"]);
        assert_eq!(
            pipeline.variables,
            [
                ("GREETING".into(), "hello".into(), false),
                ("LITERAL".into(), "$NOT_EXPANDED".into(), true)
            ]
        );
        let build = &pipeline.jobs[0];
        assert_eq!(build.name, "build");
        assert_eq!(
            build.script,
            ["echo setup-one", "echo setup-two", "echo building"]
        );
        assert_eq!(build.before_script, ["echo default-before"]);
        assert_eq!(build.after_script, ["echo cleanup"]);
        assert_eq!(build.variables, [("SHARED".into(), "yes".into(), false)]);
        assert_eq!(build.artifacts.as_ref().unwrap().paths, ["out/"]);
        let test = &pipeline.jobs[1];
        assert_eq!(
            (test.after_script.clone(), test.needs.clone(), test.timeout),
            (
                vec!["echo cleanup".to_owned()],
                Some(vec!["build".to_owned()]),
                Some(5400)
            )
        );
        assert_eq!(pipeline.artifact_sources(test), ["build"]);
        assert!(
            pipeline
                .warnings
                .iter()
                .any(|w| w.contains("`tags` is ignored"))
        );
    }

    #[test]
    fn clear_errors_for_what_exec_cannot_do() {
        let error = |text: &str| Pipeline::parse(text, "ci.yml").unwrap_err().to_string();
        assert!(error("include: other.yml\njob: {script: x}\n").contains("`include` needs GitLab"));
        assert!(error("job: {script: x, rules: [{if: $X}]}\n").contains("uses `rules`"));
        assert!(
            error("job: {script: x, stage: nope}\n")
                .contains("stage \"nope\", which is not in `stages`")
        );
        assert!(error("job: {script: x, needs: [ghost]}\n").contains("depends on \"ghost\""));
        assert!(error("job: {stage: test}\n").contains("has no `script`"));
        assert!(error("job: {script: x, extends: .missing}\n").contains(".missing"));
        assert!(
            error("a: {extends: b, script: x}\nb: {extends: a, script: y}\n")
                .contains("nests more than 11")
        );
        assert!(error("job: {script: x, scirpt: y}\n").contains("unknown keyword `scirpt`"));
        assert!(error("job: [\n").contains("not valid YAML"));
        assert!(
            error("job: {script: [!reference [.nothing, script]]}\n").contains("points at nothing")
        );
    }

    #[test]
    fn default_dependencies_are_earlier_stages() {
        let p = Pipeline::parse("stages: [a, b, c]\nj1: {stage: a, script: x}\nj2: {stage: b, script: x}\nj3: {stage: c, script: x}\nj4: {stage: c, script: x, dependencies: []}\n", "ci.yml").unwrap();
        let j3 = p.jobs.iter().find(|j| j.name == "j3").unwrap();
        assert_eq!(p.artifact_sources(j3), ["j1", "j2"]);
        assert!(
            p.artifact_sources(p.jobs.iter().find(|j| j.name == "j4").unwrap())
                .is_empty()
        );
        assert_eq!(parse_timeout("2 hours 10 minutes"), Some(7800));
        assert_eq!(parse_timeout("90s"), Some(90));
        assert_eq!(parse_timeout("soon"), None);
    }
}
