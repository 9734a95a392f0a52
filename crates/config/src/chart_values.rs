//! Which values of a Helm values file podrunner's chart honours: the official GitLab Runner
//! chart's values it reads but cannot honour (each with what to do instead), and values
//! neither chart knows. `config check --values` says the same as the chart's NOTES.txt,
//! which prints these tables from `chart/podrunner/templates/_helpers.tpl`
//! (`podrunner.valueNotes`); a test keeps the two copies equal.

use serde_yaml_ng::Value;

/// Top-level values of the official chart that podrunner's chart does not honour.
pub const IGNORED: &[(&str, &str)] = &[
    (
        "unregisterRunners",
        "the preStop hook drains running jobs (podrunner drain) and does not unregister; remove stale runner managers in GitLab, or run podrunner unregister",
    ),
    (
        "sessionServer",
        "interactive web terminals need exec streams, which podrunner does not use",
    ),
    (
        "hpa",
        "the chart renders no HorizontalPodAutoscaler; set replicas (each manager takes up to concurrent jobs)",
    ),
    (
        "preEntrypointScript",
        "the image has no shell; use extraEnv, envVars or volumes",
    ),
    ("useTini", "podrunner is its own init process"),
    (
        "probeTimeoutSeconds",
        "give livenessProbe.timeoutSeconds and readinessProbe.timeoutSeconds",
    ),
    (
        "sentryDsn",
        "podrunner sends nothing to Sentry; read its logs",
    ),
    (
        "connectionMaxAge",
        "podrunner recycles idle GitLab connections after 90 s",
    ),
    (
        "deploymentLifecycle",
        "the preStop hook stays podrunner drain, which finishes running jobs",
    ),
    (
        "secrets",
        "mount extra Secrets with volumes and volumeMounts",
    ),
    (
        "configMaps",
        "mount extra ConfigMaps with volumes and volumeMounts",
    ),
    (
        "namespace",
        "install the release with --namespace; job pods go to runners.jobNamespace or the namespace in runners.config",
    ),
];

/// `runners.*` values of the official chart that podrunner's chart does not honour.
pub const IGNORED_RUNNERS: &[(&str, &str)] = &[
    (
        "configPath",
        "the chart renders runners.config into the manager's values; there is no config file to point at",
    ),
    (
        "tags",
        "glrt- runner tokens carry their tags in GitLab: set them in the runner's settings",
    ),
    (
        "locked",
        "glrt- runner tokens: set it in the runner's settings in GitLab",
    ),
    (
        "runUntagged",
        "glrt- runner tokens: set it in the runner's settings in GitLab",
    ),
    (
        "protected",
        "glrt- runner tokens: set it in the runner's settings in GitLab",
    ),
    (
        "maximumTimeout",
        "glrt- runner tokens: set it in the runner's settings in GitLab",
    ),
];

/// `rbac.*` values of the official chart that podrunner's chart does not honour.
pub const IGNORED_RBAC: &[(&str, &str)] = &[
    (
        "rules",
        "podrunner's Role grants exactly the calls its executor makes",
    ),
    (
        "podSecurityPolicy",
        "PodSecurityPolicy was removed in Kubernetes 1.25",
    ),
    ("serviceAccountName", "use serviceAccount.name"),
    ("generatedServiceAccountName", "use serviceAccount.name"),
    ("imagePullSecrets", "use serviceAccount.imagePullSecrets"),
];

/// Every top-level value podrunner's chart honours (its values.yaml, plus the official
/// chart's `runnerRegistrationToken` and Helm's `global`).
pub const KNOWN: &[&str] = &[
    "gitlabUrl",
    "runnerToken",
    "runnerRegistrationToken",
    "image",
    "imagePullPolicy",
    "imagePullSecrets",
    "replicas",
    "revisionHistoryLimit",
    "strategy",
    "zoneAntiAffinity",
    "concurrent",
    "checkInterval",
    "logLevel",
    "logFormat",
    "shutdown_timeout",
    "terminationGracePeriodSeconds",
    "runners",
    "rbac",
    "serviceAccount",
    "metrics",
    "service",
    "pinToEC2",
    "podLabels",
    "podAnnotations",
    "deploymentLabels",
    "deploymentAnnotations",
    "hostAliases",
    "hostname",
    "runtimeClassName",
    "schedulerName",
    "automountServiceAccountToken",
    "resources",
    "nodeSelector",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "priorityClassName",
    "securityContext",
    "podSecurityContext",
    "extraEnv",
    "extraEnvFrom",
    "extraEnvFromRefs",
    "envVars",
    "livenessProbe",
    "readinessProbe",
    "extraContainers",
    "extraObjects",
    "volumes",
    "volumeMounts",
    "certsSecretName",
    "certsSecretKey",
    "global",
];

