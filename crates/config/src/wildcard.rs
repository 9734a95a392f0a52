//! Shell-style wildcard patterns: `*` is any run of characters, `?` exactly one. Used by
//! Fargate profile selectors and by `allowed_images`/`allowed_services`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A pattern with `*` and `?` wildcards; every other character matches itself.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Wildcard {
    pattern: String,
}

impl Wildcard {
    /// A pattern from its text.
    pub fn new(pattern: impl Into<String>) -> Self {
        Wildcard {
            pattern: pattern.into(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern has any wildcard character.
    pub fn has_wildcards(&self) -> bool {
        self.pattern.contains(['*', '?'])
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let pattern: Vec<char> = self.pattern.chars().collect();
        let text: Vec<char> = text.chars().collect();
        // Iterative matcher with single-star backtracking: linear in practice, no recursion.
        let (mut p, mut t) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
                p += 1;
                t += 1;
            } else if p < pattern.len() && pattern[p] == '*' {
                star = Some((p, t));
                p += 1;
            } else if let Some((star_p, star_t)) = star {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            } else {
                return false;
            }
        }
        pattern[p..].iter().all(|&c| c == '*')
    }
}

impl fmt::Display for Wildcard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl fmt::Debug for Wildcard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wildcard({:?})", self.pattern)
    }
}

impl Serialize for Wildcard {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.pattern)
    }
}

impl<'de> Deserialize<'de> for Wildcard {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Wildcard::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_star_and_question_mark() {
        let cases = [
            ("gitlab-runner", "gitlab-runner", true),
            ("gitlab-runner", "gitlab-runners", false),
            ("gitlab-*", "gitlab-runner", true),
            ("gitlab-*", "gitlab-", true),
            ("gitlab-*", "gitlab", false),
            ("*", "", true),
            ("*", "anything", true),
            ("ci-?", "ci-1", true),
            ("ci-?", "ci-", false),
            ("ci-?", "ci-12", false),
            ("*-runner", "gitlab-runner", true),
            ("*run*er*", "gitlab-runner-x", true),
            ("a*b*c", "abxbc", true),
            ("a*b*c", "abxbd", false),
            ("t?ue", "true", true),
            ("", "", true),
            ("", "x", false),
            ("*.dev", "a.b.dev", true),
            ("é?", "éa", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                Wildcard::new(pattern).matches(text),
                expected,
                "{pattern:?} vs {text:?}"
            );
        }
    }
}
