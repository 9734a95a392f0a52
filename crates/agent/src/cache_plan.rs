//! The caches of one job as the manager decided them: the final keys (expanded, sanitized,
//! with fallbacks) and where each archive is read from and written to. The agent holds no
//! cloud credential: a remote store is reached only through URLs the manager signed.

use std::path::PathBuf;

use podrunner_gitlab::{JobPayload, Secret};
use serde::{Deserialize, Serialize};

use crate::variables::Variables;

/// One entry of the payload's `cache`, resolved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheEntry {
    /// Index of the payload's `cache` entry this resolves (paths, untracked, `when`).
    pub index: usize,
    /// The key after expansion and sanitation, as the job log shows it.
    pub key: String,
    /// Archives to try in order: the key, its `fallback_keys`, then `CACHE_FALLBACK_KEY`.
    /// Empty when the policy does not pull.
    pub restore: Vec<CacheObject>,
    /// Where to save the archive; `None` when the policy does not push.
    pub save: Option<CacheObject>,
    /// Lines for the job log about this cache (e.g. a sanitized key), each a warning.
    pub warnings: Vec<String>,
    /// The policy (after expansion) pulls: `restore` is what to try.
    pub pull: bool,
    /// The policy (after expansion) pushes: `save` is where to.
    pub push: bool,
    /// Why the entry has no usable key (`empty cache key`, a key that could not be
    /// sanitized): shown as gitlab-runner's "Skipping cache extraction due to ...".
    pub skipped: Option<String>,
}

/// One archive of one key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheObject {
    /// The key this archive belongs to, for the log ("Checking cache for <key>...").
    pub key: String,
    /// Where the archive is.
    pub location: CacheLocation,
}

/// Where an archive is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheLocation {
    /// A file below the agent's `cache_dir` (no `[runners.cache]`): a relative path.
    Local(PathBuf),
    /// An object of a remote store, reached by a URL the manager signed: GET to restore,
    /// PUT to save, with these headers (e.g. `x-ms-blob-type: BlockBlob`).
    Remote {
        /// The signed URL: a bearer credential for one object, so never logged.
        url: Secret,
        /// Headers the signature covers or the store needs.
        headers: Vec<(String, String)>,
    },
}

impl Default for CacheLocation {
    fn default() -> Self {
        CacheLocation::Local(PathBuf::new())
    }
}

/// Cache settings of the runner that the agent applies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheSettings {
    /// `MaxUploadedArchiveSize` in bytes; 0 is no limit.
    pub max_uploaded_archive_size: u64,
}

/// The job's variables as the agent will have them (predefined, the job's, the runner's
/// `environment`): what keys, fallback keys and policies expand with.
pub fn job_variables(spec: &crate::spec::AgentSpec, payload: &JobPayload) -> Variables {
    let (project_dir, temp_dir) = crate::job::context::job_dirs(spec, payload);
    crate::job::context::build_variables(spec, payload, &project_dir, &temp_dir)
}

/// The policies of gitlab-runner's `common.CachePolicy` (`common/build.go`, `CheckPolicy`):
/// empty is `pull-push`.
fn policy(expanded: &str) -> Result<(bool, bool), String> {
    match expanded {
        "" | "pull-push" => Ok((true, true)),
        "pull" => Ok((true, false)),
        "push" => Ok((false, true)),
        other => Err(format!("unknown cache policy {other:?}")),
    }
}

/// A key as gitlab-runner's `newCacheConfig` (`shells/abstract.go`) makes it: expanded by the
/// caller, then sanitized; `Err` is the reason the key is skipped.
fn key(raw: &str, warnings: &mut Vec<String>) -> Result<String, String> {
    match crate::cache_key::sanitize(raw) {
        Ok(sanitized) => {
            warnings.extend(sanitized.warning);
            Ok(sanitized.key)
        }
        Err(why) => {
            warnings.push(why);
            Err("empty cache key".to_owned())
        }
    }
}

/// The relative path below `cache_dir` of a key's archive in the local layout,
/// `<project full path>/<key>/cache.zip` (gitlab-runner: `build.CacheDir` is
/// `<cache_dir>/<project unique dir>`, the file `path.Join(CacheDir, key, "cache.zip")`).
pub fn local_file(payload: &JobPayload, key: &str) -> PathBuf {
    let project = payload.job.job_info.project_full_path.trim_matches('/');
    PathBuf::from(if project.is_empty() {
        "project"
    } else {
        project
    })
    .join(key)
    .join("cache.zip")
}

