//! Image pull policies: which ones a container tries, in which order, and what happens when a
//! pull fails. Pure, table-tested; gitlab-runner's behaviour (`gitlabhq/gitlab-runner`):
//!
//! - `executors/kubernetes/kubernetes.go`, `getPullPolicies`: the job's `image:pull_policy`
//!   (or the service's) when it has one, else `[runners.kubernetes] pull_policy`, else one
//!   empty policy: the cluster's default (no `imagePullPolicy`).
//! - `common/config.go`, `KubernetesConfig.GetAllowedPullPolicies`: `allowed_pull_policies`,
//!   else the runner's `pull_policy` list as above (so a job may only choose among the
//!   runner's own policies unless `allowed_pull_policies` widens them).
//! - `helpers/pull_policies/pull_policies.go`, `ComputeEffectivePullPolicies`: the chosen
//!   policies that are allowed, in the chosen order; none allowed is the configuration error
//!   "pull_policy ([…]) defined in <source> is not one of the allowed_pull_policies ([…])",
//!   the source being "GitLab pipeline config", "Runner config" or "Runner config (default)".
//! - `executors/kubernetes/internal/pull/manager.go`: one failure count per container; the
//!   policy a container uses is the one at its failure count. A pull failure writes the
//!   warning "Failed to pull image %q for container %q with policy %q: %v" and, while a
//!   policy remains, "Attempt #%d: Trying %q pull policy for %q image for container %q"
//!   (`%q` is Go's quoting, the policy in Kubernetes' spelling, "" for the cluster's
//!   default); `kubernetes.go`'s `Run` then deletes the pod and what it made and creates
//!   it again. With no policy left the job fails with the pull error.

use std::collections::BTreeMap;
use std::fmt;

use podrunner_config::{PullPolicies, PullPolicy};

/// One pull policy a container may run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No `imagePullPolicy`: the API server's default for the image.
    ClusterDefault,
    /// This policy.
    Set(PullPolicy),
}

impl Policy {
    /// The container's `imagePullPolicy`.
    pub fn image_pull_policy(&self) -> Option<String> {
        match self {
            Policy::ClusterDefault => None,
            Policy::Set(policy) => Some(policy.kubernetes_name().to_owned()),
        }
    }

    fn kubernetes_name(&self) -> &'static str {
        match self {
            Policy::ClusterDefault => "",
            Policy::Set(policy) => policy.kubernetes_name(),
        }
    }
}

/// A list printed as Go prints a slice of policies: `[Always IfNotPresent]`.
struct GoList<'a>(&'a [Policy]);

impl fmt::Display for GoList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(Policy::kubernetes_name).collect();
        write!(f, "[{}]", names.join(" "))
    }
}

/// Why a container's pull policies cannot be chosen.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PullPolicyError {
    /// A job named a policy that does not exist.
    #[error(
        "pull policy {policy:?} of container {container:?} (image:pull_policy in .gitlab-ci.yml) is not one of always, if-not-present, never"
    )]
    Unknown {
        /// The container.
        container: String,
        /// The job's spelling.
        policy: String,
    },
    /// None of the chosen policies is allowed.
    #[error(
        "invalid pull policy for container {container:?}: pull_policy ({policies}) defined in {origin} is not one of the allowed_pull_policies ({allowed}); set [runners.kubernetes] allowed_pull_policies or change the pull_policy"
    )]
    NotAllowed {
        /// The container.
        container: String,
        /// The chosen policies, as gitlab-runner prints them.
        policies: String,
        /// Where they came from.
        origin: &'static str,
        /// The allowed ones, as gitlab-runner prints them.
        allowed: String,
    },
}

fn runner_list(runner: &PullPolicies) -> Vec<Policy> {
    if runner.0.is_empty() {
        vec![Policy::ClusterDefault]
    } else {
        runner.0.iter().copied().map(Policy::Set).collect()
    }
}

