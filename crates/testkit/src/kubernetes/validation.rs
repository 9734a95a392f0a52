//! The API server's validation of the pods and secrets it is asked to create, for the fields
//! an executor can get wrong, answered with the real `422 Invalid` `Status`.
//!
//! Taken from Kubernetes (`kubernetes/kubernetes`):
//! - names and keys: `staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go`
//!   (`IsDNS1123Label`, `IsDNS1123Subdomain`, `IsRelaxedEnvVarName`) and
//!   `staging/src/k8s.io/apimachinery/pkg/api/validate/content/kube.go` (`IsLabelKey`,
//!   `IsLabelValue`), their messages from `content/errors.go`;
//! - metadata: `staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go`
//!   (`ValidateObjectMeta`, `ValidateAnnotations` with its 256 KiB total) and
//!   `staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation/validation.go`
//!   (`ValidateLabels`);
//! - the pod: `pkg/apis/core/validation/validation.go` (`ValidatePodSpec`: container names
//!   unique across init and regular containers, volume names (`ValidateVolumes`: DNS-1123
//!   labels, unique), `ValidateEnv`, `ValidateResourceRequirements`,
//!   `ValidateHostAliases`, the node selector, `activeDeadlineSeconds` in `1..=2^31-1`);
//! - the error text: `staging/src/k8s.io/apimachinery/pkg/util/validation/field/errors.go`
//!   (`Error.Error`, `ErrorBody`) and `staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go`
//!   (`NewInvalid`: `<Kind> "<name>" is invalid: <errors>`, one error bare, several in `[..]`);
//! - quantities: `staging/src/k8s.io/apimachinery/pkg/api/resource/quantity.go` (`ParseQuantity`;
//!   a malformed one fails decoding, a `400 BadRequest`, before validation).
//!
//! Environment variable names follow the relaxed rule (printable ASCII but `=`), which the
//! `RelaxedEnvironmentVariableValidation` gate enables by default from Kubernetes 1.32.

use axum::http::StatusCode;
use serde_json::{Value, json};

/// `TotalAnnotationSizeLimitB` of `objectmeta.go`.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// What is wrong with a field (`field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// `FieldValueInvalid`.
    Invalid,
    /// `FieldValueDuplicate`.
    Duplicate,
    /// `FieldValueRequired`.
    Required,
    /// `FieldValueTooLong`.
    TooLong,
}

/// One field error, as apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path (`spec.containers[1].name`).
    pub field: String,
    /// The kind of error.
    pub kind: ErrorType,
    /// The bad value, as Go's `%q`/`%d` prints it (`"x"`, `0`).
    pub value: String,
    /// The explanation.
    pub detail: String,
}

impl FieldError {
    fn invalid(field: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: ErrorType::Invalid,
            value: quoted(value),
            detail: detail.into(),
        }
    }

    /// `ErrorBody`: the message without the field.
    pub fn body(&self) -> String {
        match self.kind {
            ErrorType::Invalid => format!("Invalid value: {}: {}", self.value, self.detail),
            ErrorType::Duplicate => format!("Duplicate value: {}", self.value),
            ErrorType::Required if self.detail.is_empty() => "Required value".to_owned(),
            ErrorType::Required => format!("Required value: {}", self.detail),
            ErrorType::TooLong => format!("Too long: {}", self.detail),
        }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::Required => "FieldValueRequired",
            ErrorType::TooLong => "FieldValueTooLong",
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Go's `%q` of a string.
fn quoted(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("\"{value}\""))
}

/// Why an object is refused: the status code and the `Status` body.
pub(super) struct Rejection {
    pub code: StatusCode,
    pub body: Value,
}