/// Resolves the payload's `cache` entries (those with `paths` or `untracked`) into entries
/// whose archives are local files below `cache_dir`; a remote store replaces the locations
/// (`podrunner-cache`). GitLab already resolved `key:files`, `key:prefix`, the default key
/// `default`, the cache index and the `-protected`/`-non_protected` suffix (Rails:
/// `lib/gitlab/ci/pipeline/seed/build/cache.rb` and `Ci::Build#cache`); what is left is
/// gitlab-runner's part (`shells/abstract.go`): an empty key is `<job name>/<ref>`, keys and
/// `fallback_keys` are expanded with the job's variables, `CACHE_FALLBACK_KEY` is taken as
/// it is, refused when it ends in `-protected` (ignoring trailing dots and spaces), and
/// every key is sanitized; the policy is expanded too.
pub fn plan(payload: &JobPayload, variables: &Variables) -> Vec<CacheEntry> {
    let job = &payload.job;
    let mut entries = Vec::new();
    for (index, cache) in job.cache.iter().enumerate() {
        if cache.paths.is_empty() && !cache.untracked {
            continue;
        }
        let mut entry = CacheEntry {
            index,
            ..CacheEntry::default()
        };
        let raw = if cache.key.is_empty() {
            format!("{}/{}", job.job_info.name, job.git_info.git_ref)
        } else {
            variables.expand(&cache.key)
        };
        let main = match key(&raw, &mut entry.warnings) {
            Ok(main) => main,
            Err(why) => {
                entry.skipped = Some(why);
                entries.push(entry);
                continue;
            }
        };
        entry.key = main.clone();
        match policy(variables.expand(&cache.policy).trim()) {
            Ok((pull, push)) => (entry.pull, entry.push) = (pull, push),
            Err(why) => entry.warnings.push(format!("{why} for {main}")),
        }
        let object = |key: &str| CacheObject {
            key: key.to_owned(),
            location: CacheLocation::Local(local_file(payload, key)),
        };
        if entry.push {
            entry.save = Some(object(&main));
        }
        if entry.pull {
            entry.restore.push(object(&main));
            let mut fallbacks: Vec<String> = cache
                .fallback_keys
                .iter()
                .map(|k| variables.expand(k))
                .filter(|k| !k.is_empty())
                .collect();
            if let Some(global) = variables
                .get("CACHE_FALLBACK_KEY")
                .filter(|k| !k.is_empty())
            {
                if global.trim_end_matches(['.', ' ']).ends_with("-protected") {
                    entry.warnings.push(format!(
                        "CACHE_FALLBACK_KEY {global:?} not allowed to end in \"-protected\""
                    ));
                } else {
                    fallbacks.push(global.to_owned());
                }
            }
            for fallback in fallbacks {
                match key(&fallback, &mut entry.warnings) {
                    Ok(k) => entry.restore.push(object(&k)),
                    Err(why) => entry
                        .warnings
                        .push(format!("Skipping cache extraction due to {why}")),
                }
            }
        }
        entries.push(entry);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variables::Variable;

    fn payload(cache: serde_json::Value) -> JobPayload {
        JobPayload::from_value(serde_json::json!({
            "id": 1, "token": "t",
            "job_info": {"name": "build", "project_id": 7, "project_full_path": "g/p"},
            "git_info": {"ref": "main"},
            "cache": cache,
        }))
        .unwrap()
    }

    fn keys(objects: &[CacheObject]) -> Vec<&str> {
        objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn keys_fallbacks_and_policies_are_resolved_as_gitlab_runner_does() {
        let mut variables = Variables::new();
        variables.push(Variable::runner("BRANCH", "dev"));
        variables.push(Variable::runner("CACHE_FALLBACK_KEY", "global"));
        variables.push(Variable::runner("POLICY", "pull"));
        let entries = plan(
            &payload(serde_json::json!([
                {"key": "", "paths": ["a"]},
                {"key": "deps-$BRANCH", "paths": ["b"], "fallback_keys": ["deps-main", ""], "policy": "$POLICY"},
                {"key": "nothing", "paths": []},
                {"key": "..", "paths": ["c"]},
            ])),
            &variables,
        );
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].key, "build/main");
        assert!(entries[0].pull && entries[0].push);
        assert_eq!(keys(&entries[0].restore), ["build/main", "global"]);
        assert!(matches!(
            &entries[0].save.as_ref().unwrap().location,
            CacheLocation::Local(p) if p == &PathBuf::from("g/p/build/main/cache.zip")
        ));
        assert_eq!(entries[1].index, 1);
        assert_eq!(
            keys(&entries[1].restore),
            ["deps-dev", "deps-main", "global"]
        );
        assert!(entries[1].save.is_none() && !entries[1].push);
        assert_eq!(entries[2].skipped.as_deref(), Some("empty cache key"));
    }

    #[test]
    fn a_protected_global_fallback_is_refused() {
        let mut variables = Variables::new();
        variables.push(Variable::runner("CACHE_FALLBACK_KEY", "main-protected. "));
        let entries = plan(
            &payload(serde_json::json!([{"key": "k", "paths": ["a"]}])),
            &variables,
        );
        assert_eq!(keys(&entries[0].restore), ["k"]);
        assert!(entries[0].warnings[0].contains("not allowed to end in"));
    }
}
