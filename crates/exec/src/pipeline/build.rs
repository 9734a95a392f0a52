//! The entry point: a pipeline file and the local repository to [`model::Pipeline`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::PipelineError;
use super::jobs::{self, Built, Env};
use super::keywords::{self, did_you_mean};
use super::resolve::{self, Includes};
use super::rules;
use super::value::{scalar, string_list};
use super::vars::{self, RawVar, Scope};
use crate::context::PushContext;
use crate::model::{self, Need};

/// What [`build`] needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The pipeline file; its directory is the project.
    pub file: PathBuf,
    /// `--var KEY=VALUE`, in order (they win over every variable of the file).
    pub variables: Vec<(String, String)>,
    /// `--working-tree`: the push includes uncommitted changes (for `exists`, `changes`).
    pub working_tree: bool,
}

struct Loaded {
    file: String,
    ctx: PushContext,
    predefined: Vec<RawVar>,
    cli: Vec<RawVar>,
    config: Mapping,
    warnings: Vec<String>,
}

fn load(options: &BuildOptions) -> Result<Loaded, PipelineError> {
    let file = options.file.display().to_string();
    let project_dir = project_dir(&options.file);
    let ctx = PushContext::from_repo(&project_dir, options.working_tree);
    let predefined: Vec<RawVar> = ctx
        .predefined()
        .into_iter()
        .map(|v| RawVar {
            key: v.key,
            value: v.value,
            raw: true,
        })
        .collect();
    let cli: Vec<RawVar> = options
        .variables
        .iter()
        .map(|(k, v)| RawVar {
            key: k.clone(),
            value: v.clone(),
            raw: false,
        })
        .collect();
    let mut warnings = Vec::new();
    if !ctx.is_git {
        warnings.push(format!("{} is not in a git repository: the push is taken to be branch `main`, the default branch, changing every file", project_dir.display()));
    }
    let top = resolve::read(&options.file, None, &mut warnings)?;
    let invalid = |message: String| PipelineError::Invalid {
        file: file.clone(),
        message,
    };
    // `include` paths and rules see the predefined, global and command-line variables.
    let global = jobs::parse_variables(top.get("variables"), "the top level").unwrap_or_default();
    let scope_vars: Vec<RawVar> = predefined
        .iter()
        .chain(&global)
        .chain(&cli)
        .cloned()
        .collect();
    let scope = Scope::new(&scope_vars);
    let lookup = |n: &str| scope.get(n);
    let mut includes = Includes {
        project_dir: &project_dir,
        ctx: &ctx,
        lookup: &lookup,
        warnings: &mut warnings,
        count: 0,
    };
    let canonical = options
        .file
        .canonicalize()
        .unwrap_or_else(|_| options.file.clone());
    let mut config = includes.expand(top, &options.file, &mut vec![canonical])?;
    resolve::extends(&mut config).map_err(invalid)?;
    resolve::references(&mut config).map_err(invalid)?;
    Ok(Loaded {
        file,
        ctx,
        predefined,
        cli,
        config,
        warnings,
    })
}

/// The configuration after `include`, `extends` and `!reference`, as YAML (`--preview`).
pub fn preview(options: &BuildOptions) -> Result<String, PipelineError> {
    let mut loaded = load(options)?;
    // Scripts read as GitLab's `Entry::Commands` reads them: nested lists (from
    // `!reference`) flattened.
    for (_, entry) in loaded.config.iter_mut() {
        if let Value::Mapping(job) = entry {
            for key in ["before_script", "script", "after_script"] {
                if let Some(value @ Value::Sequence(_)) = job.get_mut(key) {
                    let lines = string_list(value).unwrap_or_default();
                    *value = Value::Sequence(lines.into_iter().map(Value::from).collect());
                }
            }
        }
    }
    serde_yaml_ng::to_string(&Value::Mapping(loaded.config)).map_err(|e| PipelineError::Invalid {
        file: loaded.file,
        message: format!("cannot be written back as YAML: {e}"),
    })
}

