//! The API server's rules for the names and keys a job can put into its pod, so that a pod
//! the API server would refuse is refused here first, before anything is created.
//!
//! Each check gives apimachinery's own explanation: `IsDNS1123Label`/`IsDNS1123Subdomain`
//! (`staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go`), `IsLabelKey` (the
//! "qualified name" of label, annotation and node-selector keys) and `IsLabelValue`
//! (`staging/src/k8s.io/apimachinery/pkg/api/validate/content/kube.go`, messages from its
//! `errors.go`), and the total annotation size of `ValidateAnnotations`
//! (`staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go`).

/// `TotalAnnotationSizeLimitB` of apimachinery's `objectmeta.go`: keys and values together.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const KEY_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName' or 'my.name' or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue' or 'my_value' or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn max_len(n: usize) -> String {
    format!("must be no more than {n} bytes")
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn matches_key_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `IsDNS1123Label`: container names, namespaces, volume names.
pub fn dns1123_label(value: &str) -> Result<(), String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len(63));
    }
    if !matches_label(value) {
        errs.push(if dns1123_subdomain(value).is_ok() {
            "must not contain dots".to_owned()
        } else {
            LABEL_MSG.to_owned()
        });
    }
    joined(errs)
}

/// `IsDNS1123Subdomain`: object names, service accounts, host aliases.
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push(max_len(253));
    }
    if !value.split('.').all(matches_label) {
        errs.push(SUBDOMAIN_MSG.to_owned());
    }
    joined(errs)
}

/// `IsLabelKey` (`IsQualifiedName`): label, annotation and node-selector keys.
pub fn qualified_name(value: &str) -> Result<(), String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else if let Err(e) = dns1123_subdomain(prefix) {
                errs.push(format!("prefix part {e}"));
            }
            *name
        }
        _ => {
            return Err(format!(
                "a valid label key {KEY_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len(63)));
    }
    if !matches_key_name(name) {
        errs.push(format!("name part {KEY_NAME_MSG}"));
    }
    joined(errs)
}

/// `IsLabelValue`: label and node-selector values.
pub fn label_value(value: &str) -> Result<(), String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len(63));
    }
    if !value.is_empty() && !matches_key_name(value) {
        errs.push(VALUE_MSG.to_owned());
    }
    joined(errs)
}

/// The environment variable names the API server accepts: any printable ASCII character but
/// `=` (`IsRelaxedEnvVarName` of apimachinery's `validation.go`, which `ValidateEnv` in
/// `pkg/apis/core/validation/validation.go` applies since the `RelaxedEnvironmentVariableValidation`
/// gate is on by default, Kubernetes 1.32).
pub fn env_var_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("environment variable name must be non-empty".to_owned());
    }
    if value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
    {
        Ok(())
    } else {
        Err(
            "a valid environment variable name must consist only of printable ASCII characters other than '='"
                .to_owned(),
        )
    }
}

fn joined(errs: Vec<String>) -> Result<(), String> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join(", "))
    }
}

/// The host names gitlab-runner derives from a service image (`SplitNameAndVersion` in
/// gitlab-runner's `helpers/container/services/services.go`): the image name without its tag,
/// digest and registry port, with `/` replaced by `__`, and (when different) by `-`. An image
/// that is not a valid reference (docker's `reference.ReferenceRegexp`) gives none.
pub fn derived_aliases(image: &str) -> Vec<String> {
    let Some(name) = reference_name(image) else {
        return Vec::new();
    };
    // `referenceRegexpNoPort`: the registry's `:port`, if any, is dropped.
    let service = match name.split_once('/') {
        Some((domain, rest)) => {
            let host = domain.split_once(':').map_or(domain, |(host, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    host
                } else {
                    domain
                }
            });
            format!("{host}/{rest}")
        }
        None => name.to_owned(),
    };
    let underscores = service.replace('/', "__");
    let dashes = service.replace('/', "-");
    if underscores == dashes {
        vec![underscores]
    } else {
        vec![underscores, dashes]
    }
}

/// The name part of a docker image reference (`name[:tag][@digest]`), when the whole text is
/// one (`github.com/distribution/reference`'s grammar).
fn reference_name(image: &str) -> Option<&str> {
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':')?;
        let algorithm_ok = !algorithm.is_empty()
            && algorithm.as_bytes()[0].is_ascii_alphabetic()
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'.'));
        if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
    }
    // A tag is after the last ':' that is not followed by a '/'.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        let b = tag.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !ok {
            return None;
        }
    }
    valid_name(name).then_some(name)
}

/// `[domain '/'] path-component ('/' path-component)*`.
fn valid_name(name: &str) -> bool {
    let components: Vec<&str> = name.split('/').collect();
    let path_ok = |c: &&str| path_component(c);
    if components.iter().all(path_ok) {
        return true;
    }
    // The first component may be a domain instead (host, optional port).
    components.len() > 1 && domain(components[0]) && components[1..].iter().all(path_ok)
}

/// `[a-z0-9]+ (([_.]|__|-+) [a-z0-9]+)*`.
fn path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "_" || sep == "." || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `host [':' port]`, host being dot-separated `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`
/// components or a bracketed IPv6 address.
fn domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (host, Some(port)),
        _ => (d, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_apimachinery() {
        assert!(dns1123_label("svc-0").is_ok());
        assert_eq!(
            dns1123_label("db.local").unwrap_err(),
            "must not contain dots"
        );
        assert!(
            dns1123_label("bitnami__redis")
                .unwrap_err()
                .starts_with("a lowercase RFC 1123 label")
        );
        assert!(
            dns1123_label(&"a".repeat(64))
                .unwrap_err()
                .starts_with("must be no more than 63 bytes")
        );
        assert!(dns1123_subdomain("db.local").is_ok() && dns1123_subdomain("a..b").is_err());
        assert!(qualified_name("example.com/MyName").is_ok() && qualified_name("team").is_ok());
        assert!(qualified_name("a/b/c").is_err() && qualified_name("/x").is_err());
        assert!(
            qualified_name("Example.com/x")
                .unwrap_err()
                .starts_with("prefix part ")
        );
        assert!(
            qualified_name("team name")
                .unwrap_err()
                .starts_with("name part ")
        );
        assert!(label_value("").is_ok() && label_value("a.b_c-1").is_ok());
        assert!(label_value("cc 42!").is_err() && label_value(&"x".repeat(64)).is_err());
        assert!(env_var_name("my.var-1").is_ok() && env_var_name("A=B").is_err());
        assert!(env_var_name("").is_err() && env_var_name("é").is_err());
    }

    #[test]
    fn aliases_follow_split_name_and_version() {
        assert_eq!(
            derived_aliases("bitnami/redis:7.2"),
            ["bitnami__redis", "bitnami-redis"]
        );
        assert_eq!(derived_aliases("postgres:16"), ["postgres"]);
        assert_eq!(
            derived_aliases(
                "registry.example.com:5000/group/img@sha256:0123456789abcdef0123456789abcdef"
            ),
            [
                "registry.example.com__group__img",
                "registry.example.com-group-img"
            ]
        );
        assert_eq!(
            derived_aliases("localhost:5000/img"),
            ["localhost__img", "localhost-img"]
        );
        assert!(derived_aliases("Redis").is_empty());
        assert!(derived_aliases("redis:").is_empty());
        assert!(derived_aliases("$UNSET/x").is_empty());
    }
}
