//! GitLab's slugs of job and environment names (`gitlabhq/gitlabhq`).

use sha2::{Digest, Sha256};

/// `CI_JOB_NAME_SLUG` (`Gitlab::Utils.slugify`, as the variables docs describe it): lower
/// case, every byte but `a-z0-9` becomes `-`, at most 63 bytes, no leading or trailing `-`.
pub(crate) fn job_name(name: &str) -> String {
    let replaced: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    replaced.trim_matches('-').to_owned()
}

/// `CI_ENVIRONMENT_SLUG` (`lib/gitlab/slug/environment.rb`): `a-z0-9` and `-` only, starts
/// with a letter (else `env-` is put before it), no repeated `-`, at most 24 bytes; when the
/// slug differs from the name or is too long it keeps 17 bytes and gets a 6-byte suffix from
/// the SHA-256 of the name (its last 6 base-36 digits).
pub(crate) fn environment(name: &str) -> String {
    generate(name, &base36_tail(&Sha256::digest(name.as_bytes())))
}

fn generate(name: &str, suffix: &str) -> String {
    let mut slug: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !slug.starts_with(|c: char| c.is_ascii_lowercase()) {
        slug = format!("env-{slug}");
    }
    let mut squeezed = String::with_capacity(slug.len());
    for c in slug.chars() {
        if !(c == '-' && squeezed.ends_with('-')) {
            squeezed.push(c);
        }
    }
    if squeezed.len() > 24 || squeezed != name {
        let mut short: String = squeezed.chars().take(17).collect();
        if !short.ends_with('-') {
            short.push('-');
        }
        short.push_str(suffix);
        short
    } else {
        squeezed.trim_end_matches('-').to_owned()
    }
}

/// The last 6 base-36 digits of `digest` read as a big-endian number.
pub(crate) fn base36_tail(digest: &[u8]) -> String {
    const MODULUS: u64 = 36u64.pow(6);
    let mut rest: u64 = 0;
    for byte in digest {
        rest = (rest * 256 + u64::from(*byte)) % MODULUS;
    }
    let mut digits = Vec::new();
    for _ in 0..6 {
        let d = (rest % 36) as u8;
        digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        rest /= 36;
    }
    digits.reverse();
    // Ruby's `to_s(36)` has no leading zeros, but `last(6)` of a 256-bit number has 6 digits.
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_slug_as_gitlab() {
        assert_eq!(
            job_name("Build: [Linux, AMD64] 1/2"),
            "build---linux--amd64--1-2"
        );
        assert_eq!(job_name("-x-"), "x");
        assert_eq!(job_name(&"a".repeat(70)).len(), 63);
    }

    /// The table of `spec/lib/gitlab/slug/environment_spec.rb`, whose digest is stubbed to
    /// 64 `a`s (suffix `q517sa`).
    #[test]
    fn environment_slugs_follow_gitlabs_table() {
        assert_eq!(base36_tail(&[0xaa; 32]), "q517sa");
        for (name, slug) in [
            ("staging-12345678901234567", "staging-123456789-q517sa"),
            ("9-staging-123456789012345", "env-9-staging-123-q517sa"),
            ("staging-1234567890123456", "staging-1234567890123456"),
            ("staging-1234567890123456-", "staging-123456789-q517sa"),
            ("production", "production"),
            ("PRODUCTION", "production-q517sa"),
            ("review/1-foo", "review-1-foo-q517sa"),
            ("1-foo", "env-1-foo-q517sa"),
            ("foo-", "foo"),
            ("foo--bar", "foo-bar-q517sa"),
            ("*-foo", "env-foo-q517sa"),
            ("staging-12345678-", "staging-12345678"),
            ("staging-12345678-01234567", "staging-12345678-q517sa"),
            ("", "env-q517sa"),
        ] {
            assert_eq!(generate(name, "q517sa"), slug, "{name:?}");
        }
    }

    #[test]
    fn environment_slugs_as_gitlab() {
        assert_eq!(environment("dev-domain"), "dev-domain");
        assert_eq!(environment("production"), "production");
        let changed = environment("Stage Domain");
        assert!(changed.starts_with("stage-domain-"), "{changed}");
        assert_eq!(changed.len(), "stage-domain-".len() + 6);
        let long = environment("stage-domain-foobar-long-string");
        assert!(long.starts_with("stage-domain-foob-"), "{long}");
        assert_eq!(long.len(), 24);
        assert!(environment("1abc").starts_with("env-1abc-"));
    }
}
