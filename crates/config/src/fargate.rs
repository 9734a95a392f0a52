//! `[runners.kubernetes.fargate]`: podrunner's extension declaring the cluster's Fargate
//! profiles and prices, so placement, size and cost can be predicted before a pod exists.
//! gitlab-runner ignores unknown tables, so a file with this table still works there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wildcard::Wildcard;

/// us-east-1 Linux/x86 price per vCPU-hour, in USD.
pub const US_EAST_1_USD_PER_VCPU_HOUR: f64 = 0.04048;
/// us-east-1 Linux/x86 price per GB-hour of memory, in USD.
pub const US_EAST_1_USD_PER_GB_HOUR: f64 = 0.004445;
/// us-east-1 price per GB-hour of ephemeral storage above the free 20 GB, in USD.
pub const US_EAST_1_USD_PER_EXTRA_STORAGE_GB_HOUR: f64 = 0.000111;
/// Fargate bills per second, rounded up, with this minimum.
pub const MINIMUM_BILLED_SECONDS: u64 = 60;

/// What running `seconds` at `usd_per_hour` costs on Fargate: per second, rounded up, at
/// least [`MINIMUM_BILLED_SECONDS`].
pub fn billed_cost(usd_per_hour: f64, seconds: f64) -> f64 {
    let billed = (seconds.ceil() as u64).max(MINIMUM_BILLED_SECONDS);
    usd_per_hour * billed as f64 / 3600.0
}

/// The label with which a pod asks for one profile by name.
pub const PROFILE_LABEL: &str = "eks.amazonaws.com/fargate-profile";

/// `[runners.kubernetes.fargate]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct FargateConfig {
    /// Refuse a Fargate-bound job pod that Fargate cannot run, before creating it.
    pub reject_unsupported: bool,
    /// Price per vCPU-hour, in USD.
    pub usd_per_vcpu_hour: f64,
    /// Price per GB-hour of memory, in USD.
    pub usd_per_gb_hour: f64,
    /// Price per GB-hour of ephemeral storage above 20 GB, in USD.
    pub usd_per_extra_storage_gb_hour: f64,
    /// The cluster's Fargate profiles, as declared here.
    pub profiles: Vec<FargateProfile>,
}

impl Default for FargateConfig {
    fn default() -> Self {
        FargateConfig {
            reject_unsupported: true,
            usd_per_vcpu_hour: US_EAST_1_USD_PER_VCPU_HOUR,
            usd_per_gb_hour: US_EAST_1_USD_PER_GB_HOUR,
            usd_per_extra_storage_gb_hour: US_EAST_1_USD_PER_EXTRA_STORAGE_GB_HOUR,
            profiles: Vec::new(),
        }
    }
}

/// A Fargate profile: a name and up to five selectors.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct FargateProfile {
    /// The profile's name in EKS.
    pub name: String,
    /// Pods matching any selector run on Fargate.
    pub selectors: Vec<FargateSelector>,
}

/// A profile selector: a namespace and labels, each with `*` and `?` wildcards.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct FargateSelector {
    /// Namespace pattern; required.
    pub namespace: Wildcard,
    /// Label key pattern → value pattern; the pod needs all of them.
    pub labels: BTreeMap<String, Wildcard>,
}

impl FargateSelector {
    /// Whether a pod in `namespace` with `labels` matches: the namespace matches and
    /// every selector label matches some pod label (key and value, wildcards allowed).
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace.matches(namespace)
            && self.labels.iter().all(|(key_pattern, value_pattern)| {
                let key_pattern = Wildcard::new(key_pattern.as_str());
                labels
                    .iter()
                    .any(|(key, value)| key_pattern.matches(key) && value_pattern.matches(value))
            })
    }
}

impl FargateProfile {
    /// Whether a pod matches any selector of this profile.
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.selectors.iter().any(|s| s.matches(namespace, labels))
    }
}

impl FargateConfig {
    /// The profile that would take a pod, as EKS picks it: the pod's
    /// `eks.amazonaws.com/fargate-profile` label names it (and it must still match), else
    /// the first matching profile by name.
    pub fn profile_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&FargateProfile> {
        if let Some(forced) = labels.get(PROFILE_LABEL) {
            return self
                .profiles
                .iter()
                .find(|p| &p.name == forced && p.matches(namespace, labels));
        }
        self.profiles
            .iter()
            .filter(|p| p.matches(namespace, labels))
            .min_by(|a, b| a.name.cmp(&b.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(ns: &str, pairs: &[(&str, &str)]) -> FargateSelector {
        FargateSelector {
            namespace: Wildcard::new(ns),
            labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Wildcard::new(*v)))
                .collect(),
        }
    }

    #[test]
    fn selector_needs_namespace_and_every_label() {
        let s = selector("gitlab-runner", &[("use-fargate", "true")]);
        assert!(s.matches(
            "gitlab-runner",
            &labels(&[("use-fargate", "true"), ("other", "x")])
        ));
        assert!(!s.matches("gitlab-runner", &labels(&[("use-fargate", "false")])));
        assert!(!s.matches("gitlab-runner", &labels(&[])));
        assert!(!s.matches("default", &labels(&[("use-fargate", "true")])));
        // No labels: every pod in the namespace.
        assert!(selector("ci", &[]).matches("ci", &labels(&[])));
    }

    #[test]
    fn wildcards_in_namespace_keys_and_values() {
        let s = selector("gitlab-*", &[("use-*", "t?ue")]);
        assert!(s.matches("gitlab-runner", &labels(&[("use-fargate", "true")])));
        assert!(s.matches("gitlab-", &labels(&[("use-", "tRue")])));
        assert!(!s.matches("gitlab", &labels(&[("use-fargate", "true")])));
        assert!(!s.matches("gitlab-runner", &labels(&[("use-fargate", "trUUe")])));
        assert!(selector("*", &[]).matches("anything", &labels(&[])));
        assert!(selector("ci-?", &[]).matches("ci-7", &labels(&[])));
        assert!(!selector("ci-?", &[]).matches("ci-77", &labels(&[])));
    }

    #[test]
    fn first_profile_by_name_wins_unless_label_forces_one() {
        let config = FargateConfig {
            profiles: vec![
                FargateProfile {
                    name: "zeta".into(),
                    selectors: vec![selector("ci", &[])],
                },
                FargateProfile {
                    name: "alpha".into(),
                    selectors: vec![selector("c*", &[])],
                },
                FargateProfile {
                    name: "other".into(),
                    selectors: vec![selector("elsewhere", &[])],
                },
            ],
            ..FargateConfig::default()
        };
        assert_eq!(
            config.profile_for("ci", &labels(&[])).unwrap().name,
            "alpha"
        );
        assert_eq!(
            config
                .profile_for("ci", &labels(&[(PROFILE_LABEL, "zeta")]))
                .unwrap()
                .name,
            "zeta"
        );
        // Forcing a profile the pod does not match places it nowhere.
        assert!(
            config
                .profile_for("ci", &labels(&[(PROFILE_LABEL, "other")]))
                .is_none()
        );
        assert!(config.profile_for("prod", &labels(&[])).is_none());
    }
}
