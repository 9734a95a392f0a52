//! The process environment behind a trait, so tests feed a map, and `$VAR` expansion with
//! the semantics of Go's `os.Expand` (what gitlab-runner uses for `url` and `token`).

use std::collections::HashMap;

/// Where environment variables come from.
pub trait Environment {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Expands `$NAME` and `${NAME}` like Go's `os.Expand`: unset names become empty, a `$`
/// not followed by a name stays, `${}` and an unclosed `${` are dropped.
pub fn expand(input: &str, env: &dyn Environment) -> String {
    expand_with(input, |name| env.var(name))
}

/// [`expand`] with names looked up by `lookup` (job variables, for instance).
pub fn expand_with(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut copied_to = 0;
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            out.push_str(&input[copied_to..j]);
            let (name, width) = shell_name(&input[j + 1..]);
            match name {
                None if width > 0 => {}
                None => out.push('$'),
                Some(name) => out.push_str(&lookup(name).unwrap_or_default()),
            }
            j += width;
            copied_to = j + 1;
        }
        j += 1;
    }
    out.push_str(&input[copied_to.min(input.len())..]);
    out
}

fn is_special(b: u8) -> bool {
    matches!(b, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-') || b.is_ascii_digit()
}

/// The variable name at the start of `s` (after a `$`) and how many bytes it spans.
fn shell_name(s: &str) -> (Option<&str>, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_special(b[1]) && b[2] == b'}' {
            return (Some(&s[1..2]), 3);
        }
        for i in 1..b.len() {
            if b[i] == b'}' {
                return if i == 1 {
                    (None, 2)
                } else {
                    (Some(&s[1..i]), i + 1)
                };
            }
        }
        return (None, 1);
    }
    if is_special(b[0]) {
        return (Some(&s[0..1]), 1);
    }
    let len = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    if len == 0 {
        (None, 0)
    } else {
        (Some(&s[..len]), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_go_os_expand() {
        let env: HashMap<String, String> = [
            ("HOST", "gitlab.example.com"),
            ("TOKEN", "glrt-abc"),
            ("A_1", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cases = [
            ("https://$HOST/", "https://gitlab.example.com/"),
            ("https://${HOST}/ci", "https://gitlab.example.com/ci"),
            ("$TOKEN", "glrt-abc"),
            ("$UNSET-x", "-x"),
            ("a$A_1.b", "ax.b"),
            ("cost $", "cost $"),
            ("100$ more", "100$ more"),
            ("${}", ""),
            ("${HOST", "HOST"),
            ("$$", ""),
            ("plain", "plain"),
            ("é$HOST", "égitlab.example.com"),
        ];
        for (input, expected) in cases {
            assert_eq!(expand(input, &env), expected, "{input:?}");
        }
    }
}
