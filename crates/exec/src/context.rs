//! The push that `podrunner exec` pretends to be: what GitLab would know about a push of the
//! local repository's HEAD (branch or tag, commit, default branch, the files at that commit,
//! the files the push changed), read with `git`, and the predefined variables GitLab gives a
//! push pipeline (`doc/ci/variables/predefined_variables.md`; the same set gitlab-ci-local
//! gives, `tests/test-cases/predefined-variables`).
//!
//! `changes`: GitLab compares a push with the commit before it (`before_sha`), and a new
//! branch with nothing (every `changes` is true). Locally there is no push, so the choice is:
//! on the default branch, HEAD against its parent; on another branch, HEAD against its merge
//! base with the default branch (what pushing the branch as new would bring, which is what
//! `changes:compare_to: <default branch>` means in GitLab); with `--working-tree`, the
//! uncommitted changes are added.

use std::path::{Path, PathBuf};
use std::process::Command;

use podrunner_gitlab::payload::JobVariable;

/// The local push.
#[derive(Debug, Clone)]
pub struct PushContext {
    /// The project directory (where `.gitlab-ci.yml` is).
    pub project_dir: PathBuf,
    /// The branch pushed, when HEAD is on one.
    pub branch: Option<String>,
    /// The tag pushed, when HEAD is detached at a tag.
    pub tag: Option<String>,
    /// The commit.
    pub sha: String,
    /// The commit before it (`CI_COMMIT_BEFORE_SHA`), zeros when none.
    pub before_sha: String,
    /// The full commit message.
    pub message: String,
    /// The commit time (ISO 8601).
    pub timestamp: String,
    /// `Name <email>`.
    pub author: String,
    /// The default branch.
    pub default_branch: String,
    /// `namespace/name` of the project.
    pub project_path: String,
    /// The GitLab host of `origin`, when it has one.
    pub server_host: Option<String>,
    /// Files of the commit (or of the working tree), relative to the project directory.
    pub files: Vec<String>,
    /// Files the push changed, relative to the project directory.
    pub changed: Vec<String>,
    /// Whether the project is a git repository at all.
    pub is_git: bool,
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    })
}

