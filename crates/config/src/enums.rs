//! The closed string values of `config.toml` (executor, shell, pull policy, ...), each with
//! an error that lists what is accepted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value outside a closed set of strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UnknownValue {
    message: String,
}

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal, hint = $hint:expr;
        $( $(#[$vmeta:meta])* $variant:ident = $text:literal $(| $alias:literal)* ),+ $(,)?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every accepted spelling, in the canonical form.
            pub const ALL: &'static [&'static str] = &[$($text),+];

            /// The canonical spelling, as `config.toml` writes it.
            pub fn as_str(&self) -> &'static str {
                match self { $( $name::$variant => $text ),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text $(| $alias)* => Ok($name::$variant), )+
                    other => {
                        let hint: fn(&str) -> Option<String> = $hint;
                        let accepted = $name::ALL.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", ");
                        let message = match hint(other) {
                            Some(h) => h,
                            None => format!("{other:?} is not a {} (accepted: {accepted})", $what),
                        };
                        Err(UnknownValue { message })
                    }
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn no_hint(_: &str) -> Option<String> {
    None
}

/// gitlab-runner executors that podrunner does not have.
const FOREIGN_EXECUTORS: &[&str] = &[
    "docker",
    "docker-windows",
    "docker+machine",
    "docker-autoscaler",
    "instance",
    "custom",
    "ssh",
    "parallels",
    "virtualbox",
];

fn executor_hint(value: &str) -> Option<String> {
    FOREIGN_EXECUTORS.contains(&value).then(|| {
        format!("podrunner has no {value:?} executor; use executor = \"kubernetes\" (one pod per job) or executor = \"shell\"")
    })
}

fn shell_hint(value: &str) -> Option<String> {
    matches!(value, "pwsh" | "powershell" | "cmd").then(|| {
        format!("podrunner runs job scripts with bash or sh, not {value}; use shell = \"bash\" (sh is used when an image has no bash)")
    })
}

string_enum! {
    /// The executor of a `[[runners]]` entry.
    Executor, "podrunner executor", hint = executor_hint;
    /// Each job in its own Kubernetes pod.
    Kubernetes = "kubernetes",
    /// Each job as a child process on the runner's machine.
    Shell = "shell",
}

string_enum! {
    /// The shell that runs job scripts.
    Shell, "shell", hint = shell_hint;
    /// GNU bash (the default; `sh` is used when the image has no bash).
    Bash = "bash",
    /// POSIX sh.
    Sh = "sh",
}

string_enum! {
    /// The manager's log level.
    LogLevel, "log level", hint = no_hint;
    /// Everything.
    Debug = "debug",
    /// The default.
    Info = "info",
    /// Warnings and errors.
    Warn = "warn" | "warning",
    /// Errors only.
    Error = "error",
    /// Fatal errors only.
    Fatal = "fatal",
    /// Panics only.
    Panic = "panic",
}

string_enum! {
    /// The manager's log format.
    LogFormat, "log format", hint = no_hint;
    /// Human-readable lines (the default).
    Runner = "runner",
    /// logfmt-style `key=value` lines.
    Text = "text",
    /// One JSON object a line.
    Json = "json",
}

string_enum! {
    /// An image pull policy.
    PullPolicy, "pull policy", hint = no_hint;
    /// Always pull (`Always`).
    Always = "always",
    /// Pull when the node lacks the image (`IfNotPresent`).
    IfNotPresent = "if-not-present",
    /// Never pull (`Never`).
    Never = "never",
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn kubernetes_name(&self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

string_enum! {
    /// The pod's DNS policy.
    DnsPolicy, "DNS policy", hint = no_hint;
    /// `None`: only `dns_config` applies.
    None = "none",
    /// `Default`: the node's resolver.
    Default = "default",
    /// `ClusterFirst` (Kubernetes' default).
    ClusterFirst = "cluster-first",
    /// `ClusterFirstWithHostNet`.
    ClusterFirstWithHostNet = "cluster-first-with-host-net",
}

impl DnsPolicy {
    /// The Kubernetes spelling.
    pub fn kubernetes_name(&self) -> &'static str {
        match self {
            DnsPolicy::None => "None",
            DnsPolicy::Default => "Default",
            DnsPolicy::ClusterFirst => "ClusterFirst",
            DnsPolicy::ClusterFirstWithHostNet => "ClusterFirstWithHostNet",
        }
    }
}

string_enum! {
    /// How a `[[runners.kubernetes.pod_spec]]` patch is applied.
    PatchType, "pod_spec patch type", hint = no_hint;
    /// Strategic merge patch (the default).
    Strategic = "strategic",
    /// JSON merge patch (RFC 7386).
    Merge = "merge",
    /// JSON patch (RFC 6902).
    Json = "json",
}

string_enum! {
    /// Where the distributed cache lives.
    CacheType, "cache type", hint = no_hint;
    /// Amazon S3 or an S3-compatible store.
    S3 = "s3",
    /// Google Cloud Storage.
    Gcs = "gcs",
    /// Azure Blob Storage.
    Azure = "azure",
}

string_enum! {
    /// A taint effect in `node_tolerations`.
    TaintEffect, "taint effect", hint = no_hint;
    /// Tolerate every effect of the key.
    Any = "",
    /// `NoSchedule`.
    NoSchedule = "NoSchedule",
    /// `PreferNoSchedule`.
    PreferNoSchedule = "PreferNoSchedule",
    /// `NoExecute`.
    NoExecute = "NoExecute",
}

/// `pull_policy`: one policy or a list tried in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullPolicies(pub Vec<PullPolicy>);

impl Serialize for PullPolicies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PullPolicies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let texts = match OneOrMany::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("pull_policy must be a string or a list of strings, e.g. [\"always\", \"if-not-present\"]")
        })? {
            OneOrMany::One(one) if one.is_empty() => vec![],
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        };
        texts
            .iter()
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .collect::<Result<Vec<_>, _>>()
            .map(PullPolicies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_executor_names_the_fix() {
        let err = "docker".parse::<Executor>().unwrap_err().to_string();
        assert!(
            err.contains("no \"docker\" executor") && err.contains("kubernetes"),
            "{err}"
        );
        let err = "dockr".parse::<Executor>().unwrap_err().to_string();
        assert!(err.contains("accepted: \"kubernetes\", \"shell\""), "{err}");
        assert_eq!("warning".parse::<LogLevel>().unwrap(), LogLevel::Warn);
        assert!(
            "pwsh"
                .parse::<Shell>()
                .unwrap_err()
                .to_string()
                .contains("bash or sh")
        );
    }
}
