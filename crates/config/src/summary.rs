//! A short account of a loaded configuration, for `podrunner config check`. Tokens are
//! reported only as set or not set.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::diagnostics::Diagnostic;
use crate::honoured::IgnoredSetting;
use crate::kubernetes::{ContainerRole, ResourceKind};
use crate::load::LoadedConfig;
use crate::quantity::Quantity;

/// What `config check` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSummary {
    /// The file that was checked.
    pub source: String,
    /// Jobs at once over all runners.
    pub concurrent: i64,
    /// Seconds between job requests.
    pub check_interval_secs: u64,
    /// Log level.
    pub log_level: String,
    /// Metrics and health address, if any.
    pub listen_address: Option<String>,
    /// Seconds allowed for a forceful shutdown.
    pub shutdown_timeout_secs: u64,
    /// One entry per `[[runners]]`.
    pub runners: Vec<RunnerSummary>,
    /// Warnings found while loading.
    pub warnings: Vec<Diagnostic>,
    /// Keys set in the file that podrunner reads but does not honour, with what to do instead.
    pub not_honoured: Vec<IgnoredSetting>,
}

/// One runner in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunnerSummary {
    /// The runner's name, if given.
    pub name: Option<String>,
    /// The executor.
    pub executor: String,
    /// GitLab's URL, if given.
    pub url: Option<String>,
    /// Whether a token is configured (the token itself is never shown).
    pub token_set: bool,
    /// Jobs this runner runs at once (0 = no own limit).
    pub limit: i64,
    /// Trace size limit in KiB.
    pub output_limit_kib: i64,
    /// Builds directory.
    pub builds_dir: String,
    /// Kubernetes settings, for the kubernetes executor.
    pub kubernetes: Option<KubernetesSummary>,
}

/// The Kubernetes part of a runner summary.
#[derive(Debug, Clone, Serialize)]
pub struct KubernetesSummary {
    /// Namespace of job pods.
    pub namespace: String,
    /// Default job image.
    pub image: Option<String>,
    /// Requests and limits per container role that has any.
    pub resources: Vec<ResourceSummary>,
    /// Labels of job pods.
    pub pod_labels: BTreeMap<String, String>,
    /// Seconds to wait for a pod to start.
    pub poll_timeout_secs: u64,
    /// Seconds between pod checks.
    pub poll_interval_secs: u64,
    /// Declared Fargate profiles as `name: namespace{labels}` selectors.
    pub fargate_profiles: Vec<FargateProfileSummary>,
}

/// Requests and limits of one container role.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceSummary {
    /// Which container.
    pub container: ContainerRole,
    /// Resource → request.
    pub requests: BTreeMap<&'static str, Quantity>,
    /// Resource → limit.
    pub limits: BTreeMap<&'static str, Quantity>,
}

/// A declared Fargate profile.
#[derive(Debug, Clone, Serialize)]
pub struct FargateProfileSummary {
    /// Profile name.
    pub name: String,
    /// Selectors, as `namespace` or `namespace{key=value,...}`.
    pub selectors: Vec<String>,
}

impl ConfigSummary {
    /// Summarizes a loaded configuration read from `source`.
    pub fn new(source: &str, loaded: &LoadedConfig) -> Self {
        let config = &loaded.config;
        ConfigSummary {
            source: source.to_owned(),
            concurrent: config.concurrent,
            check_interval_secs: if config.check_interval > 0 {
                config.check_interval as u64
            } else {
                crate::model::DEFAULT_CHECK_INTERVAL_SECS as u64
            },
            log_level: config.log_level.to_string(),
            listen_address: config.listen_address.clone(),
            shutdown_timeout_secs: if config.shutdown_timeout > 0 {
                config.shutdown_timeout as u64
            } else {
                crate::model::DEFAULT_SHUTDOWN_TIMEOUT_SECS as u64
            },
            runners: config.runners.iter().map(RunnerSummary::new).collect(),
            warnings: loaded.warnings.clone(),
            not_honoured: loaded.not_honoured.clone(),
        }
    }
}

impl RunnerSummary {
    fn new(runner: &crate::model::RunnerConfig) -> Self {
        let is_kubernetes = runner.executor == Some(crate::enums::Executor::Kubernetes);
        RunnerSummary {
            name: runner.name.clone(),
            executor: runner.executor.map(|e| e.to_string()).unwrap_or_default(),
            url: runner.url.clone().filter(|u| !u.is_empty()),
            token_set: runner.token.as_deref().is_some_and(|t| !t.is_empty()),
            limit: runner.limit,
            output_limit_kib: if runner.output_limit > 0 {
                runner.output_limit
            } else {
                crate::model::DEFAULT_OUTPUT_LIMIT_KIB
            },
            builds_dir: runner.builds_dir(),
            kubernetes: is_kubernetes
                .then(|| KubernetesSummary::new(&runner.kubernetes_or_default())),
        }
    }
}

