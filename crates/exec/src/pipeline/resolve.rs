//! From files to one configuration, in GitLab's order (`lib/gitlab/ci/config.rb`,
//! `build_config`): `include` (`Config::External::Processor`), then `extends`
//! (`Config::Extendable`), then `!reference` (`Config::Yaml::Tags::Resolver`). What comes out
//! is what `--preview` prints.

use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::rules::{self, Lookup};
use super::value::{scalar, string_list};
use super::{PipelineError, inputs, yaml};
use crate::context::PushContext;

/// GitLab's limits (`lib/gitlab/ci/config/external/context.rb`: 150 includes;
/// `entry/job.rb`/`extendable/entry.rb`: `extends` nests at most 11 levels;
/// `yaml/tags/reference.rb`: `!reference` at most 10).
const MAX_INCLUDES: usize = 150;
const MAX_EXTENDS_DEPTH: usize = 11;
const MAX_REFERENCE_DEPTH: usize = 10;

/// Reads one pipeline file into a mapping, its `spec:inputs` given `inputs`.
pub fn read(
    path: &Path,
    inputs: Option<&Mapping>,
    warnings: &mut Vec<String>,
) -> Result<Mapping, PipelineError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::Invalid {
        file: file.clone(),
        message: format!("cannot be read: {e}"),
    })?;
    let mut found = Vec::new();
    let documents = yaml::load_documents(&text, &mut found).map_err(|e| PipelineError::Yaml {
        file: file.clone(),
        message: e.to_string(),
    })?;
    let value = inputs::apply(documents, inputs).map_err(|message| PipelineError::Invalid {
        file: file.clone(),
        message,
    })?;
    warnings.extend(found.into_iter().map(|w| format!("{file}: {w}")));
    match value {
        Value::Mapping(map) => Ok(map),
        Value::Null => Ok(Mapping::new()),
        _ => Err(PipelineError::Invalid {
            file,
            message: "must be a mapping of job names and global keywords".to_owned(),
        }),
    }
}

/// Rails' `Hash#deep_merge`: mappings merge key by key, anything else is replaced.
pub fn deep_merge(base: &mut Mapping, over: &Mapping) {
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

/// Processes `include:` of `top` (read from `file`) and of every file it includes: included
/// files are merged in order, then the including file over them.
pub struct Includes<'a> {
    /// The project root.
    pub project_dir: &'a Path,
    /// The push.
    pub ctx: &'a PushContext,
    /// Variables for paths and `rules` (predefined, the main file's global ones, `--var`).
    pub lookup: Lookup<'a>,
    /// Warnings.
    pub warnings: &'a mut Vec<String>,
    /// Files read so far.
    pub count: usize,
}

impl Includes<'_> {
    /// `top` with its includes merged in.
    pub fn expand(
        &mut self,
        mut top: Mapping,
        file: &Path,
        chain: &mut Vec<PathBuf>,
    ) -> Result<Mapping, PipelineError> {
        let Some(include) = top.remove("include") else {
            return Ok(top);
        };
        let invalid = |message: String| PipelineError::Invalid {
            file: file.display().to_string(),
            message,
        };
        let entries = match include {
            Value::Sequence(items) => items,
            other => vec![other],
        };
        let mut merged = Mapping::new();
        for entry in entries {
            for path in self.local_paths(&entry).map_err(invalid)? {
                let full = self.project_dir.join(&path);
                let canonical = full.canonicalize().map_err(|e| invalid(format!("include `{path}`: {e} (local includes are relative to the project root, {})", self.project_dir.display())))?;
                if chain.contains(&canonical) {
                    return Err(invalid(format!(
                        "include `{path}` includes itself (through {})",
                        chain
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" → ")
                    )));
                }
                self.count += 1;
                if self.count > MAX_INCLUDES {
                    return Err(invalid(format!(
                        "more than {MAX_INCLUDES} files are included (GitLab's limit)"
                    )));
                }
                let given = entry.get("inputs").and_then(Value::as_mapping);
                let included = read(&full, given, self.warnings)?;
                chain.push(canonical);
                let included = self.expand(included, &full, chain)?;
                chain.pop();
                deep_merge(&mut merged, &included);
            }
        }
        deep_merge(&mut merged, &top);
        Ok(merged)
    }

    /// The local files one `include` entry names (none when its `rules` say no).
    fn local_paths(&mut self, entry: &Value) -> Result<Vec<String>, String> {
        let location = match entry {
            Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => {
                self.skip("remote", s);
                return Ok(Vec::new());
            }
            Value::String(s) => s.clone(),
            Value::Mapping(map) => {
                if let Some(rules) = map.get("rules") {
                    match rules::first_match(rules, self.ctx, self.lookup)
                        .map_err(|e| format!("include rules: {e}"))?
                    {
                        Some(outcome) if outcome.when.as_deref() != Some("never") => {}
                        _ => return Ok(Vec::new()),
                    }
                }
                for kind in ["remote", "template", "project", "component"] {
                    if let Some(what) = map.get(kind) {
                        self.skip(kind, &scalar(what).unwrap_or_default());
                        return Ok(Vec::new());
                    }
                }
                match map.get("local").or_else(|| map.get("file")) {
                    Some(value) => {
                        let list = string_list(value).ok_or("`include:local` must be a path")?;
                        let mut out = Vec::new();
                        for item in list {
                            out.extend(self.matching(&item)?);
                        }
                        return Ok(out);
                    }
                    None => {
                        return Err(format!(
                            "an `include` entry must name `local`, `remote`, `template`, `project` or `component`: {entry:?}"
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "an `include` entry must be a path or a mapping, not {other:?}"
                ));
            }
        };
        self.matching(&location)
    }

    /// A path, expanded and globbed (`include:local` with `*` matches files of the project).
    fn matching(&self, location: &str) -> Result<Vec<String>, String> {
        let location = super::vars_expand(location, self.lookup);
        let relative = location.trim_start_matches('/').to_owned();
        if !relative.contains('*') {
            return Ok(vec![relative]);
        }
        let matcher = globset::GlobBuilder::new(&relative)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("include `{location}` is not a valid glob: {e}"))?
            .compile_matcher();
        let mut files = Vec::new();
        walk(self.project_dir, Path::new(""), &mut files);
        files.sort();
        Ok(files.into_iter().filter(|f| matcher.is_match(f)).collect())
    }

    fn skip(&mut self, kind: &str, what: &str) {
        self.warnings.push(format!(
            "include:{kind} `{what}` is not read: exec reads only local files; download it into the project and include it with `include:local`, or the jobs and keys it defines are missing"
        ));
    }
}

