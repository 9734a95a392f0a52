//! Manager Leases against the Kubernetes stand-in's API server: who takes an expired Lease.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use podrunner_kube::lease::{LeaseSettings, OwnLeases, Standing, Taken, lease_name, take};
use podrunner_testkit::KubernetesStandIn;
use tokio_util::sync::CancellationToken;

async fn client(kube: &KubernetesStandIn, dir: &std::path::Path) -> kube::Client {
    let path = kube.write_kubeconfig(dir);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Two managers that read the same expired Lease both try to take it: exactly one wins, the
/// other is told it lost (409), and the Lease names the winner. A manager restarted in the
/// same pod (same system ID) takes its own Lease back instead of failing on AlreadyExists.
#[tokio::test]
async fn exactly_one_of_two_takers_wins() {
    let kube = KubernetesStandIn::start(1, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&kube, dir.path()).await;
    let settings = LeaseSettings {
        duration: std::time::Duration::from_secs(30),
    };
    let dead = OwnLeases::new(
        client.clone(),
        "s_00000000dead".into(),
        settings,
        CancellationToken::new(),
    );
    assert!(dead.ensure("jobs").await);
    let api: Api<Lease> = Api::namespaced(client.clone(), "jobs");
    let read = api.get(&lease_name("s_00000000dead")).await.unwrap();
    let (first, second) = tokio::join!(
        take(&api, &read, "s_0000000000b1"),
        take(&api, &read, "s_0000000000c1")
    );
    let outcomes = [first.unwrap(), second.unwrap()];
    let won: Vec<&Taken> = outcomes
        .iter()
        .filter(|t| matches!(t, Taken::Won(_)))
        .collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    let Taken::Won(lease) = won[0] else {
        unreachable!()
    };
    let holder = lease
        .spec
        .as_ref()
        .unwrap()
        .holder_identity
        .clone()
        .unwrap();
    let stored = api.get(&lease_name("s_00000000dead")).await.unwrap();
    assert_eq!(stored.spec.unwrap().holder_identity.unwrap(), holder);
    assert_eq!(
        lease.spec.as_ref().unwrap().lease_transitions,
        Some(1),
        "a take is a transition"
    );

    // The same system ID again (a container restart): its Lease is taken back.
    let again = OwnLeases::new(
        client.clone(),
        "s_00000000dead".into(),
        settings,
        CancellationToken::new(),
    );
    assert!(again.ensure("jobs").await);
    let stored = api.get(&lease_name("s_00000000dead")).await.unwrap();
    assert_eq!(
        stored.spec.unwrap().holder_identity.as_deref(),
        Some("s_00000000dead")
    );
    // A clean exit deletes it.
    again.release().await;
    assert!(kube.leases().is_empty(), "{:?}", kube.leases());
}

async fn holder(api: &Api<Lease>, name: &str) -> Option<String> {
    api.get(name)
        .await
        .ok()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// A manager whose Lease another took (it did not renew in time) finds out at its next
/// renewal: the Lease is lost, its followers are told at once, and nothing it asks about
/// counts as held until it has a fresh Lease of its own, made once the taker deleted the one
/// it took.
#[tokio::test]
async fn a_taken_lease_is_lost_at_the_next_renewal_and_made_fresh_after() {
    let kube = KubernetesStandIn::start(1, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&kube, dir.path()).await;
    let settings = LeaseSettings {
        duration: std::time::Duration::from_secs(2),
    };
    let me = "s_0000000000a1";
    let name = lease_name(me);
    let leases = OwnLeases::new(
        client.clone(),
        me.into(),
        settings,
        CancellationToken::new(),
    );
    assert!(leases.ensure("jobs").await);
    assert_eq!(leases.confirm("jobs").await, Standing::Held);
    let mut lapses = leases.lapses("jobs").await.unwrap();
    let api: Api<Lease> = Api::namespaced(client.clone(), "jobs");
    let read = api.get(&name).await.unwrap();
    assert!(matches!(
        take(&api, &read, "s_0000000000b1").await.unwrap(),
        Taken::Won(_)
    ));
    // The next renewal (a second later) finds the holder changed.
    tokio::time::timeout(std::time::Duration::from_secs(5), lapses.changed())
        .await
        .expect("the loss is told to the followers")
        .unwrap();
    assert_eq!(leases.confirm("jobs").await, Standing::Lost);
    assert_eq!(
        holder(&api, &name).await.as_deref(),
        Some("s_0000000000b1"),
        "the loser does not fight back"
    );
    // The taker deletes it once it has the pods: the loser makes a fresh one.
    let taken = api.get(&name).await.unwrap();
    podrunner_kube::lease::delete(&api, &taken).await.unwrap();
    assert_eq!(leases.confirm("jobs").await, Standing::Held);
    assert_eq!(holder(&api, &name).await.as_deref(), Some(me));
    leases.release().await;
}

/// `kubectl delete lease` on a live manager's Lease: the manager makes it again at its next
/// renewal (it was renewed moments ago, so no other manager can have taken it) and loses
/// nothing: its followers are not told of any loss.
#[tokio::test]
async fn a_hand_deleted_lease_is_made_again_and_loses_nothing() {
    let kube = KubernetesStandIn::start(1, 1.0).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&kube, dir.path()).await;
    let settings = LeaseSettings {
        duration: std::time::Duration::from_secs(4),
    };
    let me = "s_0000000000a2";
    let name = lease_name(me);
    let leases = OwnLeases::new(
        client.clone(),
        me.into(),
        settings,
        CancellationToken::new(),
    );
    assert!(leases.ensure("jobs").await);
    let lapses = leases.lapses("jobs").await.unwrap();
    let api: Api<Lease> = Api::namespaced(client.clone(), "jobs");
    assert!(kube.delete_lease("jobs", &name));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while holder(&api, &name).await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Lease was not made again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(holder(&api, &name).await.as_deref(), Some(me));
    assert_eq!(*lapses.borrow(), 0, "a hand-deleted Lease is no loss");
    assert_eq!(leases.confirm("jobs").await, Standing::Held);
    leases.release().await;
}