/// Probe handlers the chart replaces with its own HTTP checks.
const PROBE_HANDLERS: &[&str] = &["exec", "httpGet", "tcpSocket", "grpc"];

/// A value the chart does not honour: its key path and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueNote {
    /// The key path, e.g. `["runners", "tags"]`.
    pub path: Vec<String>,
    /// What the note says (`IGNORED: …` advice or why it is unknown).
    pub message: String,
}

fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        _ => true,
    }
}

fn lookup<'a>(table: &'a [(&str, &str)], key: &str) -> Option<&'a str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The values of `values` (a values file's top mapping) that the chart does not honour.
pub fn notes(values: &Value) -> Vec<ValueNote> {
    let mut notes = Vec::new();
    let Some(top) = values.as_mapping() else {
        return notes;
    };
    let note = |path: &[&str], message: String| ValueNote {
        path: path.iter().map(|s| (*s).to_owned()).collect(),
        message,
    };
    for (key, value) in top {
        let Some(key) = key.as_str() else { continue };
        if let Some(advice) = lookup(IGNORED, key) {
            notes.push(note(
                &[key],
                format!("is not honoured by podrunner: {advice}"),
            ));
        } else if !KNOWN.contains(&key) {
            notes.push(note(
                &[key],
                "is not a value of podrunner's chart nor of the official GitLab Runner chart (misspelt?)".to_owned(),
            ));
        } else if let Some(inner) = value.as_mapping() {
            let table = match key {
                "runners" => IGNORED_RUNNERS,
                "rbac" => IGNORED_RBAC,
                "livenessProbe" | "readinessProbe" => {
                    for handler in PROBE_HANDLERS {
                        if inner.contains_key(*handler) {
                            notes.push(note(&[key, handler], "is not honoured by podrunner: its probes are its HTTP checks /healthz and /readyz; only the timings are taken".to_owned()));
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            for (inner_key, inner_value) in inner {
                if let Some(inner_key) = inner_key.as_str()
                    && let Some(advice) = lookup(table, inner_key)
                    && is_set(inner_value)
                {
                    notes.push(note(
                        &[key, inner_key],
                        format!("is not honoured by podrunner: {advice}"),
                    ));
                }
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart's NOTES.txt says the same: `_helpers.tpl` holds the same tables.
    #[test]
    fn the_chart_template_has_the_same_tables() {
        let template = include_str!("../../../chart/podrunner/templates/_helpers.tpl");
        for (name, table) in [
            ("$ignored", IGNORED),
            ("$ignoredRunners", IGNORED_RUNNERS),
            ("$ignoredRbac", IGNORED_RBAC),
        ] {
            let start = template
                .find(&format!("{{{{- {name} := dict"))
                .unwrap_or_else(|| panic!("{name} not in _helpers.tpl"));
            let body = &template[start..];
            let body = &body[..body.find("-}}").unwrap()];
            let pairs: Vec<(String, String)> = body
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let mut quoted = line.split('"').skip(1).step_by(2);
                    Some((quoted.next()?.to_owned(), quoted.next()?.to_owned()))
                })
                .collect();
            let expected: Vec<(String, String)> = table
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(
                pairs, expected,
                "{name} differs between _helpers.tpl and chart_values.rs"
            );
        }
        let known_line = template
            .lines()
            .find(|l| l.contains("$known := list"))
            .expect("$known in _helpers.tpl");
        let known: Vec<&str> = known_line.split('"').skip(1).step_by(2).collect();
        assert_eq!(known, KNOWN);
    }

    #[test]
    fn notes_name_ignored_and_unknown_values() {
        let values: Value = serde_yaml_ng::from_str(
            "unregisterRunners: true\nsomeTypo: 1\nconcurrent: 4\nrunners:\n  tags: a,b\n  locked: false\n  config: x\nrbac:\n  rules: []\n  podSecurityPolicy: {enabled: true}\nlivenessProbe: {exec: {command: [x]}, periodSeconds: 5}\n",
        )
        .unwrap();
        let paths: Vec<String> = notes(&values).iter().map(|n| n.path.join(".")).collect();
        assert_eq!(
            paths,
            [
                "unregisterRunners",
                "someTypo",
                "runners.tags",
                "rbac.podSecurityPolicy",
                "livenessProbe.exec"
            ]
        );
    }
}
