//! Object names as gitlab-runner builds them (`generateObjectName` in `cache/cache.go` of
//! `gitlabhq/gitlab-runner`): `[<Path>/][runner/<short token>/]project/<id>/<key>`, the
//! `runner/<short token>` part dropped when `Shared`, the whole joined as Go's `path.Join`
//! (empty parts and duplicate slashes gone), and refused when the key climbs out of
//! `project/<id>/`. The same names mean a team switching from gitlab-runner keeps its hits.

/// The object name of `key` (already sanitized by the plan).
pub fn object_name(
    path: &str,
    shared: bool,
    short_token: &str,
    project_id: i64,
    key: &str,
) -> Result<String, String> {
    let namespace = if shared {
        String::new()
    } else {
        format!("runner/{short_token}")
    };
    let base = join(&[path, &namespace, "project", &project_id.to_string()]);
    let full = join(&[&base, key]);
    if key.is_empty() || !full.starts_with(&format!("{base}/")) {
        return Err(
            "computed cache path outside of project bucket. Please remove `../` from cache key"
                .to_owned(),
        );
    }
    Ok(full)
}

/// Go's `path.Join` of relative parts: cleaned, without a leading slash unless the first
/// non-empty part has one.
fn join(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let rooted = joined.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let body = out.join("/");
    if rooted { format!("/{body}") } else { body }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With and without `Shared` and `Path`, and keys that climb.
    #[test]
    fn names_are_gitlab_runners() {
        assert_eq!(
            object_name("", false, "longtoke", 10, "key").unwrap(),
            "runner/longtoke/project/10/key"
        );
        assert_eq!(
            object_name("whatever", false, "longtoke", 10, "key").unwrap(),
            "whatever/runner/longtoke/project/10/key"
        );
        assert_eq!(
            object_name("", true, "longtoke", 10, "key").unwrap(),
            "project/10/key"
        );
        assert_eq!(
            object_name("some/path/", true, "longtoke", 10, "key-protected").unwrap(),
            "some/path/project/10/key-protected"
        );
        assert!(object_name("", false, "longtoke", 10, "../10").is_err());
        assert!(object_name("", false, "longtoke", 10, "..").is_err());
        assert_eq!(
            object_name("", false, "longtoke", 10, "a/../b").unwrap(),
            "runner/longtoke/project/10/b"
        );
    }
}