fn lines(text: Option<String>) -> Vec<String> {
    text.map(|t| {
        t.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// GitLab's slug (`Gitlab::Utils.slugify`): lowercase, anything but `a-z0-9` becomes `-`, at
/// most 63 characters, no `-` at either end.
pub fn slugify(text: &str) -> String {
    crate::slug::job_name(text)
}

impl PushContext {
    /// Reads the push from the repository holding `project_dir`. Outside a git repository,
    /// a push of branch `main` (the default branch) with every file of the directory.
    pub fn from_repo(project_dir: &Path, working_tree: bool) -> PushContext {
        let name = project_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "project".to_owned());
        let sha = git(project_dir, &["rev-parse", "HEAD"]);
        let Some(sha) = sha else {
            let mut files = Vec::new();
            walk(project_dir, Path::new(""), &mut files);
            files.sort();
            return PushContext {
                project_dir: project_dir.to_owned(),
                branch: Some("main".to_owned()),
                tag: None,
                sha: "0".repeat(40),
                before_sha: "0".repeat(40),
                message: String::new(),
                timestamp: String::new(),
                author: String::new(),
                default_branch: "main".to_owned(),
                project_path: format!("local/{name}"),
                server_host: None,
                changed: files.clone(),
                files,
                is_git: false,
            };
        };
        let branch = git(project_dir, &["symbolic-ref", "--short", "-q", "HEAD"]);
        let tag = if branch.is_none() {
            lines(git(project_dir, &["tag", "--points-at", "HEAD"]))
                .into_iter()
                .next()
        } else {
            None
        };
        let default_branch = git(
            project_dir,
            &["symbolic-ref", "--short", "-q", "refs/remotes/origin/HEAD"],
        )
        .and_then(|r| r.strip_prefix("origin/").map(str::to_owned))
        .or_else(|| {
            ["main", "master"].into_iter().find_map(|b| {
                git(
                    project_dir,
                    &["rev-parse", "--verify", "-q", &format!("refs/heads/{b}")],
                )
                .map(|_| b.to_owned())
            })
        })
        .or_else(|| branch.clone())
        .unwrap_or_else(|| "main".to_owned());
        let before_sha = git(project_dir, &["rev-parse", "-q", "--verify", "HEAD~1"])
            .unwrap_or_else(|| "0".repeat(40));
        let remote = git(project_dir, &["remote", "get-url", "origin"]);
        let (server_host, project_path) = match remote.as_deref().and_then(parse_remote) {
            Some((host, path)) => (Some(host), path),
            None => (None, format!("local/{name}")),
        };
        let files = if working_tree {
            lines(git(
                project_dir,
                &["ls-files", "--cached", "--others", "--exclude-standard"],
            ))
        } else {
            lines(git(project_dir, &["ls-tree", "-r", "--name-only", "HEAD"]))
        };
        let on_default = branch.as_deref() == Some(default_branch.as_str());
        let base = if on_default || branch.is_none() {
            git(project_dir, &["rev-parse", "-q", "--verify", "HEAD~1"])
        } else {
            git(project_dir, &["merge-base", "HEAD", &default_branch])
        };
        let mut changed = match &base {
            Some(base) if base != &sha => lines(git(
                project_dir,
                &["diff", "--name-only", "--relative", base, "HEAD"],
            )),
            Some(_) => Vec::new(),
            // The first commit: every file is new.
            None => lines(git(project_dir, &["ls-tree", "-r", "--name-only", "HEAD"])),
        };
        if working_tree {
            changed.extend(lines(git(
                project_dir,
                &["diff", "--name-only", "--relative", "HEAD"],
            )));
            changed.extend(lines(git(
                project_dir,
                &["ls-files", "--others", "--exclude-standard"],
            )));
            changed.sort();
            changed.dedup();
        }
        PushContext {
            project_dir: project_dir.to_owned(),
            branch,
            tag,
            before_sha,
            message: git(project_dir, &["log", "-1", "--format=%B"]).unwrap_or_default(),
            timestamp: git(project_dir, &["log", "-1", "--format=%cI"]).unwrap_or_default(),
            author: git(project_dir, &["log", "-1", "--format=%an <%ae>"]).unwrap_or_default(),
            sha,
            default_branch,
            project_path,
            server_host,
            files,
            changed,
            is_git: true,
        }
    }

    /// The ref pushed: the branch, else the tag, else the commit.
    pub fn ref_name(&self) -> String {
        self.branch
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| self.sha.clone())
    }

    /// Files changed between `base` and HEAD (`changes:compare_to`).
    pub fn changed_since(&self, base: &str) -> Result<Vec<String>, String> {
        if !self.is_git {
            return Ok(self.changed.clone());
        }
        git(
            &self.project_dir,
            &["rev-parse", "-q", "--verify", &format!("{base}^{{commit}}")],
        )
        .ok_or_else(|| {
            format!("`compare_to: {base}` names no branch, tag or commit of this repository")
        })?;
        Ok(lines(git(
            &self.project_dir,
            &["diff", "--name-only", "--relative", base, "HEAD"],
        )))
    }

    /// The blob ids of `paths` at HEAD (`cache:key:files`: GitLab digests the blobs' ids).
    pub fn blob_ids(&self, paths: &[String]) -> Vec<String> {
        if !self.is_git {
            return Vec::new();
        }
        paths
            .iter()
            .filter_map(|p| {
                git(
                    &self.project_dir,
                    &["rev-parse", "-q", "--verify", &format!("HEAD:./{p}")],
                )
            })
            .collect()
    }

    /// The SHA of the last commit that changed any of `paths` (GitLab's `cache:key:files`,
    /// `lib/gitlab/ci/pipeline/seed/build/cache.rb`: `last_commit_for_path` of each file).
    pub fn last_commit_of(&self, paths: &[String]) -> Option<String> {
        if !self.is_git {
            return None;
        }
        let mut args = vec!["log", "-1", "--format=%H", "HEAD", "--"];
        args.extend(paths.iter().map(String::as_str));
        git(&self.project_dir, &args).filter(|s| !s.is_empty())
    }

    /// The predefined variables of this push pipeline (pipeline level; job-level ones are
    /// added per job).
    pub fn predefined(&self) -> Vec<JobVariable> {
        let (namespace, name) = self
            .project_path
            .rsplit_once('/')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unwrap_or_else(|| (String::new(), self.project_path.clone()));
        let ref_name = self.ref_name();
        let title = self.message.lines().next().unwrap_or_default().to_owned();
        let description = self
            .message
            .split_once('\n')
            .map(|(_, rest)| rest.trim().to_owned())
            .unwrap_or_default();
        let mut out: Vec<(&str, String)> = vec![
            ("CI", "true".into()),
            ("GITLAB_CI", "false".into()),
            ("CI_PIPELINE_SOURCE", "push".into()),
            ("CI_PIPELINE_ID", "1".into()),
            ("CI_PIPELINE_IID", "1".into()),
            ("CI_COMMIT_SHA", self.sha.clone()),
            ("CI_COMMIT_SHORT_SHA", self.sha.chars().take(8).collect()),
            ("CI_COMMIT_BEFORE_SHA", self.before_sha.clone()),
            ("CI_COMMIT_REF_NAME", ref_name.clone()),
            ("CI_COMMIT_REF_SLUG", slugify(&ref_name)),
            ("CI_COMMIT_REF_PROTECTED", "false".into()),
            ("CI_COMMIT_MESSAGE", self.message.clone()),
            ("CI_COMMIT_TITLE", title),
            ("CI_COMMIT_DESCRIPTION", description),
            ("CI_COMMIT_TIMESTAMP", self.timestamp.clone()),
            ("CI_COMMIT_AUTHOR", self.author.clone()),
            ("CI_DEFAULT_BRANCH", self.default_branch.clone()),
            (
                "CI_PROJECT_DIR",
                self.project_dir
                    .canonicalize()
                    .unwrap_or_else(|_| self.project_dir.clone())
                    .display()
                    .to_string(),
            ),
            ("CI_PROJECT_NAME", name.clone()),
            ("CI_PROJECT_TITLE", name),
            ("CI_PROJECT_NAMESPACE", namespace.clone()),
            (
                "CI_PROJECT_ROOT_NAMESPACE",
                namespace.split('/').next().unwrap_or_default().to_owned(),
            ),
            ("CI_PROJECT_PATH", self.project_path.clone()),
            ("CI_PROJECT_PATH_SLUG", slugify(&self.project_path)),
        ];
        if let Some(branch) = &self.branch {
            out.push(("CI_COMMIT_BRANCH", branch.clone()));
        }
        if let Some(tag) = &self.tag {
            out.push(("CI_COMMIT_TAG", tag.clone()));
        }
        if let Some(host) = &self.server_host {
            out.push(("CI_SERVER_HOST", host.clone()));
            out.push(("CI_SERVER_URL", format!("https://{host}")));
            out.push((
                "CI_PROJECT_URL",
                format!("https://{host}/{}", self.project_path),
            ));
        }
        out.into_iter()
            .map(|(key, value)| JobVariable {
                key: key.to_owned(),
                value,
                public: true,
                file: false,
                masked: false,
                raw: true,
            })
            .collect()
    }
}

/// `(host, namespace/name)` of a remote URL (`git@host:a/b.git`, `https://host/a/b.git`).
fn parse_remote(url: &str) -> Option<(String, String)> {
    let rest = if let Some((_, rest)) = url.split_once("://") {
        rest.split_once('@').map_or(rest, |(_, r)| r)
    } else {
        url.split_once('@').map_or(url, |(_, r)| r)
    };
    let (host, path) = rest.split_once(['/', ':'])?;
    let host = host.split(':').next()?.to_owned();
    let path = path.trim_start_matches(|c: char| c.is_ascii_digit() || c == '/');
    let path = path
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .to_owned();
    (!host.is_empty() && path.contains('/')).then_some((host, path))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_remotes() {
        assert_eq!(slugify("Feature/Login_2"), "feature-login-2");
        assert_eq!(slugify("-x-"), "x");
        assert_eq!(slugify(&"a".repeat(70)).len(), 63);
        assert_eq!(
            parse_remote("git@gitlab.com:GCL/predefined-variables.git"),
            Some(("gitlab.com".into(), "GCL/predefined-variables".into()))
        );
        assert_eq!(
            parse_remote("https://user@gitlab.example.com/a/b/c.git"),
            Some(("gitlab.example.com".into(), "a/b/c".into()))
        );
        assert_eq!(
            parse_remote("ssh://git@gitlab.example.com:2222/a/b.git"),
            Some(("gitlab.example.com".into(), "a/b".into()))
        );
    }
}
