//! The job's caches as the plan says (`crate::cache_plan`): restore tries each archive of an
//! entry in order, save archives to a file and stores it. A remote archive is reached only
//! through the URLs the manager signed (`crate::transfer`); every fault is a warning in the
//! job log and the job goes on, as gitlab-runner's `cache-extractor`/`cache-archiver` do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use podrunner_gitlab::JobPayload;

use crate::cache_plan::{CacheEntry, CacheLocation, CacheObject};
use crate::spec::AgentSpec;
use crate::transfer::{self, TransferError, TransferOptions};
use crate::variables::Variables;

/// gitlab-runner's `DefaultCacheRequestTimeout` (`common/consts.go`): 10 minutes.
const DEFAULT_REQUEST_TIMEOUT_MINUTES: u64 = 10;

/// Where the cache code writes the job log.
pub(crate) trait CacheLog {
    /// A plain line.
    fn line(&mut self, text: &str);
    /// A warning line.
    fn warning(&mut self, text: &str);
}

/// What the cache code needs of the job.
pub(crate) struct CacheJob<'a> {
    /// The spec (cache directory, plan, settings, TLS of the GitLab connection).
    pub spec: &'a AgentSpec,
    /// The payload (paths, untracked, `when` of each entry).
    pub payload: &'a JobPayload,
    /// The job's variables (paths, `CACHE_REQUEST_TIMEOUT`).
    pub variables: &'a Variables,
    /// The project directory archives are taken from and extracted into.
    pub project_dir: &'a Path,
    /// The job's temporary directory: downloaded and remote archives are made there.
    pub temp_dir: &'a Path,
}

impl CacheJob<'_> {
    /// The plan: the manager's, or, for a spec that carries none while the payload has
    /// caches (a spec written by hand or by an older manager), the local plan.
    pub(crate) fn entries(&self) -> Vec<CacheEntry> {
        if self.spec.caches.is_empty() {
            crate::cache_plan::plan(self.payload, self.variables)
        } else {
            self.spec.caches.clone()
        }
    }

    fn options(&self) -> TransferOptions {
        // `CACHE_REQUEST_TIMEOUT` in minutes (`Build.GetCacheRequestTimeout`, `common/build.go`):
        // a value that is not a positive number is the default.
        let minutes = self
            .variables
            .get("CACHE_REQUEST_TIMEOUT")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|m| *m > 0)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MINUTES);
        TransferOptions {
            timeout: Duration::from_secs(minutes * 60),
        }
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        let tls = podrunner_gitlab::client::tls_config(&podrunner_gitlab::ClientOptions {
            url: self.spec.gitlab.url.clone(),
            tls_ca_file: self.spec.gitlab.tls_ca_file.clone(),
            tls_cert_file: None,
            tls_key_file: None,
            podrunner_version: String::new(),
        })
        .map_err(|e| e.to_string())?;
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(30))
            .hickory_dns(true)
            .build()
            .map_err(|e| e.to_string())
    }

    fn local(&self, relative: &Path) -> PathBuf {
        self.spec.cache_dir.join(relative)
    }

    fn temp_file(&self, what: &str) -> Result<tempfile::TempPath, String> {
        std::fs::create_dir_all(self.temp_dir)
            .and_then(|_| {
                tempfile::Builder::new()
                    .prefix(what)
                    .suffix(".zip")
                    .tempfile_in(self.temp_dir)
            })
            .map(|f| f.into_temp_path())
            .map_err(|e| format!("{}: {e}", self.temp_dir.display()))
    }
}

/// Whether any entry would show the "Restoring cache" section.
pub(crate) fn restores(entries: &[CacheEntry]) -> bool {
    entries.iter().any(|e| e.pull || e.skipped.is_some())
}

/// The URL without its query (the signature): what the log may show.
fn shown(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_owned()
}

/// Restores each entry from the first of its archives that extracts.
pub(crate) async fn restore(job: &CacheJob<'_>, entries: &[CacheEntry], log: &mut dyn CacheLog) {
    let options = job.options();
    let mut client = None;
    for entry in entries {
        for warning in &entry.warnings {
            log.warning(warning);
        }
        if let Some(why) = &entry.skipped {
            log.line(&format!("Skipping cache extraction due to {why}"));
            continue;
        }
        if !entry.pull {
            log.line(&format!(
                "Not downloading cache {} due to policy",
                entry.key
            ));
            continue;
        }
        for object in &entry.restore {
            log.line(&format!("Checking cache for {}...", object.key));
            match restore_one(job, object, options, &mut client, log).await {
                Ok(()) => {
                    log.line("Successfully extracted cache");
                    break;
                }
                Err(why) => {
                    log.warning(&why);
                    log.warning("Failed to extract cache");
                }
            }
        }
    }
}