/// The pipeline GitLab would create for a push of the local repository.
pub fn build(options: &BuildOptions) -> Result<model::Pipeline, PipelineError> {
    let Loaded {
        file,
        ctx,
        predefined,
        cli,
        config,
        mut warnings,
    } = load(options)?;
    let invalid = |message: String| PipelineError::Invalid {
        file: file.clone(),
        message,
    };
    let mut job_names = Vec::new();
    for (key, value) in &config {
        let name = scalar(key)
            .ok_or_else(|| invalid(format!("a top-level key must be a name, not {key:?}")))?;
        if keywords::GLOBAL.contains(&name.as_str()) || name.starts_with('.') {
            continue;
        }
        if !matches!(value, Value::Mapping(_)) {
            return Err(invalid(format!(
                "`{name}` is neither a global keyword nor a job (a job is a mapping){}",
                did_you_mean(&name, keywords::GLOBAL)
            )));
        }
        job_names.push(name);
    }
    let mut stages = match config.get("stages").or_else(|| config.get("types")) {
        Some(value) => string_list(value)
            .ok_or_else(|| invalid("`stages` must be a list of names".to_owned()))?,
        None => vec!["build".into(), "test".into(), "deploy".into()],
    };
    // `Config::EdgeStagesInjector`: `.pre` first and `.post` last.
    stages.retain(|s| s != ".pre" && s != ".post");
    stages.insert(0, ".pre".into());
    stages.push(".post".into());
    let mut global =
        jobs::parse_variables(config.get("variables"), "the top level").map_err(invalid)?;
    // `workflow`.
    let mut name = None;
    if let Some(workflow) = config.get("workflow") {
        let Value::Mapping(workflow) = workflow else {
            return Err(invalid("`workflow` must be a mapping".to_owned()));
        };
        for key in workflow.keys().filter_map(Value::as_str) {
            if !["rules", "name", "auto_cancel"].contains(&key) {
                return Err(invalid(format!(
                    "`workflow` has an unknown keyword `{key}`{}",
                    did_you_mean(key, &["rules", "name", "auto_cancel"])
                )));
            }
        }
        if let Some(list) = workflow.get("rules") {
            let scope_vars: Vec<RawVar> = predefined
                .iter()
                .chain(&global)
                .chain(&cli)
                .cloned()
                .collect();
            let scope = Scope::new(&scope_vars);
            let lookup = |n: &str| scope.get(n);
            match rules::first_match(list, &ctx, &lookup)
                .map_err(|e| invalid(format!("workflow: {e}")))?
            {
                None => {
                    return Err(PipelineError::NotCreated {
                        file,
                        reason: "no entry of `workflow:rules` matches".to_owned(),
                    });
                }
                Some(outcome) if outcome.when.as_deref() == Some("never") => {
                    return Err(PipelineError::NotCreated {
                        file,
                        reason: "the matching entry of `workflow:rules` says `when: never`"
                            .to_owned(),
                    });
                }
                Some(outcome) => global.extend(
                    jobs::parse_variables(outcome.variables.as_ref(), "workflow:rules")
                        .map_err(invalid)?,
                ),
            }
        }
        if let Some(text) = workflow.get("name").and_then(scalar) {
            let scope_vars: Vec<RawVar> = predefined
                .iter()
                .chain(&global)
                .chain(&cli)
                .cloned()
                .collect();
            name = Some(Scope::new(&scope_vars).expand(&text).0);
        }
    }
    // `default`, and the old top-level keywords it replaced.
    let mut defaults = match config.get("default") {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(m)) => m.clone(),
        Some(_) => return Err(invalid("`default` must be a mapping".to_owned())),
    };
    for key in defaults.keys().filter_map(Value::as_str) {
        if !keywords::DEFAULT.contains(&key) {
            return Err(invalid(format!(
                "`default` has an unknown keyword `{key}`{}",
                did_you_mean(key, keywords::DEFAULT)
            )));
        }
    }
    for key in [
        "image",
        "services",
        "before_script",
        "after_script",
        "cache",
    ] {
        if let Some(value) = config.get(key)
            && !defaults.contains_key(key)
        {
            defaults.insert(Value::from(key), value.clone());
        }
    }
    let env = Env {
        ctx: &ctx,
        predefined: predefined.clone(),
        global: global.clone(),
        cli: cli.clone(),
        defaults,
        stages: stages.clone(),
    };
    let mut built: Vec<Built> = Vec::new();
    for job_name in &job_names {
        let Some(Value::Mapping(job)) = config.get(job_name.as_str()) else {
            continue;
        };
        built.extend(jobs::build(job_name, job, &env, &mut warnings).map_err(invalid)?);
    }
    let jobs = link(built, &stages).map_err(invalid)?;
    let global_keys: Vec<&str> = global.iter().chain(&cli).map(|v| v.key.as_str()).collect();
    let all: Vec<RawVar> = predefined
        .iter()
        .chain(&global)
        .chain(&cli)
        .cloned()
        .collect();
    let variables = vars::resolve(&all)
        .into_iter()
        .filter(|v| global_keys.contains(&v.key.as_str()))
        .collect();
    Ok(model::Pipeline {
        stages,
        name,
        variables,
        predefined: ctx.predefined(),
        jobs,
        warnings,
    })
}

