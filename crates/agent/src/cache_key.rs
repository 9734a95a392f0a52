//! Cache keys as gitlab-runner sanitizes them before they become paths
//! (`sanitizeCacheKey` and `newCacheConfig` in `shells/abstract.go` of
//! `gitlabhq/gitlab-runner`): `%2e`/`%2f` decoded, `\` read as `/`, the key cleaned as a path
//! rooted at `/` so `..` cannot climb out, trailing whitespace and empty last elements dropped.

/// A key that can be used, with the warning to print when it differs from what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// The sanitized key: a relative path without `.`, `..` or empty components.
    pub key: String,
    /// `cache key "x" sanitized to "y"`, when it changed.
    pub warning: Option<String>,
}

/// Sanitizes `raw` (already expanded); `Err` says why no key is left.
pub fn sanitize(raw: &str) -> Result<CacheKey, String> {
    let decoded = raw
        .replace("%2e", ".")
        .replace("%2E", ".")
        .replace("%2f", "/")
        .replace("%2F", "/")
        .replace('\\', "/");
    let mut parts = clean(&decoded);
    while let Some(last) = parts.last_mut() {
        let trimmed = last.trim_end();
        if trimmed.is_empty() {
            parts.pop();
        } else {
            *last = trimmed.to_owned();
            break;
        }
    }
    // Trimming can leave `..` as the last element: clean once more.
    let key = clean(&parts.join("/")).join("/");
    if key.is_empty() {
        return Err(format!("cache key {raw:?} could not be sanitized"));
    }
    let warning = (key != raw).then(|| format!("cache key {raw:?} sanitized to {key:?}"));
    Ok(CacheKey { key, warning })
}

/// The components of `path` cleaned as Go's `path.Clean("/" + path)` does, without the root.
fn clean(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other.to_owned()),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sanitized_as_gitlab_runner_does() {
        let ok = |raw: &str| sanitize(raw).unwrap();
        assert_eq!(ok("deps-main").warning, None);
        assert_eq!(ok("job/main").key, "job/main");
        let climbed = ok("../../../planted");
        assert_eq!(climbed.key, "planted");
        assert_eq!(
            climbed.warning.as_deref(),
            Some(r#"cache key "../../../planted" sanitized to "planted""#)
        );
        assert_eq!(ok("%2e%2e%2F%2E%2e/x").key, "x");
        assert_eq!(ok(r"..\..\win\key").key, "win/key");
        assert_eq!(ok("/abs/key ").key, "abs/key");
        assert_eq!(ok("a/b/  ").key, "a/b");
        for bad in ["..", "/", "  ", "../..", "x/.. "] {
            assert!(sanitize(bad).is_err(), "{bad:?}");
        }
    }
}
