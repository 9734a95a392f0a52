//! `get_sources` with the git command line: GIT_STRATEGY clone/fetch/none/empty, GIT_DEPTH,
//! refspecs, GIT_CHECKOUT, GIT_CLEAN_FLAGS and submodules. The job token goes to git as an
//! `Authorization` header in `GIT_CONFIG_*` environment variables: it is never in the
//! command line nor in `.git/config`.

use std::path::Path;

use podrunner_gitlab::payload::GitInfo;

/// What `get_sources` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Fresh clone: the directory is removed first.
    Clone,
    /// Reuse the directory and fetch.
    Fetch,
    /// Only make sure the directory exists.
    None,
    /// An empty directory.
    Empty,
}

/// Everything `get_sources` needs, decided from the payload and variables.
#[derive(Debug, Clone)]
pub struct SourcesPlan {
    /// Strategy.
    pub strategy: Strategy,
    /// Clone depth (0 = full history).
    pub depth: i64,
    /// Remote URL without credentials.
    pub remote: String,
    /// `Authorization` header value for the remote's host.
    pub authorization: String,
    /// Refspecs to fetch.
    pub refspecs: Vec<String>,
    /// Commit to check out.
    pub sha: String,
    /// Ref name, for messages.
    pub git_ref: String,
    /// Check out the commit.
    pub checkout: bool,
    /// `git clean` flags; `None` skips cleaning.
    pub clean_flags: Option<Vec<String>>,
    /// `none`, `normal` or `recursive`.
    pub submodules: String,
    /// Run `git lfs pull` after checkout (git-lfs is installed and `GIT_LFS_SKIP_SMUDGE` is not set).
    pub lfs: bool,
}

/// Why the plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// `git_info.repo_url` is not a URL.
    #[error("the job's repository URL cannot be used: {0}")]
    BadUrl(String),
    /// An unknown `GIT_STRATEGY`.
    #[error("GIT_STRATEGY {0:?} is not one of clone, fetch, none, empty")]
    BadStrategy(String),
}

/// Splits `scheme://user:password@host/path` into the URL without credentials and the
/// password; `clone_url` replaces scheme and host when set.
pub fn split_credentials(
    repo_url: &str,
    clone_url: Option<&str>,
) -> Result<(String, Option<String>), SourcesError> {
    let (scheme, rest) = repo_url
        .split_once("://")
        .ok_or_else(|| SourcesError::BadUrl("no scheme".into()))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, authority),
    };
    let password = userinfo
        .and_then(|u| u.split_once(':'))
        .map(|(_, p)| percent_decode(p));
    let base = match clone_url
        .map(|c| c.trim_end_matches('/'))
        .filter(|c| !c.is_empty())
    {
        Some(clone) => clone.to_owned(),
        None => format!("{scheme}://{host}"),
    };
    Ok((format!("{base}/{path}"), password))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decides what `get_sources` does.
