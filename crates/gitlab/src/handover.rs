//! The agent's side of the hand-over of a job's log from the manager (`docs/architecture.md`,
//! "The job log while the pod starts"): GitLab appends a trace PATCH only at the exact end of
//! the log, so while the manager may still be writing, the agent *claims* the log with a patch
//! whose end the manager can never produce, and learns the manager's late lines from a live
//! copy of its prelude.
//!
//! The manager only ever sends whole lines of at least two bytes, each already in its prelude
//! (the pod annotation) before it is sent, each patch starting where GitLab said its log
//! ended; so every size its patches leave the log at is the end of a line of the prelude.
//! The claim is the prelude bytes GitLab lacks plus exactly **one** byte of the agent's own
//! output: it ends one byte past the end of a prelude line, which no manager patch can.
//! Hence a 416 whose size is the claim's end means "the claim landed" (its answer was lost),
//! and once the claim has landed the manager's patches all get 416s (it stops at the first).

use std::sync::Arc;
use std::time::Duration;

use crate::log::TraceStore;

/// Reads the manager's prelude as the pod has it now (the decoded annotation), if it can.
pub type LivePrelude = Arc<dyn Fn() -> Option<Vec<u8>> + Send + Sync>;

/// What the agent knows of the manager's part of the log when it starts.
#[derive(Clone)]
pub struct TraceHandover {
    /// The prelude the agent's trace starts with: the annotation as the kubelet resolved it
    /// when it created the build container.
    pub prelude_len: u64,
    /// The annotation as the kubelet refreshes it (a downward-API volume file).
    pub live: Option<LivePrelude>,
    /// How long to wait for `live` to show lines the manager sent after the snapshot.
    pub catch_up: Duration,
}

impl std::fmt::Debug for TraceHandover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceHandover")
            .field("prelude_len", &self.prelude_len)
            .field("live", &self.live.is_some())
            .field("catch_up", &self.catch_up)
            .finish()
    }
}

/// Where the agent is in the hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Join {
    /// The agent owns the log: only it writes.
    Owner,
    /// The manager may still write; the next patch is the claim.
    Claiming,
    /// GitLab has `size` bytes, more than the agent knows of the prelude: it waits (until
    /// `deadline`) for the live prelude to show them.
    CatchingUp {
        /// GitLab's size.
        size: u64,
        /// When to stop waiting.
        deadline: tokio::time::Instant,
    },
}

/// What the claim's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimResult {
    /// The claim landed: the agent owns the log from this offset.
    Claimed(u64),
    /// GitLab has fewer bytes than the prelude the agent knows: claim again from there.
    Behind(u64),
    /// GitLab has prelude bytes the agent does not know yet.
    Ahead(u64),
}

/// Reads a 416's size after the claim `[start, claim_end)`, where `claim_end` is one past
/// the prelude the agent knows (`prelude_end`).
pub(crate) fn after_claim(prelude_end: u64, size: u64) -> ClaimResult {
    let claim_end = prelude_end + 1;
    if size == claim_end {
        ClaimResult::Claimed(size)
    } else if size <= prelude_end {
        ClaimResult::Behind(size)
    } else {
        ClaimResult::Ahead(size)
    }
}

/// The manager's bytes that are in GitLab's log but not in the agent's trace store: they sit
/// after the first `at` bytes of the store (the snapshot prelude), `known` then `unknown`
/// bytes long (unknown: the live prelude did not show them in time).
#[derive(Debug, Clone, Default)]
pub(crate) struct Gap {
    pub(crate) at: u64,
    pub(crate) known: Vec<u8>,
    pub(crate) unknown: u64,
}

impl Gap {
    /// Bytes GitLab has that the store lacks.
    pub(crate) fn len(&self) -> u64 {
        self.known.len() as u64 + self.unknown
    }

    /// The end of the prelude as GitLab sees the log.
    pub(crate) fn prelude_end(&self) -> u64 {
        self.at + self.len()
    }