/// Validates an object about to be created; `kind` is `Pod` or `Secret` (events are not
/// validated here). The name has been resolved from `generateName` already.
pub(super) fn admit(kind: &str, name: &str, object: &Value) -> Result<(), Rejection> {
    let errors = match kind {
        "Pod" => validate_pod(object),
        "Secret" => validate_metadata(object),
        _ => return Ok(()),
    };
    let errors = match errors {
        Ok(errors) => errors,
        Err(message) => {
            return Err(Rejection {
                code: StatusCode::BAD_REQUEST,
                body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                             "message": message, "reason": "BadRequest", "code": 400}),
            });
        }
    };
    if errors.is_empty() {
        return Ok(());
    }
    Err(Rejection {
        code: StatusCode::UNPROCESSABLE_ENTITY,
        body: invalid_status(kind, name, &errors),
    })
}

/// The `Status` of `apierrors.NewInvalid`.
pub fn invalid_status(kind: &str, name: &str, errors: &[FieldError]) -> Value {
    let aggregate = if errors.len() == 1 {
        errors[0].to_string()
    } else {
        format!(
            "[{}]",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
        .collect();
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{kind} {} is invalid: {aggregate}", quoted(name)),
        "reason": "Invalid",
        "details": {"name": name, "kind": kind.to_lowercase() + "s", "causes": causes},
        "code": 422,
    })
}

/// The metadata checks of `ValidateObjectMeta`: name, labels, annotations. `Err` is a
/// decoding failure (`400`).
pub fn validate_metadata(object: &Value) -> Result<Vec<FieldError>, String> {
    let mut errors = Vec::new();
    let meta = &object["metadata"];
    if let Some(name) = meta["name"].as_str()
        && let Err(e) = dns1123_subdomain(name)
    {
        errors.push(FieldError::invalid("metadata.name", name, e));
    }
    labels(&meta["labels"], "metadata.labels", &mut errors);
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (key, value) in annotations {
            if let Err(e) = label_key(&key.to_lowercase()) {
                errors.push(FieldError::invalid("metadata.annotations", key, e));
            }
            total += key.len() + value.as_str().map_or(0, str::len);
        }
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            errors.push(FieldError {
                field: "metadata.annotations".into(),
                kind: ErrorType::TooLong,
                value: String::new(),
                detail: format!("may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
            });
        }
    }
    Ok(errors)
}

/// `ValidateLabels`: keys are label keys, values label values.
fn labels(map: &Value, field: &str, errors: &mut Vec<FieldError>) {
    let Some(map) = map.as_object() else {
        return;
    };
    for (key, value) in map {
        if let Err(e) = label_key(key) {
            errors.push(FieldError::invalid(field, key, e));
        }
        let value = value.as_str().unwrap_or_default();
        if let Err(e) = label_value(value) {
            errors.push(FieldError::invalid(field, value, e));
        }
    }
}

