//! Which manager owns which job pods: one `coordination.k8s.io/v1` Lease per manager process
//! in each job namespace, named after its system ID and renewed while it lives (and while it
//! drains). Another manager may take a manager's pods over only once that Lease expired, and
//! only by winning a compare-and-swap on the Lease's `resourceVersion`.
//!
//! Expiry is judged the way client-go's leader election judges it
//! (`staging/src/k8s.io/client-go/tools/leaderelection/leaderelection.go`,
//! `tryAcquireOrRenew`, `isLeaseValid`): a Lease is expired when the observer has seen the same
//! record (here: the same `resourceVersion`) for `leaseDurationSeconds` by its *own* clock, so
//! clocks that disagree between nodes cannot make a live manager look dead; a Lease with no
//! holder is free at once. The update is a PUT carrying the `resourceVersion` read: the API
//! server answers 409 Conflict when anyone wrote the Lease in between (Leases do not allow
//! unconditional updates: `pkg/registry/coordination/lease/strategy.go`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use podrunner_manager::Event;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::plan::MANAGER_LABEL;

/// The annotation on a job pod and its Secrets naming the Lease of the manager that owns them.
/// Objects without it (made by a podrunner without Leases) are only ever adopted or swept by a
/// manager with the same system ID.
pub const LEASE_ANNOTATION: &str = "podrunner.io/lease";

/// The label every manager Lease carries, so that managers find each other's Leases.
pub const LEASE_LABEL: &str = "app.kubernetes.io/managed-by";

/// The value of [`LEASE_LABEL`].
pub const LEASE_LABEL_VALUE: &str = "podrunner";

/// How long a Lease lasts without renewal, by default: long enough that a manager survives
/// three failed renewals in a row (an API server hiccup, a throttled node) before anyone takes
/// its jobs, short enough that a dead manager's pods are cleaned up within about a minute.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(60);

/// How a manager keeps its Leases.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// `leaseDurationSeconds`: how long without renewal until others may take over.
    pub duration: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            duration: DEFAULT_LEASE_DURATION,
        }
    }
}

impl LeaseSettings {
    /// How often the Lease is renewed and other Leases are looked at: a quarter of the
    /// duration (at least a second), so three renewals may fail before it expires.
    pub fn renew_every(&self) -> Duration {
        (self.duration / 4).max(Duration::from_secs(1))
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// The Lease name of a system ID: `podrunner-` and the ID lowercased with `-` for `_` (a
/// Lease name is a lowercase DNS subdomain), plus, when the ID has capitals (random `r_` IDs),
/// 8 hex digits of a hash of the exact ID so that IDs differing only in case do not share one.
pub fn lease_name(system_id: &str) -> String {
    let lower = system_id.to_ascii_lowercase().replace('_', "-");
    if system_id.bytes().any(|b| b.is_ascii_uppercase()) {
        // FNV-1a: stable across builds and platforms.
        let hash = system_id.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        format!("podrunner-{lower}-{hash:08x}")
    } else {
        format!("podrunner-{lower}")
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// The system ID whose pods a Lease stands for (its [`MANAGER_LABEL`]).
pub fn owner_of(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGER_LABEL))
        .map(String::as_str)
}

/// What became of an attempt to take a Lease.
#[derive(Debug)]
pub enum Taken {
    /// This manager holds it now (the Lease as written).
    Won(Box<Lease>),
    /// Someone else wrote it first (409).
    Lost,
}

/// Takes `lease` (as read) for `holder`: a PUT with its `resourceVersion`, so exactly one of
/// the managers trying wins and the others get 409.
pub async fn take(api: &Api<Lease>, lease: &Lease, holder: &str) -> Result<Taken, kube::Error> {
    let mut taken = lease.clone();
    let spec = taken.spec.get_or_insert_default();
    spec.holder_identity = Some(holder.to_owned());
    spec.acquire_time = Some(now());
    spec.renew_time = Some(now());
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    let name = lease.metadata.name.clone().unwrap_or_default();
    match api.replace(&name, &PostParams::default(), &taken).await {
        Ok(written) => Ok(Taken::Won(Box::new(written))),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Taken::Lost),
        Err(e) => Err(e),
    }
}

/// What a manager has seen of others' Leases: each record and when it first saw it.
#[derive(Debug, Default)]
pub struct Observed {
    seen: HashMap<String, (String, Instant)>,
}

impl Observed {
    /// Whether `lease` is expired: free (no holder), or unchanged for its whole duration
    /// since this observer first saw this record.
    pub fn expired(&mut self, lease: &Lease, now: Instant) -> bool {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        if spec
            .holder_identity
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        {
            return true;
        }
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(1) as u64);
        let entry = self.seen.entry(name).or_insert((version.clone(), now));
        if entry.0 != version {
            *entry = (version, now);
        }
        now.duration_since(entry.1) >= duration
    }

