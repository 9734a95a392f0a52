//! A watch history that is compacted, and watch outages.
//!
//! - The API server's watch cache keeps a window of recent events
//!   (`staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go`,
//!   `getAllEventsSinceLocked`): a watch from a resourceVersion older than the window
//!   (`resourceVersion < oldest-1`) fails with `NewResourceExpired("too old resource version:
//!   %d (%d)", resourceVersion, oldest-1)`, delivered as the one `ERROR` event of a watch
//!   stream (`cacher.go` `newErrWatcher`): a 410 `Expired` Status. The client must list again;
//!   what was deleted in the gap is simply missing from that list. Tests compact the history
//!   with [`super::KubernetesStandIn::compact_watch_history`] (all events so far leave the
//!   window, as after etcd compaction and a busy watch cache).
//! - A watch outage ([`super::KubernetesStandIn::watch_outage`]) ends every open watch stream
//!   and answers new watch requests 503 until it is over, as an API server behind a load
//!   balancer does while it restarts. The stand-in invents the 503's text; upstream has no
//!   single message for it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Shared;

/// The history window and the outage switch.
#[derive(Default)]
pub(super) struct WatchHistory {
    /// Events at or below this resourceVersion have left the window (0: nothing has).
    compacted_to: u64,
    /// Whether watches are refused.
    outage: bool,
    /// Bumped to end every open watch stream.
    ended: tokio::sync::watch::Sender<u64>,
}

/// What a watch request from `since` gets instead of a stream, if anything: a 503 during an
/// outage, or a stream holding only the 410 `Expired` error when `since` is too old.
pub(super) fn refuse(shared: &Shared, since: Option<u64>) -> Option<Response> {
    let inner = shared.lock();
    if inner.watch_history.outage {
        return Some(super::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the stand-in's watch outage: the API server is not serving watches",
        ));
    }
    let compacted_to = inner.watch_history.compacted_to;
    let since = since?;
    if since >= compacted_to {
        return None;
    }
    let gone = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: {since} ({compacted_to})"),
        "reason": "Expired", "code": 410,
    }});
    let mut body = serde_json::to_vec(&gone).unwrap_or_default();
    body.push(b'\n');
    Some(([("content-type", "application/json")], body).into_response())
}

/// A receiver that changes when every open watch stream must end.
pub(super) fn ended(shared: &Shared) -> tokio::sync::watch::Receiver<u64> {
    shared.lock().watch_history.ended.subscribe()
}

/// Ends a watch outage when dropped.
pub struct WatchOutage {
    shared: Shared,
}

impl Drop for WatchOutage {
    fn drop(&mut self) {
        self.shared.lock().watch_history.outage = false;
    }
}

impl super::KubernetesStandIn {
    /// Drops every event so far from the watch history: a watch from an earlier
    /// resourceVersion gets 410 `Expired` and its client must list again.
    pub fn compact_watch_history(&self) {
        let mut inner = self.shared.lock();
        inner.watch_history.compacted_to = inner.resource_version;
        inner.history.clear();
    }

    /// Ends every open watch and refuses new ones until the returned guard is dropped.
    pub fn watch_outage(&self) -> WatchOutage {
        let inner = &mut *self.shared.lock();
        inner.watch_history.outage = true;
        inner.watch_history.ended.send_modify(|n| *n += 1);
        WatchOutage {
            shared: self.shared.clone(),
        }
    }
}