/// The pod checks: metadata, then the spec fields listed in the module doc.
pub fn validate_pod(pod: &Value) -> Result<Vec<FieldError>, String> {
    let mut errors = validate_metadata(pod)?;
    let spec = &pod["spec"];
    let mut names: Vec<String> = Vec::new();
    for (list, field) in [
        (&spec["initContainers"], "spec.initContainers"),
        (&spec["containers"], "spec.containers"),
    ] {
        for (i, container) in list.as_array().into_iter().flatten().enumerate() {
            let path = format!("{field}[{i}]");
            let name = container["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                errors.push(FieldError {
                    field: format!("{path}.name"),
                    kind: ErrorType::Required,
                    value: String::new(),
                    detail: String::new(),
                });
            } else if let Err(e) = dns1123_label(name) {
                errors.push(FieldError::invalid(format!("{path}.name"), name, e));
            } else if names.iter().any(|n| n == name) {
                errors.push(FieldError {
                    field: format!("{path}.name"),
                    kind: ErrorType::Duplicate,
                    value: quoted(name),
                    detail: String::new(),
                });
            }
            names.push(name.to_owned());
            for (j, env) in container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let env_name = env["name"].as_str().unwrap_or_default();
                if env_name.is_empty() {
                    errors.push(FieldError {
                        field: format!("{path}.env[{j}].name"),
                        kind: ErrorType::Required,
                        value: String::new(),
                        detail: String::new(),
                    });
                } else if let Err(e) = env_var_name(env_name) {
                    errors.push(FieldError::invalid(
                        format!("{path}.env[{j}].name"),
                        env_name,
                        e,
                    ));
                }
            }
            resources(
                &container["resources"],
                &format!("{path}.resources"),
                &mut errors,
            )?;
        }
    }
    resources(&spec["resources"], "spec.resources", &mut errors)?;
    let mut volumes: Vec<&str> = Vec::new();
    for (i, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = volume["name"].as_str().unwrap_or_default();
        let field = format!("spec.volumes[{i}].name");
        if let Err(e) = dns1123_label(name) {
            errors.push(FieldError::invalid(field, name, e));
        } else if volumes.contains(&name) {
            errors.push(FieldError {
                field,
                kind: ErrorType::Duplicate,
                value: quoted(name),
                detail: String::new(),
            });
        }
        volumes.push(name);
    }
    labels(&spec["nodeSelector"], "spec.nodeSelector", &mut errors);
    for (i, alias) in spec["hostAliases"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let ip = alias["ip"].as_str().unwrap_or_default();
        if ip.parse::<std::net::IpAddr>().is_err() {
            errors.push(FieldError::invalid(
                format!("spec.hostAliases[{i}].ip"),
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
        for (j, hostname) in alias["hostnames"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let hostname = hostname.as_str().unwrap_or_default();
            if let Err(e) = dns1123_subdomain(hostname) {
                errors.push(FieldError::invalid(
                    format!("spec.hostAliases[{i}].hostnames[{j}]"),
                    hostname,
                    e,
                ));
            }
        }
    }
    if let Some(deadline) = spec.get("activeDeadlineSeconds").filter(|d| !d.is_null()) {
        let value = deadline.as_i64().unwrap_or(0);
        if !(1..=i64::from(i32::MAX)).contains(&value) {
            errors.push(FieldError {
                field: "spec.activeDeadlineSeconds".into(),
                kind: ErrorType::Invalid,
                value: value.to_string(),
                detail: format!("must be between 1 and {}, inclusive", i32::MAX),
            });
        }
    }
    Ok(errors)
}

/// `ValidateResourceRequirements`: no negative quantity, every request at most its limit.
fn resources(resources: &Value, path: &str, errors: &mut Vec<FieldError>) -> Result<(), String> {
    let parse = |map: &Value| -> Result<Vec<(String, String, i128)>, String> {
        map.as_object()
            .into_iter()
            .flatten()
            .map(|(name, q)| {
                let text = q.as_str().map_or_else(|| q.to_string(), str::to_owned);
                parse_quantity(&text).map(|nanos| (name.clone(), text, nanos))
            })
            .collect()
    };
    let limits = parse(&resources["limits"])?;
    let requests = parse(&resources["requests"])?;
    for (name, text, nanos) in &limits {
        if *nanos < 0 {
            errors.push(FieldError::invalid(
                format!("{path}.limits[{name}]"),
                text,
                "must be greater than or equal to 0",
            ));
        }
    }
    for (name, text, nanos) in &requests {
        if *nanos < 0 {
            errors.push(FieldError::invalid(
                format!("{path}.requests[{name}]"),
                text,
                "must be greater than or equal to 0",
            ));
        }
        if let Some((_, limit, limit_nanos)) = limits.iter().find(|(n, _, _)| n == name)
            && nanos > limit_nanos
        {
            errors.push(FieldError::invalid(
                format!("{path}.requests"),
                text,
                format!("must be less than or equal to {name} limit of {limit}"),
            ));
        }
    }
    Ok(())
}

/// A quantity in nano-units (`ParseQuantity`): `[+-]digits[.digits]` then a binary
/// (`Ki`..`Ei`), decimal (`n u m k M G T P E`) or exponent (`e3`) suffix. Finer than nano
/// rounds up, as the API server rounds quantities it cannot hold exactly.
pub fn parse_quantity(text: &str) -> Result<i128, String> {
    let bad = || {
        format!(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (got {})",
            quoted(text)
        )
    };
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(bad());
    }
    // value = digits * 10^exp10 * 2^exp2, in nano-units.
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => (s[1..].parse::<i32>().map_err(|_| bad())?, 0),
        _ => return Err(bad()),
    };
    let digits = format!("{whole}{fraction}");
    let mut value: i128 = 0;
    for d in digits.trim_start_matches('0').bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    value = value.checked_mul(1i128 << exp2).ok_or_else(bad)?;
    let exp = i64::from(exp10) + 9 - fraction.len() as i64;
    if exp >= 0 {
        for _ in 0..exp {
            value = value.checked_mul(10).ok_or_else(bad)?;
        }
    } else {
        let mut round_up = false;
        for _ in 0..(-exp).min(40) {
            round_up |= value % 10 != 0;
            value /= 10;
        }
        if round_up {
            value += 1;
        }
    }
    Ok(if negative { -value } else { value })
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const KEY_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName' or 'my.name' or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue' or 'my_value' or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_key_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn errors(list: Vec<String>) -> Result<(), String> {
    if list.is_empty() {
        Ok(())
    } else {
        Err(list.join(", "))
    }
}

/// `IsDNS1123Label`.
pub fn dns1123_label(value: &str) -> Result<(), String> {
    let mut list = Vec::new();
    if value.len() > 63 {
        list.push("must be no more than 63 bytes".to_owned());
    }
    if !is_label(value) {
        list.push(if dns1123_subdomain(value).is_ok() {
            "must not contain dots".to_owned()
        } else {
            LABEL_MSG.to_owned()
        });
    }
    errors(list)
}

/// `IsDNS1123Subdomain`.
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    let mut list = Vec::new();
    if value.len() > 253 {
        list.push("must be no more than 253 bytes".to_owned());
    }
    if !value.split('.').all(is_label) {
        list.push(SUBDOMAIN_MSG.to_owned());
    }
    errors(list)
}

