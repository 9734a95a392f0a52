//! The job's variables as the plan reads and expands them.

use podrunner_gitlab::JobPayload;

/// The job's variables as the job sees them (expanded in order, the last of a name winning),
/// as gitlab-runner's `GetAllVariables()` gives them to overwrites and expansion.
pub(super) struct JobVariables(pub(super) podrunner_agent::variables::Variables);

impl JobVariables {
    /// The payload's variables, in order.
    pub(super) fn new(payload: &JobPayload) -> Self {
        let mut variables = podrunner_agent::variables::Variables::new();
        for variable in &payload.job.variables {
            variables.push(podrunner_agent::variables::Variable::from_payload(variable));
        }
        JobVariables(variables)
    }

    /// The value of `key`, as the job sees it.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    /// `text` expanded as gitlab-runner expands it ([`expand_like_runner`]).
    pub(super) fn expand(&self, text: &str) -> String {
        expand_like_runner(&self.0, text)
    }

    /// The variables whose name starts with `prefix`, as (name, value).
    pub(super) fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .effective()
            .into_iter()
            .filter(move |v| v.key.starts_with(prefix))
            .map(|v| (v.key.as_str(), v.value.as_str()))
    }
}

/// `text` expanded with `variables` as gitlab-runner's `Variables.ExpandValue` does
/// (`os.Expand` with `Variables.Get`, `common/spec/variables.go`): `$$` gives `$`, the other
/// shell specials (`$*`, `$1`...) give nothing.
pub(super) fn expand_like_runner(
    variables: &podrunner_agent::variables::Variables,
    text: &str,
) -> String {
    podrunner_config::expand_with(text, |name| match name {
        "$" => Some("$".to_owned()),
        "*" | "#" | "@" | "!" | "?" => None,
        _ if name.len() == 1 && name.as_bytes()[0].is_ascii_digit() => None,
        _ => variables.get(name).map(str::to_owned),
    })
}
