//! Helm values of the official GitLab Runner chart as configuration input: `runners.config`
//! (a TOML template) combined with `gitlabUrl`, `runnerToken`, `concurrent`,
//! `checkInterval`, `logLevel` and friends, the way the chart's entrypoint and
//! `gitlab-runner register --template-config` combine them.

use std::path::Path;

use serde_yaml_ng::Value;

use crate::ConfigError;
use crate::diagnostics::{Diagnostic, KeyPath, Location, SourceText};
use crate::enums::{Executor, LogFormat, LogLevel};
use crate::env::Environment;
use crate::load::{LoadedConfig, finish, parse};
use crate::model::{Config, RunnerConfig};
use crate::validate::Mode;

/// The chart's `runners.config` when the values give none.
const CHART_DEFAULT_RUNNER_CONFIG: &str = "[[runners]]\n  [runners.kubernetes]\n    namespace = \"{{.Release.Namespace}}\"\n    image = \"alpine\"\n";
/// The chart's default `concurrent`.
const CHART_DEFAULT_CONCURRENT: i64 = 10;

/// What Helm would know about the release when rendering `runners.config`.
#[derive(Debug, Clone)]
pub struct HelmOptions {
    /// `.Release.Name`.
    pub release_name: String,
    /// `.Release.Namespace`; also the job namespace when neither the TOML nor
    /// `runners.jobNamespace` names one, as in the chart.
    pub release_namespace: String,
}

impl Default for HelmOptions {
    fn default() -> Self {
        HelmOptions {
            release_name: "podrunner".to_owned(),
            release_namespace: "default".to_owned(),
        }
    }
}

/// Reads Helm values from `path` and builds the configuration the chart would run.
pub fn load_helm_values_file(
    path: &Path,
    env: &dyn Environment,
    options: &HelmOptions,
) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_helm_values(&path.display().to_string(), &text, env, options)
}

