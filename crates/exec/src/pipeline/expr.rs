//! GitLab's CI/CD expression language for `rules:if` and `only/except:variables`, with the
//! lexemes and operators of `lib/gitlab/ci/pipeline/expression/lexeme/` (variables `$NAME`,
//! strings in `"` or `'`, `/pattern/flags`, `null`, `==`, `!=`, `=~`, `!~`, `&&`, `||`,
//! parentheses) and their precedence (`lexeme/and.rb` binds tighter than `lexeme/or.rb`).
//! A bare variable is true when set and not empty (`statement.rb`, `truthful?`); a pattern
//! is unanchored, as GitLab's RE2 `UntrustedRegexp`, and a variable holding `/re/` may be
//! the right side of `=~`.

use regex::Regex;

/// A parsed expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// `$NAME`.
    Var(String),
    /// A quoted string.
    Str(String),
    /// `/pattern/flags`, as written.
    Pattern(String, String),
    /// `null`.
    Null,
    /// `a == b` / `a != b` (negated).
    Equals(Box<Expr>, Box<Expr>, bool),
    /// `a =~ b` / `a !~ b` (negated).
    Matches(Box<Expr>, Box<Expr>, bool),
    /// `a && b`.
    And(Box<Expr>, Box<Expr>),
    /// `a || b`.
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Var(String),
    Str(String),
    Pattern(String, String),
    Null,
    Op(&'static str),
    Open,
    Close,
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            '$' => {
                let start = i + 1;
                let mut end = start;
                while end < chars.len() && (chars[end].is_alphanumeric() || chars[end] == '_') {
                    end += 1;
                }
                if end == start {
                    return Err(format!(
                        "`$` at position {i} is not followed by a variable name"
                    ));
                }
                tokens.push(Token::Var(chars[start..end].iter().collect()));
                i = end;
            }
            '"' | '\'' => {
                let end = (i + 1..chars.len())
                    .find(|&j| chars[j] == c)
                    .ok_or_else(|| format!("the string at position {i} is not closed"))?;
                tokens.push(Token::Str(chars[i + 1..end].iter().collect()));
                i = end + 1;
            }
            '/' => {
                let mut j = i + 1;
                let mut pattern = String::new();
                loop {
                    match chars.get(j) {
                        None => return Err(format!("the pattern at position {i} is not closed")),
                        Some('\\') if chars.get(j + 1) == Some(&'/') => {
                            pattern.push('/');
                            j += 2;
                        }
                        Some('/') => break,
                        Some(&other) => {
                            pattern.push(other);
                            j += 1;
                        }
                    }
                }
                j += 1;
                let mut flags = String::new();
                while let Some(&f) = chars.get(j) {
                    if !f.is_ascii_alphabetic() {
                        break;
                    }
                    flags.push(f);
                    j += 1;
                }
                tokens.push(Token::Pattern(pattern, flags));
                i = j;
            }
            '=' | '!' | '&' | '|' => {
                let op = match (c, next) {
                    ('=', Some('=')) => "==",
                    ('!', Some('=')) => "!=",
                    ('=', Some('~')) => "=~",
                    ('!', Some('~')) => "!~",
                    ('&', Some('&')) => "&&",
                    ('|', Some('|')) => "||",
                    _ => return Err(format!("unknown operator at position {i}")),
                };
                tokens.push(Token::Op(op));
                i += 2;
            }
            'n' if chars[i..].iter().take(4).collect::<String>() == "null" => {
                tokens.push(Token::Null);
                i += 4;
            }
            other => return Err(format!("unexpected `{other}` at position {i}")),
        }
    }
    Ok(tokens)
}

/// Parses an expression.
pub fn parse(text: &str) -> Result<Expr, String> {
    let tokens = lex(text).map_err(|e| format!("invalid expression {text:?}: {e}"))?;
    let mut parser = Parser { tokens, at: 0 };
    let expr = parser
        .or()
        .map_err(|e| format!("invalid expression {text:?}: {e}"))?;
    if parser.at != parser.tokens.len() {
        return Err(format!(
            "invalid expression {text:?}: unexpected {:?} after a complete expression",
            parser.tokens[parser.at]
        ));
    }
    Ok(expr)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Op(o)) if *o == op)
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek_op("||") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.compare()?;
        while self.peek_op("&&") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.compare()?));
        }
        Ok(left)
    }
    fn compare(&mut self) -> Result<Expr, String> {
        let left = self.primary()?;
        let op = match self.tokens.get(self.at) {
            Some(Token::Op(op @ ("==" | "!=" | "=~" | "!~"))) => *op,
            _ => return Ok(left),
        };
        self.at += 1;
        let right = self.primary()?;
        Ok(match op {
            "==" => Expr::Equals(Box::new(left), Box::new(right), false),
            "!=" => Expr::Equals(Box::new(left), Box::new(right), true),
            "=~" => Expr::Matches(Box::new(left), Box::new(right), false),
            _ => Expr::Matches(Box::new(left), Box::new(right), true),
        })
    }
    fn primary(&mut self) -> Result<Expr, String> {
        let token = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or("the expression ends too early")?;
        self.at += 1;
        Ok(match token {
            Token::Var(name) => Expr::Var(name),
            Token::Str(s) => Expr::Str(s),
            Token::Pattern(p, f) => Expr::Pattern(p, f),
            Token::Null => Expr::Null,
            Token::Open => {
                let inner = self.or()?;
                if self.tokens.get(self.at) != Some(&Token::Close) {
                    return Err("a `(` is not closed".to_owned());
                }
                self.at += 1;
                inner
            }
            Token::Close => return Err("unexpected `)`".to_owned()),
            Token::Op(op) => return Err(format!("`{op}` needs a value on its left")),
        })
    }
}

