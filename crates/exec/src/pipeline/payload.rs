//! Job keywords in the shapes of GitLab's job payload: `environment` (with GitLab's slug and
//! tier), `artifacts` and `cache` (with GitLab's keys).

use podrunner_gitlab::payload::{Artifact, Cache};
use serde_yaml_ng::Value;

use super::keywords::did_you_mean;
use super::value::{scalar, string_list};
use super::vars::Scope;
use crate::context::PushContext;
use crate::model::Environment;

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

/// `CI_ENVIRONMENT_SLUG`: one implementation for the builder and the runner ([`crate::slug`]).
pub fn environment_slug(name: &str) -> String {
    crate::slug::environment(name)
}

pub fn environment(
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
pub fn artifacts(
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
pub fn caches(
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
            crate::slug::base36_tail(&[0xaa; 32]),
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
    fn tiers() {
        assert_eq!(guess_tier("review/app"), "development");
        assert_eq!(guess_tier("qa"), "testing");
        assert_eq!(guess_tier("Stage Domain"), "staging");
        assert_eq!(guess_tier("production"), "production");
        assert_eq!(guess_tier("notprod"), "production");
        assert_eq!(guess_tier("somewhere"), "other");
    }
}