/// The policies `container` tries, in order: the job's (`job`, from `.gitlab-ci.yml`) or the
/// runner's, limited to the allowed ones. Never empty.
pub fn effective(
    container: &str,
    job: &[String],
    runner: &PullPolicies,
    allowed: &PullPolicies,
) -> Result<Vec<Policy>, PullPolicyError> {
    let job_policies = job
        .iter()
        .map(|p| {
            p.parse::<PullPolicy>()
                .map(Policy::Set)
                .map_err(|_| PullPolicyError::Unknown {
                    container: container.to_owned(),
                    policy: p.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let chosen = if job_policies.is_empty() {
        runner_list(runner)
    } else {
        job_policies
    };
    let allowed = if allowed.0.is_empty() {
        runner_list(runner)
    } else {
        allowed.0.iter().copied().map(Policy::Set).collect()
    };
    let effective: Vec<Policy> = chosen
        .iter()
        .copied()
        .filter(|p| allowed.contains(p))
        .collect();
    if effective.is_empty() {
        return Err(PullPolicyError::NotAllowed {
            container: container.to_owned(),
            policies: GoList(&chosen).to_string(),
            origin: if !job.is_empty() {
                "GitLab pipeline config"
            } else if !runner.0.is_empty() {
                "Runner config"
            } else {
                "Runner config (default)"
            },
            allowed: GoList(&allowed).to_string(),
        });
    }
    Ok(effective)
}

/// A container's image that the kubelet could not pull (`ErrImagePull`, `ImagePullBackOff`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullFailure {
    /// The container.
    pub container: String,
    /// Its image.
    pub image: String,
    /// The container's waiting message.
    pub message: String,
}

impl PullFailure {
    /// The job's failure reason text.
    pub fn reason(&self) -> String {
        format!(
            "container {}: cannot pull image {:?}: {}",
            self.container, self.image, self.message
        )
    }
}

/// What to do after a pull failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Delete the pod and create it again; write these lines to the job log first.
    Retry {
        /// gitlab-runner's warning (without the `WARNING: ` prefix).
        warning: String,
        /// gitlab-runner's info line.
        info: String,
    },
    /// No policy left: write the warning, then fail the job with the pull error.
    GiveUp {
        /// gitlab-runner's warning (without the `WARNING: ` prefix).
        warning: String,
    },
}

/// The pull attempts of one job: how many pulls of each container failed. The policy lists
/// themselves come from [`effective`], computed again for each
/// attempt from the same configuration and job.
#[derive(Clone, Debug)]
pub struct PullAttempts {
    failures: BTreeMap<String, usize>,
    attempt: usize,
}

impl Default for PullAttempts {
    fn default() -> Self {
        PullAttempts {
            failures: BTreeMap::new(),
            attempt: 1,
        }
    }
}

impl PullAttempts {
    /// The number of the current attempt (1 for the first pod).
    pub fn attempt(&self) -> usize {
        self.attempt
    }

    /// The policy `container` uses now, from its list; `None` once the list is exhausted.
    pub fn policy_for(&self, container: &str, list: &[Policy]) -> Option<Policy> {
        list.get(self.failures.get(container).copied().unwrap_or(0))
            .copied()
    }

    /// Records a failed pull (the container's list is in `lists`; a container without one
    /// ran with the cluster's default) and says whether another attempt follows.
    pub fn record_failure(
        &mut self,
        failure: &PullFailure,
        lists: &BTreeMap<String, Vec<Policy>>,
    ) -> AfterFailure {
        let default = [Policy::ClusterDefault];
        let list = lists
            .get(&failure.container)
            .map_or(&default[..], Vec::as_slice);
        let failed = self.policy_for(&failure.container, list);
        *self.failures.entry(failure.container.clone()).or_default() += 1;
        let warning = format!(
            "Failed to pull image {:?} for container {:?} with policy {:?}: image pull failed: {}",
            failure.image,
            failure.container,
            failed.map_or("", |p| p.kubernetes_name()),
            failure.message,
        );
        match self.policy_for(&failure.container, list) {
            Some(next) => {
                self.attempt += 1;
                AfterFailure::Retry {
                    info: format!(
                        "Attempt #{}: Trying {:?} pull policy for {:?} image for container {:?}",
                        self.attempt,
                        next.kubernetes_name(),
                        failure.image,
                        failure.container
                    ),
                    warning,
                }
            }
            None => AfterFailure::GiveUp { warning },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PullPolicy::{Always, IfNotPresent, Never};

    fn list(p: &[PullPolicy]) -> PullPolicies {
        PullPolicies(p.to_vec())
    }

    fn set(p: &[PullPolicy]) -> Vec<Policy> {
        p.iter().copied().map(Policy::Set).collect()
    }

    #[test]
    fn the_policy_order() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (job, runner, allowed, effective)
        let rows: Vec<(Vec<String>, PullPolicies, PullPolicies, Vec<Policy>)> = vec![
            // Nothing set: the cluster's default.
            (vec![], list(&[]), list(&[]), vec![Policy::ClusterDefault]),
            // The runner's list, in its order.
            (
                vec![],
                list(&[Always, IfNotPresent]),
                list(&[]),
                set(&[Always, IfNotPresent]),
            ),
            // The job's list wins, limited to the runner's when nothing else is allowed.
            (
                s(&["if-not-present", "always"]),
                list(&[Always, IfNotPresent]),
                list(&[]),
                set(&[IfNotPresent, Always]),
            ),
            (
                s(&["never", "always"]),
                list(&[Always, IfNotPresent]),
                list(&[]),
                set(&[Always]),
            ),
            // allowed_pull_policies filters, keeping the chosen order.
            (
                s(&["always", "never", "if-not-present"]),
                list(&[Always]),
                list(&[IfNotPresent, Always]),
                set(&[Always, IfNotPresent]),
            ),
            (
                vec![],
                list(&[Never, Always]),
                list(&[Always]),
                set(&[Always]),
            ),
        ];
        for (job, runner, allowed, want) in rows {
            assert_eq!(
                effective("build", &job, &runner, &allowed).unwrap(),
                want,
                "job {job:?}, runner {runner:?}, allowed {allowed:?}"
            );
        }
    }

    #[test]
    fn nothing_allowed_is_gitlab_runners_error() {
        let error =
            effective("build", &["never".into()], &list(&[Always]), &list(&[])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid pull policy for container \"build\": pull_policy ([Never]) defined in GitLab pipeline config is not one of the allowed_pull_policies ([Always]); set [runners.kubernetes] allowed_pull_policies or change the pull_policy"
        );
        // A job's policy with nothing configured: only the cluster's default is allowed.
        let error = effective("build", &["always".into()], &list(&[]), &list(&[])).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("pull_policy ([Always]) defined in GitLab pipeline config is not one of the allowed_pull_policies ([])"),
            "{error}"
        );
        let error = effective("build", &[], &list(&[Never]), &list(&[Always])).unwrap_err();
        assert!(
            error.to_string().contains("defined in Runner config is"),
            "{error}"
        );
        let error = effective("build", &[], &list(&[]), &list(&[Always])).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("pull_policy ([]) defined in Runner config (default)"),
            "{error}"
        );
        let error = effective("svc-0", &["sometimes".into()], &list(&[]), &list(&[])).unwrap_err();
        assert!(matches!(error, PullPolicyError::Unknown { .. }), "{error}");
    }

    fn failure(container: &str) -> PullFailure {
        PullFailure {
            container: container.into(),
            image: "ruby:3".into(),
            message: "registry unreachable".into(),
        }
    }

    #[test]
    fn a_failure_moves_its_container_to_the_next_policy() {
        let lists = BTreeMap::from([
            ("build".to_owned(), set(&[Always, IfNotPresent])),
            ("svc-0".to_owned(), set(&[Always])),
        ]);
        let mut attempts = PullAttempts::default();
        assert_eq!(attempts.attempt(), 1);
        assert_eq!(
            attempts.policy_for("build", &lists["build"]),
            Some(Policy::Set(Always))
        );
        assert_eq!(
            attempts.record_failure(&failure("build"), &lists),
            AfterFailure::Retry {
                warning: "Failed to pull image \"ruby:3\" for container \"build\" with policy \"Always\": image pull failed: registry unreachable".into(),
                info: "Attempt #2: Trying \"IfNotPresent\" pull policy for \"ruby:3\" image for container \"build\"".into(),
            }
        );
        assert_eq!(attempts.attempt(), 2);
        assert_eq!(
            attempts.policy_for("build", &lists["build"]),
            Some(Policy::Set(IfNotPresent))
        );
        // The other container keeps its own count.
        assert_eq!(
            attempts.policy_for("svc-0", &lists["svc-0"]),
            Some(Policy::Set(Always))
        );
        assert_eq!(
            attempts.record_failure(&failure("build"), &lists),
            AfterFailure::GiveUp {
                warning: "Failed to pull image \"ruby:3\" for container \"build\" with policy \"IfNotPresent\": image pull failed: registry unreachable".into(),
            }
        );
        assert_eq!(attempts.policy_for("build", &lists["build"]), None);
    }

    #[test]
    fn a_single_policy_gives_up_at_once() {
        let lists = BTreeMap::from([("build".to_owned(), set(&[Always]))]);
        let mut attempts = PullAttempts::default();
        assert!(matches!(
            attempts.record_failure(&failure("build"), &lists),
            AfterFailure::GiveUp { .. }
        ));
        // A container without a list ran with the cluster's default, once.
        let mut attempts = PullAttempts::default();
        match attempts.record_failure(&failure("init"), &lists) {
            AfterFailure::GiveUp { warning } => {
                assert!(warning.contains("with policy \"\""), "{warning}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_reason_names_image_container_and_message() {
        assert_eq!(
            failure("build").reason(),
            "container build: cannot pull image \"ruby:3\": registry unreachable"
        );
        assert_eq!(
            Policy::Set(IfNotPresent).image_pull_policy().as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(Policy::ClusterDefault.image_pull_policy(), None);
    }
}
