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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use podrunner_manager::Event;
use tokio::sync::watch;
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
    /// How a Lease is known here: Leases of one manager in several namespaces share a name.
    pub fn key(namespace: &str, lease: &Lease) -> String {
        format!(
            "{namespace}/{}",
            lease.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// Whether `lease` (listed in `namespace`) is expired: free (no holder), or unchanged for
    /// its whole duration since this observer first saw this record.
    pub fn expired(&mut self, namespace: &str, lease: &Lease, now: Instant) -> bool {
        let name = Self::key(namespace, lease);
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

    /// Forgets Leases no longer listed (by [`Observed::key`]).
    pub fn retain(&mut self, listed: &std::collections::HashSet<String>) {
        self.seen.retain(|name, _| listed.contains(name));
    }
}

/// Where this manager stands with its Lease in one namespace, as [`OwnLeases::confirm`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It holds the Lease (renewed recently, or just now): nobody took its pods over.
    Held,
    /// Another manager took the Lease (or may have: it was gone after renewals had lapsed for
    /// long enough that another manager could have taken it over and deleted it). Its pods
    /// there are the taker's: this manager must not touch them or report on their jobs.
    Lost,
    /// There is no Lease in that namespace (it could not be made: no RBAC for Leases), so its
    /// pods carry no [`LEASE_ANNOTATION`] and nobody else ever takes them.
    Unleased,
}

/// This manager's own Leases, one per namespace it runs jobs in, each renewed by a task of its
/// own until the executor is dropped (so a draining manager renews until its last job ended).
pub struct OwnLeases {
    client: kube::Client,
    system_id: String,
    settings: LeaseSettings,
    /// The keeper of each namespace's Lease, or `None` where it could not be made.
    keepers: tokio::sync::Mutex<HashMap<String, Option<Arc<Keeper>>>>,
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
            keepers: tokio::sync::Mutex::new(HashMap::new()),
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

    /// Makes sure this manager has its Lease in `namespace` (made, or taken back after a
    /// restart of the same pod, on first use; renewed from then on). Returns whether it does:
    /// without it (no RBAC for Leases) job pods are made without [`LEASE_ANNOTATION`], so no
    /// other manager ever takes them.
    pub async fn ensure(&self, namespace: &str) -> bool {
        self.keeper(namespace).await.is_some()
    }

    /// The keeper of `namespace`'s Lease, made (and its renewals started) on first use.
    async fn keeper(&self, namespace: &str) -> Option<Arc<Keeper>> {
        let mut keepers = self.keepers.lock().await;
        match keepers.get(namespace) {
            Some(Some(keeper)) if keeper.retired.load(Ordering::Relaxed) => {}
            Some(known) => return known.clone(),
            None => {}
        }
        let keeper = Keeper {
            api: Api::namespaced(self.client.clone(), namespace),
            namespace: namespace.to_owned(),
            system_id: self.system_id.clone(),
            settings: self.settings,
            state: tokio::sync::Mutex::new(Kept {
                lease: None,
                renewed: Instant::now(),
            }),
            lapses: watch::channel(0).0,
            retired: AtomicBool::new(false),
        };
        let made = match keeper.acquire().await {
            Ok(lease) => {
                *keeper.state.lock().await = Kept {
                    lease: Some(lease),
                    renewed: Instant::now(),
                };
                let keeper = Arc::new(keeper);
                tokio::spawn(keeper.clone().renew_forever(self.cancel.clone()));
                Some(keeper)
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
                None
            }
        };
        keepers.insert(namespace.to_owned(), made.clone());
        made
    }

    /// Whether this manager still holds its Lease in `namespace`, asked before anything that
    /// only the owner of a job may do (make a pod owned through the Lease, write to a job's
    /// log, delete a job's pod, report its end). Costs nothing while the last renewal is
    /// recent (less than half a lease duration ago: nobody can have taken the Lease since);
    /// otherwise the Lease is renewed now, which tells.
    pub async fn confirm(&self, namespace: &str) -> Standing {
        match self.keepers.lock().await.get(namespace).cloned().flatten() {
            Some(keeper) => keeper.confirm().await,
            None => Standing::Unleased,
        }
    }

    /// Counts the times this manager lost its Lease in `namespace`: a follower waits on it to
    /// let go of its job at once ([`Standing::Lost`]). `None` without a Lease there.
    pub async fn lapses(&self, namespace: &str) -> Option<watch::Receiver<u64>> {
        let keepers = self.keepers.lock().await;
        let keeper = keepers.get(namespace)?.as_ref()?;
        Some(keeper.lapses.subscribe())
    }

    /// Gives up every Lease held: deleted (with the `resourceVersion` last written as a
    /// precondition), so that nobody waits a Lease duration for a manager that has no pods.
    pub async fn release(&self) {
        self.cancel.cancel();
        let keepers: Vec<Arc<Keeper>> = self
            .keepers
            .lock()
            .await
            .drain()
            .filter_map(|(_, k)| k)
            .collect();
        for keeper in keepers {
            let Some(lease) = keeper.state.lock().await.lease.take() else {
                continue;
            };
            if let Err(e) = delete(&keeper.api, &lease).await {
                Event::KubernetesProblem {
                    doing: format!(
                        "deleting this manager's Lease {} in {} at exit (it expires by itself)",
                        self.name(),
                        keeper.namespace
                    ),
                    error: crate::executor::api_error(&e),
                }
                .emit();
            }
        }
    }
}

/// One namespace's Lease of this manager, and its renewals.
struct Keeper {
    api: Api<Lease>,
    namespace: String,
    system_id: String,
    settings: LeaseSettings,
    /// Held across a renewal, so that followers asking at once wait for one renewal.
    state: tokio::sync::Mutex<Kept>,
    /// Bumped each time the Lease is found lost.
    lapses: watch::Sender<u64>,
    /// Set once the namespace is gone: the renewals stop, and a later use starts afresh.
    retired: AtomicBool,
}

/// The last written Lease (`None` while lost and not yet made again), and when the write
/// that made it was sent.
struct Kept {
    lease: Option<Lease>,
    renewed: Instant,
}

impl Keeper {
    fn name(&self) -> String {
        lease_name(&self.system_id)
    }

    /// The Lease as this manager makes it, new.
    fn fresh(&self) -> Lease {
        Lease {
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
        }
    }

    /// Creates the Lease, or takes it back when it exists: it bears this system ID, so it is
    /// this pod's own from before a container restart (or a Lease that someone took over and
    /// has not deleted yet: then taking it back is the same compare-and-swap).
    async fn acquire(&self) -> Result<Lease, String> {
        let text = |e: kube::Error| crate::executor::api_error(&e);
        match self.api.create(&PostParams::default(), &self.fresh()).await {
            Ok(created) => return Ok(created),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(text(e)),
        }
        for _ in 0..3 {
            let mut existing = self.api.get(&self.name()).await.map_err(text)?;
            let spec = existing.spec.get_or_insert_default();
            spec.lease_duration_seconds = Some(self.settings.duration_seconds());
            match take(&self.api, &existing, &self.system_id)
                .await
                .map_err(text)?
            {
                Taken::Won(lease) => return Ok(*lease),
                Taken::Lost => continue,
            }
        }
        Err("the Lease kept changing while this manager took it back (409 three times)".into())
    }

    /// See [`OwnLeases::confirm`].
    async fn confirm(&self) -> Standing {
        let mut kept = self.state.lock().await;
        if kept.lease.is_some() && kept.renewed.elapsed() < self.settings.duration / 2 {
            return Standing::Held;
        }
        self.renew(&mut kept).await
    }

    /// Renews the Lease now (or, while lost, makes it again once the taker deleted it).
    async fn renew(&self, kept: &mut Kept) -> Standing {
        let Some(lease) = kept.lease.clone() else {
            return self.make_again(kept).await;
        };
        let name = self.name();
        let namespace = &self.namespace;
        let doing = || format!("renewing this manager's Lease {name} in {namespace}");
        let sent = Instant::now();
        let mut renewed = lease.clone();
        renewed.spec.get_or_insert_default().renew_time = Some(now());
        let error = match self
            .api
            .replace(&name, &PostParams::default(), &renewed)
            .await
        {
            Ok(written) => {
                *kept = Kept {
                    lease: Some(written),
                    renewed: sent,
                };
                return Standing::Held;
            }
            Err(e) => e,
        };
        // Read again: a 409 is this manager's own write whose answer was lost, a taker, or
        // the Lease deleted (by hand, or by a taker once it had taken the pods over).
        let fresh = match &error {
            kube::Error::Api(s) if s.code == 404 => Ok(None),
            _ => match self.api.get(&name).await {
                Ok(fresh) => Ok(Some(fresh)),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(e),
            },
        };
        let since = kept.renewed.elapsed();
        match fresh {
            Ok(Some(fresh)) => {
                let holder = fresh.spec.as_ref().and_then(|s| s.holder_identity.clone());
                if holder.as_deref() == Some(self.system_id.as_str()) {
                    // Its own write went through (or its own Lease, rewritten by hand).
                    *kept = Kept {
                        lease: Some(fresh),
                        renewed: sent,
                    };
                    return Standing::Held;
                }
                self.lost(
                    kept,
                    format!(
                        "manager {} took it over (this manager's renewals had failed or it was paused for {:.0} s, past the lease duration): its job pods here are followed there now, and this manager lets go of their jobs without touching them",
                        holder.unwrap_or_default(),
                        since.as_secs_f64()
                    ),
                );
                Standing::Lost
            }
            Ok(None) if since < self.settings.duration / 2 => {
                // Deleted by hand while this manager lived: nobody can have taken it (that
                // takes a whole lease duration without renewal). Made again; jobs stay.
                match self.api.create(&PostParams::default(), &self.fresh()).await {
                    Ok(created) => {
                        Event::LeaseLost {
                            namespace: namespace.clone(),
                            lease: name.clone(),
                            why: "it was deleted (not by a manager taking it over: it was renewed moments ago); made again, this manager's jobs stay its own".into(),
                        }
                        .emit();
                        *kept = Kept {
                            lease: Some(created),
                            renewed: sent,
                        };
                        Standing::Held
                    }
                    // The namespace is gone or going (a per-job namespace deleted after its
                    // job): nothing is left here to own; the renewals stop.
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
                        self.retire(kept);
                        Standing::Unleased
                    }
                    Err(e) => {
                        Event::KubernetesProblem {
                            doing: format!("making this manager's Lease {name} in {namespace} again after it was deleted"),
                            error: crate::executor::api_error(&e),
                        }
                        .emit();
                        // Still this manager's: no one else can take a Lease that is absent.
                        Standing::Held
                    }
                }
            }
            Ok(None) => {
                self.lost(
                    kept,
                    format!(
                        "it is gone and this manager had not renewed it for {:.0} s (past half the lease duration): another manager may have taken its pods over and deleted it, so it lets go of its jobs here without touching them",
                        since.as_secs_f64()
                    ),
                );
                self.make_again(kept).await;
                Standing::Lost
            }
            Err(e) => {
                Event::KubernetesProblem {
                    doing: doing(),
                    error: format!(
                        "{}; reading it back: {}",
                        crate::executor::api_error(&error),
                        crate::executor::api_error(&e)
                    ),
                }
                .emit();
                // Unknown: it still counts as held (nothing here is done without the API).
                Standing::Held
            }
        }
    }

    /// Stops keeping the Lease of a namespace that is gone.
    fn retire(&self, kept: &mut Kept) {
        kept.lease = None;
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Says why the Lease is lost, forgets it and tells the followers.
    fn lost(&self, kept: &mut Kept, why: String) {
        Event::LeaseLost {
            namespace: self.namespace.clone(),
            lease: self.name(),
            why,
        }
        .emit();
        kept.lease = None;
        self.lapses.send_modify(|n| *n += 1);
    }

    /// While lost: a fresh Lease of this manager's own once the taker deleted the one it
    /// took (until then, new pods here carry no Lease annotation).
    async fn make_again(&self, kept: &mut Kept) -> Standing {
        let sent = Instant::now();
        match self.api.create(&PostParams::default(), &self.fresh()).await {
            Ok(created) => {
                *kept = Kept {
                    lease: Some(created),
                    renewed: sent,
                };
                Standing::Held
            }
            // The taker still holds it: it deletes it once it took every pod over.
            Err(kube::Error::Api(s)) if s.code == 409 => Standing::Lost,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
                self.retire(kept);
                Standing::Lost
            }
            Err(e) => {
                Event::KubernetesProblem {
                    doing: format!(
                        "making a fresh Lease {} in {} after losing the last one",
                        self.name(),
                        self.namespace
                    ),
                    error: crate::executor::api_error(&e),
                }
                .emit();
                Standing::Lost
            }
        }
    }

    /// Renews every [`LeaseSettings::renew_every`] until `cancel`.
    async fn renew_forever(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.settings.renew_every()) => {}
            }
            let mut kept = self.state.lock().await;
            if cancel.is_cancelled() || self.retired.load(Ordering::Relaxed) {
                return;
            }
            self.renew(&mut kept).await;
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
        assert!(!observed.expired("ns", &lease("1", Some("s_a"), 3), start));
        assert!(!observed.expired("ns", &lease("1", Some("s_a"), 3), start + 2 * s));
        // Renewed: the clock starts again.
        assert!(!observed.expired("ns", &lease("2", Some("s_a"), 3), start + 2 * s));
        assert!(!observed.expired("ns", &lease("2", Some("s_a"), 3), start + 4 * s));
        assert!(observed.expired("ns", &lease("2", Some("s_a"), 3), start + 5 * s));
        assert!(observed.expired("ns", &lease("3", None, 3), start + 5 * s));
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