impl KubernetesSummary {
    fn new(k: &crate::kubernetes::KubernetesConfig) -> Self {
        let resources = ContainerRole::ALL
            .iter()
            .filter_map(|role| {
                let mut requests = BTreeMap::new();
                let mut limits = BTreeMap::new();
                for kind in ResourceKind::ALL {
                    if let Some(setting) = k.resource(*role, kind) {
                        if let Some(q) = setting.request {
                            requests.insert(kind.kubernetes_name(), q);
                        }
                        if let Some(q) = setting.limit {
                            limits.insert(kind.kubernetes_name(), q);
                        }
                    }
                }
                (!requests.is_empty() || !limits.is_empty() || *role == ContainerRole::Build)
                    .then_some(ResourceSummary {
                        container: *role,
                        requests,
                        limits,
                    })
            })
            .collect();
        let fargate_profiles = k
            .fargate
            .iter()
            .flat_map(|f| f.profiles.iter())
            .map(|p| FargateProfileSummary {
                name: p.name.clone(),
                selectors: p
                    .selectors
                    .iter()
                    .map(|s| {
                        if s.labels.is_empty() {
                            s.namespace.to_string()
                        } else {
                            let labels: Vec<String> =
                                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                            format!("{}{{{}}}", s.namespace, labels.join(","))
                        }
                    })
                    .collect(),
            })
            .collect();
        KubernetesSummary {
            namespace: k.namespace().to_owned(),
            image: k.image.clone(),
            resources,
            pod_labels: k.pod_labels.clone(),
            poll_timeout_secs: k.poll_timeout_secs(),
            poll_interval_secs: k.poll_interval_secs(),
            fargate_profiles,
        }
    }
}

fn quantities(map: &BTreeMap<&'static str, Quantity>, kind: &str) -> String {
    map.get(kind)
        .map(|q| q.to_string())
        .unwrap_or_else(|| "-".to_owned())
}

impl fmt::Display for ConfigSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: valid", self.source)?;
        write!(
            f,
            "concurrent {}, check_interval {}s, log_level {}, shutdown_timeout {}s",
            self.concurrent, self.check_interval_secs, self.log_level, self.shutdown_timeout_secs
        )?;
        if let Some(address) = &self.listen_address {
            write!(f, ", listen_address {address}")?;
        }
        writeln!(f)?;
        for (i, runner) in self.runners.iter().enumerate() {
            writeln!(f)?;
            writeln!(
                f,
                "runner {i} {:?}: executor {}",
                runner.name.as_deref().unwrap_or("(unnamed)"),
                runner.executor
            )?;
            writeln!(
                f,
                "  url:             {}",
                runner.url.as_deref().unwrap_or("(not set)")
            )?;
            writeln!(
                f,
                "  token:           {}",
                if runner.token_set { "set" } else { "(not set)" }
            )?;
            writeln!(
                f,
                "  limit:           {}",
                if runner.limit > 0 {
                    runner.limit.to_string()
                } else {
                    "none (concurrent applies)".to_owned()
                }
            )?;
            writeln!(f, "  output limit:    {} KiB", runner.output_limit_kib)?;
            let Some(k) = &runner.kubernetes else {
                continue;
            };
            writeln!(f, "  namespace:       {}", k.namespace)?;
            writeln!(
                f,
                "  image:           {}",
                k.image.as_deref().unwrap_or("(from the job)")
            )?;
            for r in &k.resources {
                let role = format!("{:?}", r.container).to_lowercase();
                writeln!(
                    f,
                    "  {:<16} cpu request {}, limit {}; memory request {}, limit {}; ephemeral-storage request {}, limit {}",
                    format!("{role}:"),
                    quantities(&r.requests, "cpu"),
                    quantities(&r.limits, "cpu"),
                    quantities(&r.requests, "memory"),
                    quantities(&r.limits, "memory"),
                    quantities(&r.requests, "ephemeral-storage"),
                    quantities(&r.limits, "ephemeral-storage"),
                )?;
            }
            let labels: Vec<String> = k
                .pod_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(
                f,
                "  pod labels:      {}",
                if labels.is_empty() {
                    "(none)".to_owned()
                } else {
                    labels.join(", ")
                }
            )?;
            writeln!(
                f,
                "  poll timeout:    {}s (every {}s)",
                k.poll_timeout_secs, k.poll_interval_secs
            )?;
            if k.fargate_profiles.is_empty() {
                writeln!(f, "  fargate:         no profiles declared")?;
            } else {
                for p in &k.fargate_profiles {
                    writeln!(
                        f,
                        "  fargate profile: {} selects {}",
                        p.name,
                        p.selectors.join(" or ")
                    )?;
                }
            }
        }
        if !self.warnings.is_empty() {
            writeln!(f)?;
            for w in &self.warnings {
                writeln!(f, "warning: {w}")?;
            }
        }
        if !self.not_honoured.is_empty() {
            writeln!(f)?;
            writeln!(f, "{}:", crate::honoured::HEADING)?;
            for setting in &self.not_honoured {
                writeln!(f, "  {setting}")?;
            }
        }
        Ok(())
    }
}