    /// Forgets Leases no longer listed.
    pub fn retain(&mut self, listed: &std::collections::HashSet<String>) {
        self.seen.retain(|name, _| listed.contains(name));
    }
}

/// This manager's own Leases, one per namespace it runs jobs in, each renewed by a task of its
/// own until the executor is dropped (so a draining manager renews until its last job ended).
pub struct OwnLeases {
    client: kube::Client,
    system_id: String,
    settings: LeaseSettings,
    /// Namespaces where the Lease is held (`true`) or could not be made (`false`).
    held: tokio::sync::Mutex<HashMap<String, bool>>,
    /// The last written Lease of each held namespace, for renewals and release.
    current: Arc<Mutex<HashMap<String, Lease>>>,
    cancel: CancellationToken,
}

impl OwnLeases {
    /// Leases of manager `system_id`; their renewals stop when `cancel` fires.
    pub fn new(
        client: kube::Client,
        system_id: String,
        settings: LeaseSettings,
        cancel: CancellationToken,
    ) -> Self {
        OwnLeases {
            client,
            system_id,
            settings,
            held: tokio::sync::Mutex::new(HashMap::new()),
            current: Arc::new(Mutex::new(HashMap::new())),
            cancel,
        }
    }

    /// The settings.
    pub fn settings(&self) -> LeaseSettings {
        self.settings
    }

    /// The name of this manager's Lease.
    pub fn name(&self) -> String {
        lease_name(&self.system_id)
    }

    /// Makes sure this manager holds its Lease in `namespace` (made, or taken back after a
    /// restart of the same pod, on first use; renewed from then on). Returns whether it does:
    /// without it (no RBAC for Leases) job pods are made without [`LEASE_ANNOTATION`], so no
    /// other manager ever takes them.
    pub async fn ensure(&self, namespace: &str) -> bool {
        let mut held = self.held.lock().await;
        if let Some(known) = held.get(namespace) {
            return *known;
        }
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let result = self.acquire(&api).await;
        let ok = match result {
            Ok(lease) => {
                self.current
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(namespace.to_owned(), lease);
                tokio::spawn(renew_forever(
                    api,
                    namespace.to_owned(),
                    self.current.clone(),
                    self.settings,
                    self.cancel.clone(),
                ));
                true
            }
            Err(e) => {
                Event::KubernetesProblem {
                    doing: format!(
                        "making this manager's Lease {} in {namespace} (its job pods are not taken over by other managers if it dies; grant get, create, update, list and delete on leases.coordination.k8s.io)",
                        self.name()
                    ),
                    error: e,
                }
                .emit();
                false
            }
        };
        held.insert(namespace.to_owned(), ok);
        ok
    }

    /// Creates the Lease, or takes it back when it exists: it bears this system ID, so it is
    /// this pod's own from before a container restart (or a Lease that someone took over and
    /// has not deleted yet: then taking it back is the same compare-and-swap).
    async fn acquire(&self, api: &Api<Lease>) -> Result<Lease, String> {
        let text = |e: kube::Error| crate::executor::api_error(&e);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name()),
                labels: Some(BTreeMap::from([
                    (LEASE_LABEL.to_owned(), LEASE_LABEL_VALUE.to_owned()),
                    (MANAGER_LABEL.to_owned(), self.system_id.clone()),
                ])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.system_id.clone()),
                lease_duration_seconds: Some(self.settings.duration_seconds()),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        match api.create(&PostParams::default(), &lease).await {
            Ok(created) => return Ok(created),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(text(e)),
        }
        for _ in 0..3 {
            let mut existing = api.get(&self.name()).await.map_err(text)?;
            let spec = existing.spec.get_or_insert_default();
            spec.lease_duration_seconds = Some(self.settings.duration_seconds());
            match take(api, &existing, &self.system_id).await.map_err(text)? {
                Taken::Won(lease) => return Ok(*lease),
                Taken::Lost => continue,
            }
        }
        Err("the Lease kept changing while this manager took it back (409 three times)".into())
    }

    /// Gives up every Lease held: deleted (with the `resourceVersion` last written as a
    /// precondition), so that nobody waits a Lease duration for a manager that has no pods.
    pub async fn release(&self) {
        let current: Vec<(String, Lease)> = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        self.cancel.cancel();
        for (namespace, lease) in current {
            let api: Api<Lease> = Api::namespaced(self.client.clone(), &namespace);
            if let Err(e) = delete(&api, &lease).await {
                Event::KubernetesProblem {
                    doing: format!(
                        "deleting this manager's Lease {} in {namespace} at exit (it expires by itself)",
                        self.name()
                    ),
                    error: crate::executor::api_error(&e),
                }
                .emit();
            }
        }
    }
}

