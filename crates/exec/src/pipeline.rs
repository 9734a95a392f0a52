//! A local `.gitlab-ci.yml` to the pipeline GitLab would create for a push of the local
//! repository: [`build`] (and [`preview`], the configuration after `include`, `extends` and
//! `!reference`).

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