pub fn plan(
    git: &GitInfo,
    job_token: &str,
    allow_git_fetch: bool,
    variable: impl Fn(&str) -> Option<String>,
    clone_url: Option<&str>,
) -> Result<SourcesPlan, SourcesError> {
    let strategy = match variable("GIT_STRATEGY")
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => {
            if allow_git_fetch {
                Strategy::Fetch
            } else {
                Strategy::Clone
            }
        }
        Some("clone") => Strategy::Clone,
        Some("fetch") => Strategy::Fetch,
        Some("none") => Strategy::None,
        Some("empty") => Strategy::Empty,
        Some(other) => return Err(SourcesError::BadStrategy(other.to_owned())),
    };
    let depth = variable("GIT_DEPTH")
        .and_then(|d| d.trim().parse::<i64>().ok())
        .unwrap_or(git.depth)
        .max(0);
    // Only fetching needs the remote; `none` and `empty` work without a repository URL.
    let (remote, authorization) = if matches!(strategy, Strategy::Clone | Strategy::Fetch) {
        let (remote, password) = split_credentials(git.repo_url.expose(), clone_url)?;
        let token = password.unwrap_or_else(|| job_token.to_owned());
        (
            remote,
            format!(
                "Basic {}",
                base64(format!("gitlab-ci-token:{token}").as_bytes())
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let mut refspecs = git.refspecs.clone();
    if refspecs.is_empty() {
        refspecs.push(if git.ref_type == "tag" {
            format!("+refs/tags/{0}:refs/tags/{0}", git.git_ref)
        } else {
            format!("+refs/heads/{0}:refs/remotes/origin/{0}", git.git_ref)
        });
    }
    let clean_flags = match variable("GIT_CLEAN_FLAGS").map(|f| f.trim().to_owned()) {
        Some(flags) if flags == "none" => None,
        Some(flags) if !flags.is_empty() => {
            Some(flags.split_whitespace().map(str::to_owned).collect())
        }
        _ => Some(vec!["-ffdx".to_owned()]),
    };
    Ok(SourcesPlan {
        strategy,
        depth,
        remote,
        authorization,
        refspecs,
        sha: git.sha.clone(),
        git_ref: git.git_ref.clone(),
        checkout: variable("GIT_CHECKOUT")
            .is_none_or(|v| !matches!(v.trim(), "false" | "0" | "no")),
        clean_flags,
        lfs: variable("GIT_LFS_SKIP_SMUDGE").is_none_or(|v| v.trim() != "1")
            && std::process::Command::new("git")
                .args(["lfs", "version"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        submodules: variable("GIT_SUBMODULE_STRATEGY")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".to_owned()),
    })
}

/// The environment that gives git the credentials and keeps it from prompting.
pub fn git_environment(plan: &SourcesPlan, safe_directory: bool) -> Vec<(String, String)> {
    let mut config = vec![(
        format!("http.{}.extraHeader", remote_origin(&plan.remote)),
        format!("Authorization: {}", plan.authorization),
    )];
    if safe_directory {
        config.push(("safe.directory".to_owned(), "*".to_owned()));
    }
    let mut env = vec![
        ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
        ("GCM_INTERACTIVE".to_owned(), "Never".to_owned()),
        ("GIT_CONFIG_COUNT".to_owned(), config.len().to_string()),
    ];
    for (i, (key, value)) in config.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), key));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), value));
    }
    env
}

/// `scheme://host[:port]/` of a URL: where the credentials apply.
fn remote_origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}/", rest.split('/').next().unwrap_or(rest)),
        None => url.to_owned(),
    }
}