    /// Up to `max` bytes of the log as GitLab sees it, from `offset`. Stops at unknown bytes.
    pub(crate) fn read(
        &self,
        store: &TraceStore,
        mut offset: u64,
        max: usize,
    ) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < max {
            let want = max - out.len();
            let part = if offset < self.at {
                let n = ((self.at - offset) as usize).min(want);
                store.read(offset, n)?
            } else if offset < self.at + self.known.len() as u64 {
                let from = (offset - self.at) as usize;
                let n = (self.known.len() - from).min(want);
                self.known[from..from + n].to_vec()
            } else if offset < self.prelude_end() {
                break;
            } else {
                store.read(offset - self.len(), want)?
            };
            if part.is_empty() {
                break;
            }
            offset += part.len() as u64;
            out.extend_from_slice(&part);
        }
        Ok(out)
    }

    /// `crc32:` of the log as GitLab has it, when every byte of it is known.
    pub(crate) fn checksum(&self, store: &TraceStore) -> std::io::Result<Option<String>> {
        if self.unknown > 0 {
            return Ok(None);
        }
        let mut crc = crc32fast::Hasher::new();
        let mut offset = 0;
        loop {
            let part = self.read(store, offset, 1 << 20)?;
            if part.is_empty() {
                break;
            }
            crc.update(&part);
            offset += part.len() as u64;
        }
        Ok(Some(format!("crc32:{:08x}", crc.finalize())))
    }

    /// Takes what `live` adds to the prelude GitLab has at least `size` bytes of, when `live`
    /// extends the prelude the agent knows and covers `size`.
    pub(crate) fn adopt(
        &mut self,
        store: &TraceStore,
        live: &[u8],
        size: u64,
    ) -> std::io::Result<bool> {
        let end = self.prelude_end();
        if (live.len() as u64) < size || (live.len() as u64) < end || self.unknown > 0 {
            return Ok(false);
        }
        let mut known = store.read(0, self.at as usize)?;
        known.extend_from_slice(&self.known);
        if live[..end as usize] != known[..] {
            return Ok(false);
        }
        self.known.extend_from_slice(&live[end as usize..]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(bytes: &[u8]) -> TraceStore {
        let mut store = TraceStore::new(1 << 20);
        store.append(bytes).unwrap();
        store
    }

    #[test]
    fn a_size_one_past_the_prelude_is_the_claim_and_nothing_else() {
        assert_eq!(after_claim(10, 11), ClaimResult::Claimed(11));
        assert_eq!(after_claim(10, 10), ClaimResult::Behind(10));
        assert_eq!(after_claim(10, 4), ClaimResult::Behind(4));
        assert_eq!(after_claim(10, 12), ClaimResult::Ahead(12));
    }

    #[test]
    fn the_gap_sits_between_the_snapshot_and_the_agents_output() {
        let store = store(b"p1\nOWN");
        let mut gap = Gap {
            at: 3,
            ..Gap::default()
        };
        assert!(!gap.adopt(&store, b"p1\n", 6).unwrap(), "does not cover 6");
        assert!(
            !gap.adopt(&store, b"xx\np2\n", 6).unwrap(),
            "not an extension"
        );
        assert!(gap.adopt(&store, b"p1\np2\n", 6).unwrap());
        assert_eq!(gap.read(&store, 0, 100).unwrap(), b"p1\np2\nOWN");
        assert_eq!(gap.read(&store, 4, 3).unwrap(), b"2\nO");
        assert_eq!(
            gap.checksum(&store).unwrap().unwrap(),
            format!("crc32:{:08x}", crc32fast::hash(b"p1\np2\nOWN"))
        );
        gap.unknown = 2;
        assert_eq!(gap.checksum(&store).unwrap(), None);
        assert_eq!(gap.read(&store, 0, 100).unwrap(), b"p1\np2\n");
        assert_eq!(gap.read(&store, 8, 100).unwrap(), b"OWN");
    }
}