fn walk(root: &Path, relative: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(root.join(relative)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let path = relative.join(&name);
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(root, &path, out),
            Ok(_) => out.push(path.to_string_lossy().into_owned()),
            Err(_) => {}
        }
    }
}

/// Applies `extends` to every entry that has it: parents deep-merged in order, the entry
/// over them; a loop is named with its path.
pub fn extends(top: &mut Mapping) -> Result<(), String> {
    let names: Vec<String> = top
        .iter()
        .filter(|(_, v)| matches!(v, Value::Mapping(m) if m.contains_key("extends")))
        .filter_map(|(k, _)| k.as_str().map(str::to_owned))
        .collect();
    let original = top.clone();
    for name in names {
        let resolved = extended(&name, &original, &mut Vec::new())?;
        top.insert(Value::from(name), Value::Mapping(resolved));
    }
    Ok(())
}

fn extended(name: &str, top: &Mapping, stack: &mut Vec<String>) -> Result<Mapping, String> {
    if let Some(at) = stack.iter().position(|s| s == name) {
        let mut cycle = stack[at..].to_vec();
        cycle.push(name.to_owned());
        return Err(format!(
            "circular dependency detected in `extends`: {}",
            cycle.join(" → ")
        ));
    }
    if stack.len() > MAX_EXTENDS_DEPTH {
        return Err(format!(
            "`extends` of `{}` nests more than {MAX_EXTENDS_DEPTH} levels",
            stack[0]
        ));
    }
    let Some(Value::Mapping(job)) = top.get(name) else {
        let who = stack.last().map_or(name, String::as_str);
        return Err(format!(
            "`{who}`: unknown key in `extends`: `{name}` is not defined (or is not a mapping)"
        ));
    };
    let parents = match job.get("extends") {
        None => Vec::new(),
        Some(value) => string_list(value)
            .ok_or_else(|| format!("`extends` of `{name}` must be a name or a list of names"))?,
    };
    stack.push(name.to_owned());
    let mut merged = Mapping::new();
    for parent in parents {
        let resolved = extended(&parent, top, stack)?;
        deep_merge(&mut merged, &resolved);
    }
    stack.pop();
    let mut own = job.clone();
    own.remove("extends");
    deep_merge(&mut merged, &own);
    Ok(merged)
}

/// Replaces every `!reference [a, b, ...]` with what it points at in `root` (itself resolved
/// first).
pub fn references(top: &mut Mapping) -> Result<(), String> {
    let root = Value::Mapping(top.clone());
    for (_, value) in top.iter_mut() {
        resolve(value, &root, 0)?;
    }
    Ok(())
}

fn resolve(value: &mut Value, root: &Value, depth: usize) -> Result<(), String> {
    match value {
        Value::Tagged(tagged) => {
            if tagged.tag != "reference" {
                return Err(format!(
                    "unknown YAML tag `{}`: GitLab knows only `!reference`",
                    tagged.tag
                ));
            }
            if depth >= MAX_REFERENCE_DEPTH {
                return Err(format!(
                    "`!reference` tags nest more than {MAX_REFERENCE_DEPTH} levels"
                ));
            }
            let path = string_list(&tagged.value).filter(|p| !p.is_empty()).ok_or(
                "a `!reference` tag takes a list of keys, e.g. !reference [.setup, script]",
            )?;
            let mut target = root;
            for key in &path {
                target = target.get(key.as_str()).ok_or_else(|| {
                    format!("!reference [{}] could not be found", path.join(", "))
                })?;
            }
            let mut resolved = target.clone();
            resolve(&mut resolved, root, depth + 1)?;
            *value = resolved;
        }
        Value::Sequence(items) => {
            for item in items {
                resolve(item, root, depth)?;
            }
        }
        Value::Mapping(map) => {
            for (_, item) in map.iter_mut() {
                resolve(item, root, depth)?;
            }
        }
        _ => {}
    }
    Ok(())
}