/// `IsLabelKey`.
pub fn label_key(value: &str) -> Result<(), String> {
    let mut list = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                list.push("prefix part must be non-empty".to_owned());
            } else if let Err(e) = dns1123_subdomain(prefix) {
                list.push(format!("prefix part {e}"));
            }
            *name
        }
        _ => {
            return Err(format!(
                "a valid label key {KEY_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
        }
    };
    if name.is_empty() {
        list.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        list.push("name part must be no more than 63 bytes".to_owned());
    }
    if !is_key_name(name) {
        list.push(format!("name part {KEY_MSG}"));
    }
    errors(list)
}

/// `IsLabelValue`.
pub fn label_value(value: &str) -> Result<(), String> {
    let mut list = Vec::new();
    if value.len() > 63 {
        list.push("must be no more than 63 bytes".to_owned());
    }
    if !value.is_empty() && !is_key_name(value) {
        list.push(VALUE_MSG.to_owned());
    }
    errors(list)
}

/// `IsRelaxedEnvVarName`.
pub fn env_var_name(value: &str) -> Result<(), String> {
    if value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
    {
        Ok(())
    } else {
        Err("a valid environment variable name must consist only of printable ASCII characters other than '='".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_compare_in_nano_units() {
        let q = |t: &str| parse_quantity(t).unwrap();
        assert_eq!(q("1"), 1_000_000_000);
        assert_eq!(q("500m"), 500_000_000);
        assert_eq!(q("1.5"), 1_500_000_000);
        assert_eq!(q("1Gi"), 1_073_741_824 * 1_000_000_000);
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("-1"), -1_000_000_000);
        assert_eq!(q("0.1n"), 1);
        assert_eq!(q("1n"), 1);
        assert!(q("1Gi") > q("1G"));
        assert!(parse_quantity("abc").is_err() && parse_quantity("1X").is_err());
        assert!(parse_quantity("").is_err() && parse_quantity("1.2.3").is_err());
    }
}