/// Deletes `lease` if it is still the version given; a Lease already gone is fine.
pub async fn delete(api: &Api<Lease>, lease: &Lease) -> Result<(), kube::Error> {
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: lease.metadata.resource_version.clone(),
            uid: None,
        }),
        ..Default::default()
    };
    let name = lease.metadata.name.clone().unwrap_or_default();
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renews the Lease of `namespace` every [`LeaseSettings::renew_every`] until `cancel`.
async fn renew_forever(
    api: Api<Lease>,
    namespace: String,
    current: Arc<Mutex<HashMap<String, Lease>>>,
    settings: LeaseSettings,
    cancel: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(settings.renew_every()) => {}
        }
        let Some(mut lease) = current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&namespace)
            .cloned()
        else {
            return;
        };
        let name = lease.metadata.name.clone().unwrap_or_default();
        lease.spec.get_or_insert_default().renew_time = Some(now());
        match api.replace(&name, &PostParams::default(), &lease).await {
            Ok(written) => {
                failing = false;
                if cancel.is_cancelled() {
                    return;
                }
                current
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(namespace.clone(), written);
            }
            Err(e) => {
                // Read again: a 409 is either this manager's own write whose answer was
                // lost, or a taker.
                if !failing || matches!(&e, kube::Error::Api(s) if s.code == 409) {
                    Event::KubernetesProblem {
                        doing: format!("renewing this manager's Lease {name} in {namespace}"),
                        error: crate::executor::api_error(&e),
                    }
                    .emit();
                }
                failing = true;
                let me = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
                if let Ok(fresh) = api.get(&name).await {
                    let holder = fresh.spec.as_ref().and_then(|s| s.holder_identity.clone());
                    if holder != me {
                        // Taken: its pods are the taker's now. Fighting back would have two
                        // managers follow them; this one stops renewing instead.
                        Event::KubernetesProblem {
                            doing: format!("renewing this manager's Lease {name} in {namespace}"),
                            error: format!(
                                "manager {} took it over after renewals failed for a whole lease duration; its pods are followed there now",
                                holder.unwrap_or_default()
                            ),
                        }
                        .emit();
                        return;
                    }
                    current
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(namespace.clone(), fresh);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(version: &str, holder: Option<&str>, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("podrunner-s-0123456789ab".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn names_are_dns_subdomains_and_distinct_per_id() {
        assert_eq!(lease_name("s_0123456789ab"), "podrunner-s-0123456789ab");
        let (a, b) = (lease_name("r_AbCdEfGhIjKl"), lease_name("r_aBcDeFgHiJkL"));
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                "{name}"
            );
        }
    }

    /// Expiry is measured on the observer's clock from the first sight of a record; any new
    /// record restarts it; a Lease without holder is free at once.
    #[test]
    fn expiry_is_observed_not_read_from_the_holders_clock() {
        let mut observed = Observed::default();
        let start = Instant::now();
        let s = Duration::from_secs(1);
        assert!(!observed.expired(&lease("1", Some("s_a"), 3), start));
        assert!(!observed.expired(&lease("1", Some("s_a"), 3), start + 2 * s));
        // Renewed: the clock starts again.
        assert!(!observed.expired(&lease("2", Some("s_a"), 3), start + 2 * s));
        assert!(!observed.expired(&lease("2", Some("s_a"), 3), start + 4 * s));
        assert!(observed.expired(&lease("2", Some("s_a"), 3), start + 5 * s));
        assert!(observed.expired(&lease("3", None, 3), start + 5 * s));
    }

    #[test]
    fn renewals_come_four_times_per_duration() {
        let settings = LeaseSettings {
            duration: Duration::from_secs(60),
        };
        assert_eq!(settings.renew_every(), Duration::from_secs(15));
        let short = LeaseSettings {
            duration: Duration::from_secs(2),
        };
        assert_eq!(short.renew_every(), Duration::from_secs(1));
    }
}