/// Builds the configuration the chart would run from the values text of file `name`.
pub fn load_helm_values(
    name: &str,
    text: &str,
    env: &dyn Environment,
    options: &HelmOptions,
) -> Result<LoadedConfig, ConfigError> {
    let invalid = |line: usize, column: usize, message: String| {
        ConfigError::invalid(vec![Diagnostic::error(
            Some(Location {
                file: name.to_owned(),
                line,
                column,
            }),
            None,
            message,
        )])
    };
    let mut values: Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        match duplicate_key(&e.to_string()) {
            Some(key) => {
                let (line, column) = duplicate_key_line(text, key, line).unwrap_or((line, column));
                invalid(
                    line,
                    column,
                    format!("the key {key:?} appears twice in one mapping: keep one of them"),
                )
            }
            None => invalid(line, column, format!("not valid YAML: {e}")),
        }
    })?;
    // Merge keys (`<<: *anchor`, `<<: [*a, *b]`), as Helm's YAML library applies them:
    // keys written in the mapping win over merged ones, earlier merged mappings over later.
    values.apply_merge().map_err(|e| {
        invalid(
            1,
            1,
            format!("a YAML merge key (`<<`) cannot be applied: {e}"),
        )
    })?;
    let values = if values.is_null() {
        Value::Mapping(Default::default())
    } else {
        values
    };
    let reader = ValuesReader {
        name,
        text,
        values: &values,
    };
    if !values.is_mapping() {
        return Err(ConfigError::invalid(vec![
            reader.error(&[], "Helm values must be a mapping of keys to values"),
        ]));
    }

    let mut errors = Vec::new();
    let gitlab_url = take(&mut errors, reader.string(&["gitlabUrl"]));
    let runner_token = take(&mut errors, reader.string(&["runnerToken"]));
    let registration_token = take(&mut errors, reader.string(&["runnerRegistrationToken"]));
    let concurrent = take(&mut errors, reader.integer(&["concurrent"]));
    let check_interval = take(&mut errors, reader.integer(&["checkInterval"]));
    let log_level = take(&mut errors, reader.string(&["logLevel"]));
    let log_format = take(&mut errors, reader.string(&["logFormat"]));
    let shutdown_timeout = take(&mut errors, reader.integer(&["shutdown_timeout"]));
    let metrics_enabled = take(&mut errors, reader.boolean(&["metrics", "enabled"]));
    let metrics_port = take(&mut errors, reader.integer(&["metrics", "port"]));
    let runner_config = take(&mut errors, reader.string(&["runners", "config"]));
    let executor = take(&mut errors, reader.string(&["runners", "executor"]));
    let runner_name = take(&mut errors, reader.string(&["runners", "name"]));
    let job_namespace = take(&mut errors, reader.string(&["runners", "jobNamespace"]));
    if !errors.is_empty() {
        return Err(ConfigError::invalid(errors));
    }

    let template = runner_config.unwrap_or_else(|| CHART_DEFAULT_RUNNER_CONFIG.to_owned());
    let rendered = render_template(&template, &values, options).map_err(|(offset, message)| {
        let source = SourceText::embedded(
            format!("{name}[runners.config]"),
            template.clone(),
            name,
            text,
        );
        ConfigError::invalid(vec![Diagnostic::error(
            Some(source.location(offset)),
            Some(KeyPath::root().key("runners").key("config")),
            message,
        )])
    })?;
    let source = SourceText::embedded(format!("{name}[runners.config]"), rendered, name, text);
    let mut parsed = parse(&source)?;

    // `register --template-config` takes the first [[runners]] entry only; global keys of
    // the template are not used, the chart writes the global section from its values.
    for key in crate::load::known_fields("")
        .unwrap_or(&[])
        .iter()
        .filter(|k| **k != "runners")
    {
        let path = KeyPath::root().key(*key);
        if parsed.spans.contains(&path) {
            let location = parsed
                .spans
                .nearest(&path)
                .map(|s| source.location(s.key.start));
            parsed.warnings.push(Diagnostic::warning(
                location,
                Some(path),
                "is ignored inside runners.config: the chart writes the global section from its own values (concurrent, checkInterval, logLevel, logFormat, shutdown_timeout)",
            ));
        }
    }
    for note in crate::chart_values::notes(&values) {
        let path: Vec<&str> = note.path.iter().map(String::as_str).collect();
        parsed.warnings.push(reader.warning(&path, note.message));
    }
    let mut runners = std::mem::take(&mut parsed.config.runners);
    if runners.len() > 1 {
        let path = KeyPath::root().key("runners").index(1);
        let location = parsed
            .spans
            .nearest(&path)
            .map(|s| source.location(s.key.start));
        parsed.warnings.push(Diagnostic::warning(
            location,
            Some(path),
            "only the first [[runners]] entry of runners.config is used, as in the official chart",
        ));
        runners.truncate(1);
    }
    let mut runner = runners.pop().unwrap_or_else(RunnerConfig::default);

    let mut global_errors = Vec::new();
    let mut config = Config {
        concurrent: concurrent.unwrap_or(CHART_DEFAULT_CONCURRENT),
        ..Config::default()
    };
    if config.concurrent < 1 {
        global_errors.push(reader.error(
            &["concurrent"],
            format!("is {}; it must be at least 1", config.concurrent),
        ));
    }
    config.check_interval = check_interval.unwrap_or(config.check_interval);
    if let Some(level) = log_level {
        match level.parse::<LogLevel>() {
            Ok(level) => config.log_level = level,
            Err(e) => global_errors.push(reader.error(&["logLevel"], e.to_string())),
        }
    }
    if let Some(format) = log_format {
        match format.parse::<LogFormat>() {
            Ok(format) => config.log_format = format,
            Err(e) => global_errors.push(reader.error(&["logFormat"], e.to_string())),
        }
    }
    config.shutdown_timeout = shutdown_timeout.unwrap_or(0);
    if metrics_enabled == Some(true) {
        config.listen_address = Some(format!(":{}", metrics_port.unwrap_or(9252)));
    }
    match executor
        .as_deref()
        .unwrap_or("kubernetes")
        .parse::<Executor>()
    {
        Ok(executor) => runner.executor = Some(executor),
        Err(e) => global_errors.push(reader.error(&["runners", "executor"], e.to_string())),
    }
    if !global_errors.is_empty() {
        return Err(ConfigError::Invalid {
            errors: global_errors,
            warnings: parsed.warnings,
        });
    }
    if let Some(url) = gitlab_url.filter(|u| !u.is_empty()) {
        runner.url = Some(url);
    }
    if let Some(token) = runner_token.filter(|t| !t.is_empty()) {
        runner.token = Some(token.into());
    } else if registration_token.is_some_and(|t| !t.is_empty()) && runner.token.is_none() {
        parsed.warnings.push(reader.warning(
            &["runnerRegistrationToken"],
            "is a legacy registration token: register once with `podrunner register` and give the resulting token as runnerToken",
        ));
    }
    if runner_name.is_some() {
        runner.name = runner_name;
    }
    if runner.executor == Some(Executor::Kubernetes) {
        let kubernetes = runner.kubernetes.get_or_insert_with(Default::default);
        if kubernetes.namespace.as_deref().unwrap_or("").is_empty() {
            kubernetes.namespace = Some(
                job_namespace
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| options.release_namespace.clone()),
            );
        }
    }
    config.runners = vec![runner];
    parsed.config = config;
    finish(parsed, &source, env, Mode::Helm)
}