async fn restore_one(
    job: &CacheJob<'_>,
    object: &CacheObject,
    options: TransferOptions,
    client: &mut Option<reqwest::Client>,
    log: &mut dyn CacheLog,
) -> Result<(), String> {
    let (archive, _temp) = match &object.location {
        CacheLocation::Local(relative) => {
            let file = job.local(relative);
            if !file.is_file() {
                return Err(format!("{}: file does not exist", file.display()));
            }
            (file, None)
        }
        CacheLocation::Remote { url, headers } => {
            let http = match client {
                Some(http) => http.clone(),
                None => client.insert(job.client()?).clone(),
            };
            let temp = job.temp_file("cache-download-")?;
            log.line(&format!("Downloading cache from {}", shown(url.expose())));
            match transfer::download(&http, url.expose(), headers, &temp, options).await {
                Ok(_) => {}
                Err(TransferError::NotFound) => {
                    return Err(format!("{}: not found", shown(url.expose())));
                }
                Err(e) => return Err(format!("Cannot download cache: {e}")),
            }
            (temp.to_path_buf(), Some(temp))
        }
    };
    let root = job.project_dir.to_owned();
    // The extractor verifies the whole archive before it writes into the project: a corrupt
    // or truncated archive leaves nothing behind.
    tokio::task::spawn_blocking(move || crate::files::extract_zip(&archive, &root))
        .await
        .map_err(|e| e.to_string())?
        .map(|_| ())
        .map_err(|e| format!("Failed to extract cache: {e}"))
}

/// Whether an entry's `when` saves for this outcome (`on_success` when empty).
fn saves(when: &str, success: bool) -> bool {
    match when {
        "always" => true,
        "on_failure" => !success,
        _ => success,
    }
}

/// The entries the save section handles for this outcome.
pub(crate) fn to_save<'a>(
    job: &CacheJob<'_>,
    entries: &'a [CacheEntry],
    success: bool,
) -> Vec<&'a CacheEntry> {
    entries
        .iter()
        .filter(|e| {
            let when = job
                .payload
                .job
                .cache
                .get(e.index)
                .map_or("", |c| c.when.as_str());
            saves(when, success)
        })
        .collect()
}

/// Archives and stores each entry that pushes.
pub(crate) async fn save(job: &CacheJob<'_>, entries: &[&CacheEntry], log: &mut dyn CacheLog) {
    let options = job.options();
    for entry in entries {
        if let Some(why) = &entry.skipped {
            log.line(&format!("Skipping cache archiving due to {why}"));
            continue;
        }
        let Some(save) = entry.save.as_ref().filter(|_| entry.push) else {
            log.line(&format!("Not uploading cache {} due to policy", entry.key));
            continue;
        };
        log.line(&format!("Creating cache {}...", entry.key));
        match save_one(job, entry, save, options, log).await {
            Ok(Some(note)) => log.warning(&note),
            Ok(None) => log.line("Created cache"),
            Err(why) => log.warning(&format!("Failed to create cache: {why}")),
        }
    }
}

/// Archives one entry; `Ok(Some(why))` when the archive was made but not stored.
async fn save_one(
    job: &CacheJob<'_>,
    entry: &CacheEntry,
    save: &CacheObject,
    options: TransferOptions,
    log: &mut dyn CacheLog,
) -> Result<Option<String>, String> {
    let Some(cache) = job.payload.job.cache.get(entry.index) else {
        return Err(format!(
            "the plan names cache entry {} the job does not have",
            entry.index
        ));
    };
    let untracked = if cache.untracked {
        crate::files::untracked(job.project_dir)
    } else {
        Vec::new()
    };
    let paths: Vec<String> = cache
        .paths
        .iter()
        .map(|p| job.variables.expand(p))
        .collect();
    let collected = crate::files::collect(job.project_dir, &paths, &[], &untracked)
        .map_err(|e| e.to_string())?;
    for (pattern, count) in &collected.per_pattern {
        log.line(&format!(
            "{pattern}: found {count} matching artifact files and directories"
        ));
    }
    let root = job.project_dir.to_owned();
    let entries = collected.entries;
    // `CACHE_COMPRESSION_LEVEL`, read as gitlab-runner's cache archiver reads it.
    let level = job.variables.get("CACHE_COMPRESSION_LEVEL").unwrap_or("");
    let zip = crate::files::ZipOptions {
        level: crate::files::CompressionLevel::from_name(level).unwrap_or_else(|e| {
            log.warning(&e.to_string());
            crate::files::CompressionLevel::Default
        }),
    };
    match &save.location {
        CacheLocation::Local(relative) => {
            let file = job.local(relative);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            let partial = file.with_extension("zip.partial");
            let target = partial.clone();
            tokio::task::spawn_blocking(move || {
                crate::files::write_zip_with(&root, &entries, &target, &zip)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            std::fs::rename(&partial, &file).map_err(|e| format!("{}: {e}", file.display()))?;
            Ok(None)
        }
        CacheLocation::Remote { url, headers } => {
            let temp = job.temp_file("cache-upload-")?;
            let target = temp.to_path_buf();
            tokio::task::spawn_blocking(move || {
                crate::files::write_zip_with(&root, &entries, &target, &zip)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            let size = std::fs::metadata(&temp)
                .map_err(|e| format!("{}: {e}", temp.display()))?
                .len();
            let max = job.spec.cache_settings.max_uploaded_archive_size;
            if max > 0 && size > max {
                return Ok(Some(format!(
                    "Cache archive of {size} bytes exceeds MaxUploadedArchiveSize ({max} bytes): not uploaded"
                )));
            }
            log.line(&format!("Uploading cache.zip to {}", shown(url.expose())));
            let http = job.client()?;
            transfer::upload(&http, url.expose(), headers, &temp, options)
                .await
                .map_err(|e| format!("cannot upload: {e}"))?;
            Ok(None)
        }
    }
}
