//! The caches of one job as the manager decided them: the final keys (expanded, sanitized,
//! with fallbacks) and where each archive is read from and written to. The agent holds no
//! cloud credential: a remote store is reached only through URLs the manager signed.

use std::path::PathBuf;

use podrunner_gitlab::Secret;
use serde::{Deserialize, Serialize};

/// One entry of the payload's `cache`, resolved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheEntry {
    /// Index of the payload's `cache` entry this resolves (paths, untracked, `when`).
    pub index: usize,
    /// The key after expansion and sanitation, as the job log shows it.
    pub key: String,
    /// Archives to try in order: the key, its `fallback_keys`, then `CACHE_FALLBACK_KEY`.
    /// Empty when the policy does not pull.
    pub restore: Vec<CacheObject>,
    /// Where to save the archive; `None` when the policy does not push.
    pub save: Option<CacheObject>,
    /// Lines for the job log about this cache (e.g. a sanitized key), each a warning.
    pub warnings: Vec<String>,
}

/// One archive of one key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheObject {
    /// The key this archive belongs to, for the log ("Checking cache for <key>...").
    pub key: String,
    /// Where the archive is.
    pub location: CacheLocation,
}

/// Where an archive is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheLocation {
    /// A file below the agent's `cache_dir` (no `[runners.cache]`): a relative path.
    Local(PathBuf),
    /// An object of a remote store, reached by a URL the manager signed: GET to restore,
    /// PUT to save, with these headers (e.g. `x-ms-blob-type: BlockBlob`).
    Remote {
        /// The signed URL: a bearer credential for one object, so never logged.
        url: Secret,
        /// Headers the signature covers or the store needs.
        headers: Vec<(String, String)>,
    },
}

impl Default for CacheLocation {
    fn default() -> Self {
        CacheLocation::Local(PathBuf::new())
    }
}

/// Cache settings of the runner that the agent applies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheSettings {
    /// `MaxUploadedArchiveSize` in bytes; 0 is no limit.
    pub max_uploaded_archive_size: u64,
}
