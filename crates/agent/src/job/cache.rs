//! The cache stages, around [`crate::cache`].

use podrunner_gitlab::log;

use super::context::{Job, Writers};

/// The job's side of the cache code, borrowing only the fields it reads (so the log can be
/// borrowed mutably next to it).
macro_rules! cache_job {
    ($job:expr) => {
        crate::cache::CacheJob {
            spec: &$job.spec,
            payload: &$job.spec.job,
            variables: &$job.variables,
            project_dir: &$job.project_dir,
            temp_dir: &$job.temp_dir,
        }
    };
}

impl crate::cache::CacheLog for Writers {
    fn line(&mut self, text: &str) {
        Writers::line(self, text);
    }

    fn warning(&mut self, text: &str) {
        self.raw(&log::warning_line(text));
    }
}

impl Job {
    pub(super) async fn restore_cache(&mut self) {
        let entries = cache_job!(self).entries();
        if !crate::cache::restores(&entries) {
            return;
        }
        self.section_start("restore_cache", "Restoring cache");
        crate::cache::restore(&cache_job!(self), &entries, &mut self.out).await;
        self.section_end("restore_cache");
    }

    pub(super) async fn archive_cache(&mut self, success: bool) {
        let entries = cache_job!(self).entries();
        let saved: Vec<_> = crate::cache::to_save(&cache_job!(self), &entries, success)
            .into_iter()
            .cloned()
            .collect();
        if saved.is_empty() {
            return;
        }
        let (stage, description) = if success {
            ("archive_cache", "Saving cache for successful job")
        } else {
            ("archive_cache_on_failure", "Saving cache for failed job")
        };
        self.section_start(stage, description);
        let saved: Vec<_> = saved.iter().collect();
        crate::cache::save(&cache_job!(self), &saved, &mut self.out).await;
        self.section_end(stage);
    }
}
