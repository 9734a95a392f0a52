//! The keywords GitLab knows (`lib/gitlab/ci/config/entry/root.rb`, `entry/job.rb`,
//! `entry/default.rb`), which of them exec cannot honour, and did-you-mean for the rest.

/// Top-level keywords that are not jobs.
pub const GLOBAL: &[&str] = &[
    "default",
    "include",
    "stages",
    "variables",
    "workflow",
    "spec",
    "image",
    "services",
    "before_script",
    "after_script",
    "cache",
    "types",
    "pages",
];

/// Keywords of a job (`entry/job.rb` `ALLOWED_KEYS` and the processable ones).
pub const JOB: &[&str] = &[
    "after_script",
    "allow_failure",
    "artifacts",
    "before_script",
    "cache",
    "coverage",
    "dast_configuration",
    "dependencies",
    "environment",
    "except",
    "extends",
    "hooks",
    "id_tokens",
    "identity",
    "image",
    "inherit",
    "interruptible",
    "manual_confirmation",
    "needs",
    "only",
    "pages",
    "parallel",
    "publish",
    "release",
    "resource_group",
    "retry",
    "rules",
    "run",
    "script",
    "secrets",
    "services",
    "stage",
    "start_in",
    "tags",
    "timeout",
    "trigger",
    "variables",
    "when",
];

/// Keywords of `default`.
pub const DEFAULT: &[&str] = &[
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
];

/// Job keywords that only mean something to GitLab or to other executors: exec goes on
/// without them and says so once per keyword, with what to do.
pub const NOT_HERE: &[(&str, &str)] = &[
    ("tags", "exec runs every job on this machine"),
    ("interruptible", "exec does not auto-cancel pipelines"),
    (
        "resource_group",
        "exec does not serialize jobs across pipelines",
    ),
    ("coverage", "exec does not parse coverage from the log"),
    (
        "id_tokens",
        "no OIDC tokens are issued locally; set the variables with --var",
    ),
    (
        "secrets",
        "external secrets are not fetched locally; set the variables with --var",
    ),
    ("identity", "cloud identity federation needs GitLab"),
    ("release", "releases are created by GitLab"),
    ("pages", "Pages are deployed by GitLab"),
    ("publish", "Pages are deployed by GitLab"),
    (
        "hooks",
        "pre_get_sources_script runs before a clone, which exec does not do",
    ),
    ("dast_configuration", "DAST profiles live in GitLab"),
    (
        "manual_confirmation",
        "a manual job runs here when named, without a prompt",
    ),
];

/// ` (did you mean `x`?)` when `word` is close to one of `known`.
pub fn did_you_mean(word: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_words_are_suggested() {
        assert_eq!(did_you_mean("scirpt", JOB), " (did you mean `script`?)");
        assert_eq!(did_you_mean("depends_on", JOB), "");
        assert_eq!(
            did_you_mean("before_scripts", JOB),
            " (did you mean `before_script`?)"
        );
    }
}
