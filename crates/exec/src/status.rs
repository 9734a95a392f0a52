//! How GitLab decides whether a job runs and what a pipeline's status is, taken from
//! `gitlabhq/gitlabhq`: `Ci::PipelineProcessing::AtomicProcessingService` (a job waits until
//! the status of what it depends on is completed: the jobs it `needs`, else every job of the
//! earlier stages), its `StatusCollection` (an empty set counts as `success`),
//! `Gitlab::Ci::Status::Composite` (the status of a set of jobs; `lib/gitlab/ci/status/
//! composite.rb`), `Ci::ProcessBuildService#valid_statuses_for_build` (which composite status
//! lets a job of each `when` run; otherwise it is skipped) and `Ci::HasStatus` (a failed job
//! allowed to fail counts as `success_with_warnings`, a manual job allowed to fail that was
//! not played as `ignored`).

use crate::model::When;

/// A job's status in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Not processed yet (or never: waiting for a manual job that was not played).
    Created,
    /// Ready, waiting for a free slot.
    Pending,
    /// Its agent is running.
    Running,
    /// Passed.
    Success,
    /// Failed; `allowed` when `allow_failure` (or its `exit_codes`) accepted the failure.
    Failed {
        /// The failure does not fail the pipeline.
        allowed: bool,
    },
    /// Not run: what it waits for ended in a status its `when` does not run after.
    Skipped,
    /// A manual job that was not asked for.
    Manual {
        /// `allow_failure` (the default of manual jobs): it does not block later jobs.
        allowed: bool,
    },
}

/// What a set of jobs adds up to (`Gitlab::Ci::Status::Composite#status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Composite {
    Success,
    Failed,
    Skipped,
    Manual,
    Running,
    Created,
    Pending,
}

impl Composite {
    /// `Ci::HasStatus::COMPLETED_STATUSES` (success, failed, canceled, skipped).
    pub(crate) fn completed(self) -> bool {
        matches!(
            self,
            Composite::Success | Composite::Failed | Composite::Skipped
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Success,
    SuccessWithWarnings,
    Ignored,
    Failed,
    Skipped,
    Manual,
    Created,
    Pending,
    Running,
}

fn kind(status: JobStatus) -> Kind {
    match status {
        JobStatus::Created => Kind::Created,
        JobStatus::Pending => Kind::Pending,
        JobStatus::Running => Kind::Running,
        JobStatus::Success => Kind::Success,
        JobStatus::Failed { allowed: true } => Kind::SuccessWithWarnings,
        JobStatus::Failed { allowed: false } => Kind::Failed,
        JobStatus::Skipped => Kind::Skipped,
        JobStatus::Manual { allowed: true } => Kind::Ignored,
        JobStatus::Manual { allowed: false } => Kind::Manual,
    }
}

/// The composite status of `statuses`; `dag` for the jobs a job `needs`.
pub(crate) fn composite(statuses: impl IntoIterator<Item = JobStatus>, dag: bool) -> Composite {
    let set: std::collections::BTreeSet<Kind> = statuses.into_iter().map(kind).collect();
    if set.is_empty() {
        return Composite::Success;
    }
    let only = |kinds: &[Kind]| set.iter().all(|k| kinds.contains(k));
    let any = |kinds: &[Kind]| kinds.iter().any(|k| set.contains(k));
    use Kind::*;
    if dag && any(&[Skipped, Ignored]) {
        Composite::Skipped
    } else if dag && !only(&[Success, Failed, Skipped, SuccessWithWarnings]) {
        Composite::Pending
    } else if only(&[Skipped, Ignored]) {
        Composite::Skipped
    } else if only(&[Success, Skipped, SuccessWithWarnings, Ignored]) {
        Composite::Success
    } else if only(&[Created, SuccessWithWarnings, Ignored]) {
        Composite::Created
    } else if only(&[Pending, Created, Skipped, SuccessWithWarnings, Ignored]) {
        Composite::Pending
    } else if any(&[Running, Pending]) {
        Composite::Running
    } else if any(&[Manual]) {
        Composite::Manual
    } else if any(&[Created]) {
        Composite::Running
    } else {
        Composite::Failed
    }
}

/// Whether a job of `when` runs after `previous` (`valid_statuses_for_build`); `dag` when it
/// has `needs`.
pub(crate) fn runs_after(when: &When, dag: bool, previous: Composite) -> bool {
    match when {
        When::OnSuccess | When::Manual | When::Delayed { .. } => {
            previous == Composite::Success || (!dag && previous == Composite::Skipped)
        }
        When::OnFailure => previous == Composite::Failed,
        When::Always => matches!(
            previous,
            Composite::Success | Composite::Failed | Composite::Skipped
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    #[test]
    fn composites_follow_gitlab() {
        assert_eq!(composite([], false), Composite::Success);
        assert_eq!(composite([Success, Skipped], false), Composite::Success);
        assert_eq!(
            composite([Success, Failed { allowed: true }], false),
            Composite::Success
        );
        assert_eq!(
            composite([Success, Failed { allowed: false }], false),
            Composite::Failed
        );
        assert_eq!(
            composite([Skipped, Manual { allowed: true }], false),
            Composite::Skipped
        );
        assert_eq!(
            composite([Success, Manual { allowed: true }], false),
            Composite::Success
        );
        assert_eq!(
            composite([Success, Manual { allowed: false }], false),
            Composite::Manual
        );
        assert_eq!(composite([Success, Running], false), Composite::Running);
        assert_eq!(composite([Success, Created], false), Composite::Running);
        // A DAG job is skipped when one of its needs did not run.
        assert_eq!(composite([Success, Skipped], true), Composite::Skipped);
        assert_eq!(
            composite([Success, Manual { allowed: true }], true),
            Composite::Skipped
        );
        assert_eq!(composite([Success, Running], true), Composite::Pending);
        assert_eq!(
            composite([Failed { allowed: false }], true),
            Composite::Failed
        );
        assert!(!Composite::Manual.completed() && Composite::Skipped.completed());
    }

    #[test]
    fn when_decides_after_the_previous_status() {
        let delayed = When::Delayed {
            start_in: "1 minute".to_owned(),
        };
        for when in [&When::OnSuccess, &When::Manual, &delayed] {
            assert!(runs_after(when, false, Composite::Success));
            assert!(runs_after(when, false, Composite::Skipped));
            assert!(!runs_after(when, true, Composite::Skipped));
            assert!(!runs_after(when, false, Composite::Failed));
        }
        assert!(runs_after(&When::OnFailure, false, Composite::Failed));
        assert!(!runs_after(&When::OnFailure, false, Composite::Success));
        assert!(!runs_after(&When::OnFailure, false, Composite::Skipped));
        for previous in [Composite::Success, Composite::Failed, Composite::Skipped] {
            assert!(runs_after(&When::Always, true, previous));
        }
    }
}