#[derive(Debug)]
enum Val {
    Null,
    Str(String),
    Bool(bool),
    Pattern(String, String),
}

impl Val {
    fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Str(s) => !s.is_empty(),
            Val::Bool(b) => *b,
            Val::Pattern(..) => true,
        }
    }
}

fn regex(pattern: &str, flags: &str) -> Result<Regex, String> {
    let mut prefix = String::new();
    for flag in flags.chars() {
        if !"imsx".contains(flag) {
            return Err(format!(
                "unknown regular expression flag `{flag}` in /{pattern}/{flags}"
            ));
        }
        prefix.push(flag);
    }
    let full = if prefix.is_empty() {
        pattern.to_owned()
    } else {
        format!("(?{prefix}){pattern}")
    };
    Regex::new(&full)
        .map_err(|e| format!("/{pattern}/{flags} is not a valid regular expression: {e}"))
}

impl Expr {
    /// Evaluates against `lookup` (the job's variables): true or false.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<bool, String> {
        Ok(self.value(lookup)?.truthy())
    }

    fn value(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Val, String> {
        Ok(match self {
            Expr::Var(name) => lookup(name).map_or(Val::Null, Val::Str),
            Expr::Str(s) => Val::Str(s.clone()),
            Expr::Pattern(p, f) => Val::Pattern(p.clone(), f.clone()),
            Expr::Null => Val::Null,
            Expr::Equals(a, b, negate) => {
                let equal = match (a.value(lookup)?, b.value(lookup)?) {
                    (Val::Null, Val::Null) => true,
                    (Val::Str(x), Val::Str(y)) => x == y,
                    (Val::Pattern(p, f), Val::Pattern(q, g)) => p == q && f == g,
                    _ => false,
                };
                Val::Bool(equal != *negate)
            }
            Expr::Matches(a, b, negate) => {
                let text = match a.value(lookup)? {
                    Val::Str(s) => Some(s),
                    _ => None,
                };
                let (pattern, flags) = match b.value(lookup)? {
                    Val::Pattern(p, f) => (p, f),
                    Val::Str(s) if s.starts_with('/') && s.len() > 1 => {
                        let end = s.rfind('/').unwrap_or(0);
                        if end == 0 {
                            return Err(format!("the right side of =~ ({s:?}) is not a /pattern/"));
                        }
                        (s[1..end].replace("\\/", "/"), s[end + 1..].to_owned())
                    }
                    other => {
                        return Err(format!(
                            "the right side of =~ must be a /pattern/, not {other:?}"
                        ));
                    }
                };
                let matched = match text {
                    Some(text) => regex(&pattern, &flags)?.is_match(&text),
                    None => false,
                };
                Val::Bool(matched != *negate)
            }
            Expr::And(a, b) => Val::Bool(a.value(lookup)?.truthy() && b.value(lookup)?.truthy()),
            Expr::Or(a, b) => Val::Bool(a.value(lookup)?.truthy() || b.value(lookup)?.truthy()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> bool {
        let lookup = |name: &str| match name {
            "BRANCH" => Some("feature/Login-2".to_owned()),
            "EMPTY" => Some(String::new()),
            "MAIN" => Some("main".to_owned()),
            "PATTERN" => Some("/^feature\\//".to_owned()),
            _ => None,
        };
        parse(text).unwrap().eval(&lookup).unwrap()
    }

    #[test]
    fn presence_equality_and_null() {
        assert!(check("$BRANCH"));
        assert!(!check("$EMPTY"), "an empty variable is false");
        assert!(!check("$UNSET"));
        assert!(check("$MAIN == \"main\""));
        assert!(check("'main' == $MAIN"));
        assert!(!check("$MAIN != 'main'"));
        assert!(check("$UNSET == null"));
        assert!(!check("$EMPTY == null"), "empty is not null");
        assert!(check("$MAIN != null"));
    }

    #[test]
    fn patterns_with_flags_and_variables() {
        assert!(check("$BRANCH =~ /^feature\\//"));
        assert!(check("$BRANCH =~ /login/i"));
        assert!(!check("$BRANCH =~ /login/"));
        assert!(check("$BRANCH !~ /^release/"));
        assert!(
            !check("$UNSET =~ /.*/"),
            "an unset variable matches nothing"
        );
        assert!(check("$BRANCH =~ $PATTERN"));
        assert!(check("$BRANCH =~ /2$/"), "unanchored unless anchored");
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_group() {
        assert!(check("$MAIN || $UNSET && $UNSET"));
        assert!(!check("($MAIN || $UNSET) && $UNSET"));
        assert!(check(
            "$UNSET == null && ($MAIN == 'x' || $BRANCH =~ /feat/)"
        ));
    }

    #[test]
    fn bad_expressions_are_named() {
        assert!(parse("$A ==").unwrap_err().contains("ends too early"));
        assert!(parse("($A").unwrap_err().contains("not closed"));
        assert!(parse("$A = 'x'").unwrap_err().contains("unknown operator"));
        assert!(parse("'x").unwrap_err().contains("not closed"));
    }
}