/// The git commands of a plan for `project_dir`, each as arguments of `git`, with a message
/// to print before it.
pub fn commands(plan: &SourcesPlan, project_dir: &Path) -> Vec<(Option<String>, Vec<String>)> {
    let dir = project_dir.display().to_string();
    let fresh = !project_dir.join(".git").exists();
    let mut out: Vec<(Option<String>, Vec<String>)> = Vec::new();
    let init_message = if fresh {
        "Created fresh repository."
    } else {
        "Reinitialized existing Git repository."
    };
    out.push((
        Some(init_message.to_owned()),
        vec!["init".into(), "--quiet".into(), dir.clone()],
    ));
    let set_remote = if fresh { "add" } else { "set-url" };
    out.push((
        None,
        vec![
            "-C".into(),
            dir.clone(),
            "remote".into(),
            set_remote.into(),
            "origin".into(),
            plan.remote.clone(),
        ],
    ));
    let mut fetch = vec![
        "-C".into(),
        dir.clone(),
        "fetch".into(),
        "origin".into(),
        "--no-recurse-submodules".into(),
    ];
    fetch.extend(plan.refspecs.iter().cloned());
    if plan.depth > 0 {
        fetch.push("--depth".into());
        fetch.push(plan.depth.to_string());
    } else if project_dir.join(".git/shallow").exists() {
        fetch.push("--unshallow".into());
    }
    fetch.push("--prune".into());
    fetch.push("--quiet".into());
    out.push((None, fetch));
    if plan.checkout {
        let short = plan.sha.get(..8).unwrap_or(&plan.sha);
        out.push((
            Some(format!(
                "Checking out {short} as detached HEAD (ref is {})...",
                plan.git_ref
            )),
            vec![
                "-C".into(),
                dir.clone(),
                "-c".into(),
                "submodule.recurse=false".into(),
                "checkout".into(),
                "-f".into(),
                "-q".into(),
                plan.sha.clone(),
            ],
        ));
        if let Some(flags) = &plan.clean_flags {
            let mut clean = vec!["-C".into(), dir.clone(), "clean".into()];
            clean.extend(flags.iter().cloned());
            out.push((None, clean));
        }
        match plan.submodules.as_str() {
            "normal" | "recursive" => {
                let recursive = plan.submodules == "recursive";
                let mut sync = vec!["-C".into(), dir.clone(), "submodule".into(), "sync".into()];
                let mut update = vec![
                    "-C".into(),
                    dir.clone(),
                    "submodule".into(),
                    "update".into(),
                    "--init".into(),
                ];
                if recursive {
                    sync.push("--recursive".into());
                    update.push("--recursive".into());
                }
                out.push((Some("Updating/initializing submodules...".to_owned()), sync));
                out.push((None, update));
            }
            _ => out.push((Some("Skipping Git submodules setup".to_owned()), Vec::new())),
        }
        if plan.lfs {
            out.push((
                Some("Fetching Git LFS objects...".to_owned()),
                vec!["-C".into(), dir.clone(), "lfs".into(), "pull".into()],
            ));
        }
    } else {
        out.push((Some("Skipping Git checkout".to_owned()), Vec::new()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        let (url, password) = split_credentials(
            "https://gitlab-ci-token:glcbt-abc%21@gitlab.example.com/group/project.git",
            None,
        )
        .unwrap();
        assert_eq!(url, "https://gitlab.example.com/group/project.git");
        assert_eq!(password.as_deref(), Some("glcbt-abc!"));
        let (_, odd) = split_credentials("https://u:%é%zz%4@h/p.git", None).unwrap();
        assert_eq!(
            odd.as_deref(),
            Some("%é%zz%4"),
            "malformed escapes stay as written"
        );
        let (url, _) = split_credentials(
            "https://gitlab-ci-token:x@gitlab.example.com/g/p.git",
            Some("https://git.internal:8443/"),
        )
        .unwrap();
        assert_eq!(url, "https://git.internal:8443/g/p.git");
        assert!(split_credentials("not a url", None).is_err());
        assert_eq!(
            base64(b"gitlab-ci-token:tok"),
            "Z2l0bGFiLWNpLXRva2VuOnRvaw=="
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
        assert_eq!(
            remote_origin("http://127.0.0.1:8080/g/p.git"),
            "http://127.0.0.1:8080/"
        );
    }

    #[test]
    fn plan_follows_variables() {
        let git = GitInfo {
            repo_url: podrunner_gitlab::Secret::new("http://gitlab-ci-token:t@h/g/p.git"),
            git_ref: "main".into(),
            sha: "0123456789abcdef".into(),
            depth: 20,
            ..GitInfo::default()
        };
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let p = plan(&git, "t", false, vars(&[]), None).unwrap();
        assert_eq!(
            (p.strategy.clone(), p.depth, p.refspecs.clone()),
            (
                Strategy::Clone,
                20,
                vec!["+refs/heads/main:refs/remotes/origin/main".to_owned()]
            )
        );
        assert!(p.checkout && p.clean_flags == Some(vec!["-ffdx".into()]));
        let p = plan(
            &git,
            "t",
            true,
            vars(&[
                ("GIT_DEPTH", "1"),
                ("GIT_CHECKOUT", "false"),
                ("GIT_CLEAN_FLAGS", "none"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            (
                p.strategy.clone(),
                p.depth,
                p.checkout,
                p.clean_flags.clone()
            ),
            (Strategy::Fetch, 1, false, None)
        );
        assert!(matches!(
            plan(&git, "t", true, vars(&[("GIT_STRATEGY", "svn")]), None),
            Err(SourcesError::BadStrategy(_))
        ));
        let no_repo = GitInfo::default();
        assert_eq!(
            plan(
                &no_repo,
                "t",
                false,
                vars(&[("GIT_STRATEGY", "none")]),
                None
            )
            .unwrap()
            .strategy,
            Strategy::None
        );
        assert!(
            plan(&no_repo, "t", false, vars(&[]), None).is_err(),
            "clone needs a URL"
        );
        let dir = tempfile::tempdir().unwrap();
        let commands = commands(&p, dir.path());
        assert!(
            commands.iter().all(|(_, args)| !args
                .iter()
                .any(|a| a.contains("gitlab-ci-token") || a.contains(":t@"))),
            "no credentials on the command line"
        );
    }
}