/// `needs` and `dependencies` to full job names (a parallel job stands for all its
/// instances), checked: each names a job of the pipeline in this or an earlier stage
/// (`dependencies`: an earlier one), and `needs` has no loop. Jobs are then in stage order.
fn link(built: Vec<Built>, stages: &[String]) -> Result<Vec<model::Job>, String> {
    let stage_of = |s: &str| stages.iter().position(|x| x == s).unwrap_or(0);
    let mut by_base: HashMap<&str, Vec<(String, usize)>> = HashMap::new();
    for b in &built {
        by_base
            .entry(b.job.base_name.as_str())
            .or_default()
            .push((b.job.name.clone(), stage_of(&b.job.stage)));
    }
    let lookup = |name: &str| -> Vec<(String, usize)> {
        if let Some(list) = by_base.get(name) {
            return list.clone();
        }
        built
            .iter()
            .filter(|b| b.job.name == name)
            .map(|b| (b.job.name.clone(), stage_of(&b.job.stage)))
            .collect()
    };
    let mut jobs = Vec::new();
    for b in &built {
        let mut job = b.job.clone();
        let own_stage = stage_of(&job.stage);
        if let Some(needs) = &b.needs {
            let mut out = Vec::new();
            for need in needs {
                let mut found = lookup(&need.job);
                if let Some(only) = &need.instances {
                    found.retain(|(n, _)| only.contains(n));
                }
                if found.is_empty() {
                    if need.optional {
                        continue;
                    }
                    return Err(format!(
                        "job `{}` needs `{}`, which is not in the pipeline (add `optional: true` if that is expected)",
                        job.name, need.job
                    ));
                }
                for (name, stage) in found {
                    if stage > own_stage {
                        return Err(format!(
                            "job `{}` needs `{name}`, which is in a later stage",
                            job.name
                        ));
                    }
                    out.push(Need {
                        job: name,
                        artifacts: need.artifacts,
                        optional: need.optional,
                    });
                }
            }
            job.needs = Some(out);
        }
        if let Some(dependencies) = &job.dependencies {
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for dependency in dependencies {
                let found = lookup(dependency);
                if found.is_empty() {
                    missing.push(dependency.clone());
                }
                for (name, stage) in found {
                    // `lib/gitlab/ci/yaml_processor.rb`, `validate_job_dependency!`: an
                    // earlier stage, unless the job also `needs` it.
                    let needed = job.needs.iter().flatten().any(|n| n.job == name);
                    if stage >= own_stage && !needed {
                        return Err(format!(
                            "job `{}`: dependency `{name}` is not in an earlier stage (move it to one, or add it to `needs`)",
                            job.name
                        ));
                    }
                    out.push(name);
                }
            }
            if !missing.is_empty() {
                return Err(format!(
                    "dependencies: [{}] for `{}` cannot be found (they are not jobs of this pipeline)",
                    missing.join(", "),
                    job.name
                ));
            }
            job.dependencies = Some(out);
        }
        jobs.push(job);
    }
    if let Some(cycle) = needs_cycle(&jobs) {
        return Err(format!("`needs` loop: {}", cycle.join(" → ")));
    }
    jobs.sort_by_key(|j| stage_of(&j.stage));
    Ok(jobs)
}

fn needs_cycle(jobs: &[model::Job]) -> Option<Vec<String>> {
    fn visit(
        name: &str,
        jobs: &[model::Job],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == name) {
            let mut cycle = path[at..].to_vec();
            cycle.push(name.to_owned());
            return Some(cycle);
        }
        if done.iter().any(|d| d == name) {
            return None;
        }
        path.push(name.to_owned());
        let job = jobs.iter().find(|j| j.name == name)?;
        for need in job.needs.iter().flatten() {
            if let Some(cycle) = visit(&need.job, jobs, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.push(name.to_owned());
        None
    }
    let mut done = Vec::new();
    jobs.iter()
        .find_map(|j| visit(&j.name, jobs, &mut Vec::new(), &mut done))
}

/// The project directory of a pipeline file.
fn project_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