fn take<T>(errors: &mut Vec<Diagnostic>, result: Result<Option<T>, Diagnostic>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok().flatten()
}

/// Typed access to the values, with errors that point at the key's line.
struct ValuesReader<'a> {
    name: &'a str,
    text: &'a str,
    values: &'a Value,
}

impl ValuesReader<'_> {
    fn get(&self, path: &[&str]) -> Option<&Value> {
        path.iter()
            .try_fold(self.values, |value, key| value.get(*key))
            .filter(|v| !v.is_null())
    }

    fn diagnostic_path(path: &[&str]) -> Option<KeyPath> {
        (!path.is_empty()).then(|| path.iter().fold(KeyPath::root(), |p, k| p.key(*k)))
    }

    fn error(&self, path: &[&str], message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(
            yaml_key_location(self.name, self.text, path),
            Self::diagnostic_path(path),
            message,
        )
    }

    fn warning(&self, path: &[&str], message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(
            yaml_key_location(self.name, self.text, path),
            Self::diagnostic_path(path),
            message,
        )
    }

    fn string(&self, path: &[&str]) -> Result<Option<String>, Diagnostic> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(
                path,
                format!("expected a string, found {}", describe(other)),
            )),
        }
    }

    fn integer(&self, path: &[&str]) -> Result<Option<i64>, Diagnostic> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
            Some(other) => Err(self.error(
                path,
                format!("expected a whole number, found {}", describe(other)),
            )),
        }
    }

    fn boolean(&self, path: &[&str]) -> Result<Option<bool>, Diagnostic> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(
                path,
                format!("expected true or false, found {}", describe(other)),
            )),
        }
    }
}

/// The key of serde_yaml_ng's duplicate-key error (`duplicate entry with key "a"`).
fn duplicate_key(message: &str) -> Option<&str> {
    let rest = message.split("duplicate entry with key \"").nth(1)?;
    rest.split('"').next()
}

/// Where `key` appears for the second time at one indentation, from the mapping that starts
/// at line `from` (1-based): the error itself points at the mapping, not the duplicate.
fn duplicate_key_line(text: &str, key: &str, from: usize) -> Option<(usize, usize)> {
    let mut indent = None;
    for (index, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let trimmed = line.trim_start();
        let column = line.len() - trimmed.len();
        let trimmed = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let named = [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ]
        .iter()
        .any(|k| trimmed.starts_with(k.as_str()));
        if !named {
            continue;
        }
        match indent {
            None => indent = Some(column),
            Some(first) if first == column => return Some((index + 1, column + 1)),
            Some(_) => {}
        }
    }
    None
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => format!("{b}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Null => "null".to_owned(),
        Value::Tagged(_) => "a tagged value".to_owned(),
    }
}

/// The location of a nested key in a YAML text written in block style: each key is found
/// on a line after its parent's, indented deeper.
fn yaml_key_location(name: &str, text: &str, path: &[&str]) -> Option<Location> {
    let mut min_indent = 0usize;
    let mut start_line = 0usize;
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    for key in path {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start_line) {
            let indent = line.len() - line.trim_start().len();
            let body = line.trim_start();
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            if found.is_some() && indent < min_indent {
                break;
            }
            let quoted = [
                format!("{key}:"),
                format!("\"{key}\":"),
                format!("'{key}':"),
            ];
            if indent >= min_indent && quoted.iter().any(|q| body.starts_with(q.as_str())) {
                hit = Some((i, indent));
                break;
            }
        }
        let (line, indent) = hit?;
        found = Some(Location {
            file: name.to_owned(),
            line: line + 1,
            column: indent + 1,
        });
        start_line = line + 1;
        min_indent = indent + 1;
    }
    found
}

