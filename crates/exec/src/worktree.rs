//! Each job's own tree: a fresh copy of the commit (as GitLab's runner clones it for every
//! job), or with `--working-tree` that commit plus the uncommitted changes of the working
//! tree. Outside a git repository the project directory itself is copied. Links are copied as
//! links, never followed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where every job's tree comes from; decided once per run so all jobs see the same commit.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A git repository.
    Git {
        /// Its top directory.
        top: PathBuf,
        /// The project directory below `top`.
        relative: PathBuf,
        /// The commit (HEAD when the run started); `None` when it has no commit yet.
        sha: Option<String>,
        /// Overlay the working tree's tracked and untracked (not ignored) files.
        working_tree: bool,
    },
    /// Not in a git repository: the directory is copied.
    Directory(PathBuf),
}

fn git(args: &[&str], dir: &Path) -> Result<String, String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Source {
    /// The source of `project`; `Err` names why the commit cannot be used.
    pub(crate) fn of(project: &Path, working_tree: bool) -> Result<Source, String> {
        let Ok(top) = git(&["rev-parse", "--show-toplevel"], project) else {
            return Ok(Source::Directory(project.to_owned()));
        };
        let top = PathBuf::from(top.trim());
        let project = project
            .canonicalize()
            .unwrap_or_else(|_| project.to_owned());
        let relative = project
            .strip_prefix(&top)
            .unwrap_or(Path::new(""))
            .to_owned();
        let sha = git(&["rev-parse", "--verify", "--quiet", "HEAD"], &top)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        if sha.is_none() && !working_tree {
            return Err(format!(
                "the repository at {} has no commit yet: commit, or pass --working-tree to run \
                 the files as they are",
                top.display()
            ));
        }
        Ok(Source::Git {
            top,
            relative,
            sha,
            working_tree,
        })
    }

    /// Makes a fresh tree in `dest` (which must not exist); returns the project directory
    /// inside it.
    pub(crate) fn materialize(&self, dest: &Path) -> Result<PathBuf, String> {
        match self {
            Source::Directory(dir) => {
                copy_tree(dir, dest)?;
                Ok(dest.to_owned())
            }
            Source::Git {
                top,
                relative,
                sha,
                working_tree,
            } => {
                let parent = dest.parent().unwrap_or(Path::new("/"));
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
                match sha {
                    Some(sha) => {
                        let (top_text, dest_text) =
                            (top.display().to_string(), dest.display().to_string());
                        git(
                            &[
                                "clone",
                                "--quiet",
                                "--shared",
                                "--no-checkout",
                                &top_text,
                                &dest_text,
                            ],
                            parent,
                        )?;
                        git(&["checkout", "--quiet", "--detach", sha], dest)?;
                    }
                    None => {
                        std::fs::create_dir_all(dest)
                            .map_err(|e| format!("{}: {e}", dest.display()))?;
                        git(&["init", "--quiet"], dest)?;
                    }
                }
                if *working_tree {
                    overlay(top, dest)?;
                }
                Ok(dest.join(relative))
            }
        }
    }
}

/// Puts the working tree's changes over the checkout: tracked and untracked files that are
/// not ignored are copied, tracked files deleted in the working tree are removed.
fn overlay(top: &Path, dest: &Path) -> Result<(), String> {
    let listed = git(
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        top,
    )?;
    for name in listed.split('\0').filter(|n| !n.is_empty()) {
        let from = top.join(name);
        let to = dest.join(name);
        match std::fs::symlink_metadata(&from) {
            Ok(_) => {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("{}: {e}", parent.display()))?;
                }
                if std::fs::symlink_metadata(&to).is_ok_and(|m| !m.is_dir()) {
                    std::fs::remove_file(&to).map_err(|e| format!("{}: {e}", to.display()))?;
                }
                copy_entry(&from, &to)?;
            }
            Err(_) => {
                let _ = std::fs::remove_file(&to);
            }
        }
    }
    Ok(())
}

/// Copies one file or link (not a directory).
fn copy_entry(from: &Path, to: &Path) -> Result<(), String> {
    let metadata =
        std::fs::symlink_metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
    if metadata.file_type().is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| format!("{}: {e}", from.display()))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| format!("{}: {e}", to.display()))
    } else if metadata.is_file() {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| format!("cannot copy {}: {e}", from.display()))
    } else {
        // A submodule's directory or a special file: not part of the tree.
        Ok(())
    }
}

/// Copies a directory tree, links as links.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            copy_entry(&entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn a_job_gets_the_commit_and_only_with_working_tree_the_changes() {
        let repo = tempfile::tempdir().unwrap();
        run(repo.path(), &["init", "--quiet"]);
        std::fs::create_dir(repo.path().join("sub")).unwrap();
        std::fs::write(repo.path().join("sub/committed"), "v1").unwrap();
        std::fs::write(repo.path().join("sub/deleted"), "x").unwrap();
        std::fs::write(repo.path().join(".gitignore"), "ignored\n").unwrap();
        run(repo.path(), &["add", "."]);
        run(repo.path(), &["commit", "--quiet", "-m", "one"]);
        std::fs::write(repo.path().join("sub/committed"), "v2").unwrap();
        std::fs::write(repo.path().join("sub/new"), "n").unwrap();
        std::fs::write(repo.path().join("sub/ignored"), "i").unwrap();
        std::fs::remove_file(repo.path().join("sub/deleted")).unwrap();

        let scratch = tempfile::tempdir().unwrap();
        let clean = Source::of(&repo.path().join("sub"), false).unwrap();
        let dir = clean.materialize(&scratch.path().join("a/p")).unwrap();
        assert_eq!(dir, scratch.path().join("a/p/sub"));
        assert_eq!(
            std::fs::read_to_string(dir.join("committed")).unwrap(),
            "v1"
        );
        assert!(dir.join("deleted").is_file() && !dir.join("new").exists());

        let changed = Source::of(&repo.path().join("sub"), true).unwrap();
        let dir = changed.materialize(&scratch.path().join("b/p")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("committed")).unwrap(),
            "v2"
        );
        assert!(dir.join("new").is_file());
        assert!(!dir.join("deleted").exists(), "deleted in the working tree");
        assert!(!dir.join("ignored").exists(), "ignored files stay out");
        // Each tree is fresh: a file a job writes is not in the next tree.
        std::fs::write(dir.join("left-by-job"), "x").unwrap();
        let next = changed.materialize(&scratch.path().join("c/p")).unwrap();
        assert!(!next.join("left-by-job").exists());
    }

    #[test]
    fn outside_git_the_directory_is_copied_links_as_links() {
        let project = tempfile::tempdir().unwrap();
        std::fs::create_dir(project.path().join("d")).unwrap();
        std::fs::write(project.path().join("d/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", project.path().join("link")).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let source = Source::of(project.path(), false).unwrap();
        assert!(matches!(source, Source::Directory(_)));
        let dir = source.materialize(&scratch.path().join("p")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("d/f")).unwrap(), "x");
        assert_eq!(
            std::fs::read_link(dir.join("link")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
    }
}