/// Renders the subset of Helm's `tpl` that runner configs use: `.Release.Namespace`,
/// `.Release.Name` and `.Values.<path>` with a scalar value. Anything else is refused with
/// its offset, because guessing would give a configuration Helm would not.
fn render_template(
    template: &str,
    values: &Value,
    options: &HelmOptions,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut consumed = 0usize;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or((
            consumed + start,
            "a template expression opened with {{ is never closed with }}".to_owned(),
        ))?;
        let expression = after[..end].trim();
        let value = match expression {
            ".Release.Namespace" => options.release_namespace.clone(),
            ".Release.Name" => options.release_name.clone(),
            e if e.starts_with(".Values.") => {
                let path: Vec<&str> = e[".Values.".len()..].split('.').collect();
                let found = path.iter().try_fold(values, |v, k| v.get(*k));
                match found {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    _ => {
                        return Err((
                            consumed + start,
                            format!(
                                "{{{{ {e} }}}} names no string, number or boolean in the values"
                            ),
                        ));
                    }
                }
            }
            other => {
                return Err((
                    consumed + start,
                    format!(
                        "the template expression {{{{ {other} }}}} needs Helm itself; podrunner renders only .Release.Namespace, .Release.Name and .Values.<path>: render the chart with Helm and pass the resulting config.toml with --config"
                    ),
                ));
            }
        };
        out.push_str(&value);
        let advance = start + 2 + end + 2;
        consumed += advance;
        rest = &rest[advance..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_template_subset() {
        let values: Value = serde_yaml_ng::from_str("image:\n  tag: v1\nreplicas: 2\n").unwrap();
        let options = HelmOptions {
            release_name: "ci".into(),
            release_namespace: "runners".into(),
        };
        let out = render_template("ns = \"{{ .Release.Namespace }}\" n = \"{{.Release.Name}}\" t = \"{{ .Values.image.tag }}\" r = {{ .Values.replicas }}", &values, &options).unwrap();
        assert_eq!(out, "ns = \"runners\" n = \"ci\" t = \"v1\" r = 2");
        let (offset, message) =
            render_template("a\nb = \"{{ include \"x\" . }}\"", &values, &options).unwrap_err();
        assert_eq!(offset, 7);
        assert!(message.contains("needs Helm itself"), "{message}");
        assert!(render_template("{{ .Values.missing }}", &values, &options).is_err());
        assert!(render_template("{{ .Release.Name", &values, &options).is_err());
    }

    #[test]
    fn finds_nested_yaml_keys() {
        let text =
            "# c\ngitlabUrl: x\nrunners:\n  name: n\n  config: |\n    [[runners]]\nconcurrent: 3\n";
        assert_eq!(
            yaml_key_location("v.yaml", text, &["concurrent"])
                .unwrap()
                .to_string(),
            "v.yaml:7:1"
        );
        assert_eq!(
            yaml_key_location("v.yaml", text, &["runners", "config"])
                .unwrap()
                .to_string(),
            "v.yaml:5:3"
        );
        assert!(yaml_key_location("v.yaml", text, &["runners", "missing"]).is_none());
    }

    fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
        let env = std::collections::HashMap::<String, String>::new();
        load_helm_values("values.yaml", text, &env, &HelmOptions::default())
    }

    #[test]
    fn merge_keys_are_applied_as_helm_does() {
        let text = "base: &base\n  concurrent: 7\n  checkInterval: 9\nextra: &extra\n  checkInterval: 11\n  concurrent: 8\ngitlabUrl: https://gitlab.example.com\nrunnerToken: glrt-x\n<<: [*base, *extra]\nconcurrent: 3\n";
        let loaded = load(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.config.concurrent, 3, "keys in the mapping win");
        assert_eq!(
            loaded.config.check_interval, 9,
            "earlier merged mappings win"
        );
        let text = "common: &common\n  concurrent: 5\ngitlabUrl: https://gitlab.example.com\nrunnerToken: glrt-x\n<<: *common\n";
        assert_eq!(
            load(text).unwrap().config.concurrent,
            5,
            "the merged block is kept"
        );
    }

    #[test]
    fn duplicate_keys_are_named_with_their_line() {
        let text =
            "gitlabUrl: https://gitlab.example.com\nrunners:\n  name: a\n  tags: x\n  name: b\n";
        let error = load(text).unwrap_err().to_string();
        assert!(error.contains("values.yaml:5:3"), "{error}");
        assert!(error.contains("the key \"name\" appears twice"), "{error}");
    }
}
