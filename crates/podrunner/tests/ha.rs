//! Several managers on one cluster (issue 16): each owns its job pods through its Lease; a
//! manager killed with SIGKILL leaves its running jobs to another once its Lease expired,
//! taken over exactly once; a rolling update (new manager started, old one SIGQUIT) loses,
//! repeats and fails nothing. The Kubernetes and GitLab stand-ins, the static podrunner as
//! the init image; `scripts/test` sets `PODRUNNER_STATIC_BINARY`.

use std::time::Duration;

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{Cluster, NAMESPACE, long_job, until};

/// How often `text` occurs in `haystack`.
fn count(haystack: &str, text: &str) -> usize {
    haystack.matches(text).count()
}

/// Three managers share 8 jobs; one is killed with SIGKILL mid-job. Its jobs finish with
/// their whole log, followed by one of the other two from the moment its Lease expired (not
/// before: nothing is taken over while it lived); the two race for its Lease and exactly one
/// wins, so each job is adopted exactly once; nothing is deleted as stray, every pod is
/// deleted once, and GitLab lists one runner manager per process.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_managers_jobs_are_taken_over_once_after_its_lease_expired() {
    let cluster = Cluster::start().await;
    let mut a = cluster.manager("a", 3, 3);
    let b = cluster.manager("b", 3, 3);
    let c = cluster.manager("c", 3, 3);
    until(Duration::from_secs(20), "the managers verified", || {
        cluster.gitlab.managers().len() == 3
    })
    .await;
    let mut managers: Vec<String> = cluster
        .gitlab
        .managers()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    managers.sort();
    let mut expected = vec![
        a.system_id.clone(),
        b.system_id.clone(),
        c.system_id.clone(),
    ];
    expected.sort();
    assert_eq!(
        managers, expected,
        "one runner manager per process in GitLab"
    );

    let jobs: Vec<i64> = (0..8)
        .map(|n| cluster.gitlab.enqueue(long_job(n, 15)))
        .collect();
    for (n, id) in jobs.iter().enumerate() {
        cluster
            .trace_contains(*id, &format!("start-{n}-mark"))
            .await;
    }
    let (of_a, mut others) = (cluster.pods_of(&a), cluster.pods_of(&b));
    others.extend(cluster.pods_of(&c));
    assert!(
        of_a.len() >= 2 && of_a.len() + others.len() == 8,
        "spread over all three: {of_a:?} {others:?}"
    );
    for log in [b.log(), c.log()] {
        assert!(!log.contains("Took over the Lease"), "{log}");
    }
    assert_eq!(
        cluster.lease_holders().len(),
        3,
        "{:?}",
        cluster.lease_holders()
    );

    let killed = tokio::time::Instant::now();
    a.kill().await;
    until(Duration::from_secs(30), "b or c takes a's Lease", || {
        b.log().contains("Took over the Lease") || c.log().contains("Took over the Lease")
    })
    .await;
    // A's last renewal came at most 1 s before the kill; its Lease lasts 3 s.
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "taken over {:?} after the kill: before the Lease expired",
        killed.elapsed()
    );
    for (n, id) in jobs.iter().enumerate() {
        let view = cluster.finished(*id).await;
        let trace = String::from_utf8_lossy(&view.trace).into_owned();
        assert_eq!(
            view.status,
            "success",
            "job {n}: {trace}\n{}\n{}",
            b.log(),
            c.log()
        );
        assert_eq!(count(&trace, &format!("start-{n}-mark\n")), 1, "{trace}");
        assert_eq!(count(&trace, &format!("end-{n}-mark\n")), 1, "{trace}");
    }
    cluster.clean().await;

    // One of the two took it over, once; a's pods are adopted there, once each, and nowhere
    // else.
    let (b_log, c_log) = (b.log(), c.log());
    let took = |log: &str| count(log, "Took over the Lease");
    assert_eq!(took(&b_log) + took(&c_log), 1, "b: {b_log}\nc: {c_log}");
    let (log, loser) = if took(&b_log) == 1 {
        (b_log, c_log)
    } else {
        (c_log, b_log)
    };
    assert!(log.contains(&format!("from={}", a.system_id)), "{log}");
    assert!(log.contains(&format!("pods={}", of_a.len())), "{log}");
    assert!(!loser.contains("Pod adopted"), "{loser}");
    let adoptions = |pod: &str| {
        log.lines()
            .filter(|l| l.contains("Pod adopted") && l.contains(&format!("pod={pod}")))
            .count()
    };
    for pod in &of_a {
        assert_eq!(adoptions(pod), 1, "{pod} adopted once: {log}");
    }
    for pod in &others {
        assert_eq!(adoptions(pod), 0, "{log}");
    }
    for log in [&log, &loser, &a.log()] {
        assert!(!log.contains("Deleted a stray object"), "{log}");
    }
    // Each pod was deleted once (by its follower at the job's end).
    let requests = cluster.kube.requests();
    for pod in of_a.iter().chain(&others) {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}");
        let deletes = requests
            .iter()
            .filter(|r| r.method == "DELETE" && r.uri.split('?').next() == Some(path.as_str()))
            .count();
        assert_eq!(deletes, 1, "{pod} deleted {deletes} times");
    }
    // The taken Lease is gone; b's and c's own remain while they live.
    let mut holders: Vec<String> = cluster
        .lease_holders()
        .into_iter()
        .map(|(_, holder)| holder)
        .collect();
    holders.sort();
    let mut living = vec![b.system_id.clone(), c.system_id.clone()];
    living.sort();
    assert_eq!(holders, living);
    b.stop().await;
    c.stop().await;
}

/// A rolling update: the new manager starts while the old one runs 4 jobs, then the old one
/// gets SIGQUIT (what preStop's drain does) and 4 more jobs come. The old manager keeps its
/// Lease and follows its jobs to their end, so the new one takes none of them over; the new
/// one runs the new jobs. No job is lost, run twice or failed; the old manager exits 0 and
/// gives up its Lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_loses_repeats_and_fails_no_job() {
    let cluster = Cluster::start().await;
    let mut old = cluster.manager("old", 4, 3);
    let mut jobs: Vec<i64> = (0..4)
        .map(|n| cluster.gitlab.enqueue(long_job(n, 12)))
        .collect();
    for (n, id) in jobs.iter().enumerate() {
        cluster
            .trace_contains(*id, &format!("start-{n}-mark"))
            .await;
    }
    let new = cluster.manager("new", 4, 3);
    until(Duration::from_secs(20), "the new manager verified", || {
        cluster.gitlab.managers().len() == 2
    })
    .await;
    // Longer than a Lease: the new manager sees the old one renew and leaves its jobs alone.
    tokio::time::sleep(Duration::from_secs(4)).await;
    old.quit();
    jobs.extend((4..8).map(|n| cluster.gitlab.enqueue(long_job(n, 2))));
    for (n, id) in jobs.iter().enumerate() {
        let view = cluster.finished(*id).await;
        let trace = String::from_utf8_lossy(&view.trace).into_owned();
        assert_eq!(
            view.status,
            "success",
            "job {n}: {trace}\nold: {}\nnew: {}",
            old.log(),
            new.log()
        );
        assert_eq!(count(&trace, &format!("start-{n}-mark\n")), 1, "{trace}");
        assert_eq!(count(&trace, &format!("end-{n}-mark\n")), 1, "{trace}");
    }
    assert!(old.exited(Duration::from_secs(30)).await, "{}", old.log());
    cluster.clean().await;
    for log in [old.log(), new.log()] {
        assert!(!log.contains("Took over the Lease"), "{log}");
        assert!(!log.contains("Pod adopted"), "{log}");
        assert!(!log.contains("Deleted a stray object"), "{log}");
    }
    // The old manager's jobs were its own to the end; the new ones went to the new manager.
    let created = |log: &str| count(log, "Pod created");
    assert_eq!((created(&old.log()), created(&new.log())), (4, 4));
    let holders = cluster.lease_holders();
    assert_eq!(holders.len(), 1, "the old Lease was given up: {holders:?}");
    assert_eq!(holders[0].1, new.system_id);
    new.stop().await;
}

/// The final updates GitLab got for job `id` that failed it.
fn failed_updates(cluster: &Cluster, id: i64) -> usize {
    cluster
        .gitlab
        .job(id)
        .map(|j| j.updates.iter().filter(|u| u["state"] == "failed").count())
        .unwrap_or_default()
}

/// Split brain: manager a is frozen (SIGSTOP) past its Lease while its 2 jobs run, and b
/// takes them over. Thawed (SIGCONT), a finds its Lease taken at its next renewal and lets go
/// of both jobs at once, touching neither pod and telling GitLab nothing about them: each
/// job's log has its lines once, GitLab never hears the job failed, each pod is deleted once
/// (by b), nothing is swept as stray; a says why, and then makes a fresh Lease of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_manager_thawed_after_its_lease_was_taken_lets_go_of_its_jobs() {
    let cluster = Cluster::start().await;
    let a = cluster.manager("a", 2, 3);
    let jobs: Vec<i64> = (0..2)
        .map(|n| cluster.gitlab.enqueue(long_job(n, 20)))
        .collect();
    for (n, id) in jobs.iter().enumerate() {
        cluster
            .trace_contains(*id, &format!("start-{n}-mark"))
            .await;
    }
    let b = cluster.manager("b", 2, 3);
    until(Duration::from_secs(20), "b verified", || {
        cluster.gitlab.managers().len() == 2
    })
    .await;
    let of_a = cluster.pods_of(&a);
    assert_eq!(of_a.len(), 2, "{of_a:?}");

    a.pause();
    until(Duration::from_secs(30), "b takes both of a's jobs", || {
        b.log().contains("Took over the Lease")
    })
    .await;
    assert_eq!(count(&b.log(), "Pod adopted"), 2, "{}", b.log());
    a.resume();
    until(Duration::from_secs(20), "a lets go of both", || {
        count(&a.log(), "Let go of a job another manager took over") == 2
    })
    .await;
    // Taken (409, another holder) or already deleted by b after a long silence: both say
    // why.
    assert!(
        a.log().contains("Lost this manager's Lease")
            && (a.log().contains("took it over") || a.log().contains("may have taken")),
        "{}",
        a.log()
    );

    for (n, id) in jobs.iter().enumerate() {
        let view = cluster.finished(*id).await;
        let trace = String::from_utf8_lossy(&view.trace).into_owned();
        assert_eq!(
            view.status,
            "success",
            "job {n}: {trace}\na: {}\nb: {}",
            a.log(),
            b.log()
        );
        assert_eq!(count(&trace, &format!("start-{n}-mark\n")), 1, "{trace}");
        assert_eq!(count(&trace, &format!("end-{n}-mark\n")), 1, "{trace}");
        assert_eq!(failed_updates(&cluster, *id), 0, "{:?}", view.updates);
    }
    cluster.clean().await;
    for pod in &of_a {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}");
        let deletes = cluster
            .kube
            .requests()
            .iter()
            .filter(|r| r.method == "DELETE" && r.uri.split('?').next() == Some(path.as_str()))
            .count();
        assert_eq!(deletes, 1, "{pod} deleted {deletes} times");
    }
    for log in [a.log(), b.log()] {
        assert!(!log.contains("Deleted a stray object"), "{log}");
        assert!(!log.contains("Job failed by the manager"), "{log}");
    }
    // A fresh Lease of its own, once b deleted the one it took.
    until(Duration::from_secs(10), "a holds a fresh Lease", || {
        cluster
            .lease_holders()
            .iter()
            .any(|(_, holder)| *holder == a.system_id)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// `kubectl delete lease` on a live manager's Lease: in the gap the other manager sees no
/// Lease, so it takes nothing (take-over starts from an expired Lease, never from pods alone);
/// the owner makes the Lease again at its next renewal and follows its jobs to the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_deleted_lease_is_made_again_and_nobody_takes_the_jobs() {
    let cluster = Cluster::start().await;
    let a = cluster.manager("a", 2, 3);
    let jobs: Vec<i64> = (0..2)
        .map(|n| cluster.gitlab.enqueue(long_job(n, 8)))
        .collect();
    for (n, id) in jobs.iter().enumerate() {
        cluster
            .trace_contains(*id, &format!("start-{n}-mark"))
            .await;
    }
    let b = cluster.manager("b", 2, 3);
    until(Duration::from_secs(20), "b verified", || {
        cluster.gitlab.managers().len() == 2
    })
    .await;
    let (name, _) = cluster
        .lease_holders()
        .into_iter()
        .find(|(_, holder)| *holder == a.system_id)
        .expect("a holds a Lease");
    assert!(cluster.kube.delete_lease(NAMESPACE, &name));
    until(Duration::from_secs(5), "a makes its Lease again", || {
        cluster
            .lease_holders()
            .iter()
            .any(|(lease, holder)| *lease == name && *holder == a.system_id)
    })
    .await;
    for (n, id) in jobs.iter().enumerate() {
        let view = cluster.finished(*id).await;
        let trace = String::from_utf8_lossy(&view.trace).into_owned();
        assert_eq!(view.status, "success", "job {n}: {trace}\na: {}", a.log());
        assert_eq!(count(&trace, &format!("end-{n}-mark\n")), 1, "{trace}");
    }
    cluster.clean().await;
    assert!(
        a.log()
            .contains("it was deleted (not by a manager taking it over"),
        "{}",
        a.log()
    );
    assert!(!a.log().contains("Let go of a job"), "{}", a.log());
    assert_eq!(count(&a.log(), "Pod created"), 2, "{}", a.log());
    for log in [a.log(), b.log()] {
        assert!(!log.contains("Took over the Lease"), "{log}");
        assert!(!log.contains("Pod adopted"), "{log}");
        assert!(!log.contains("Deleted a stray object"), "{log}");
    }
    a.stop().await;
    b.stop().await;
}

/// `namespace_per_job`: a's jobs run in `ci-job-<ID>` namespaces, each with a's Lease there.
/// Killed, a leaves them to b, which finds those Leases with one cluster-wide list (not only
/// in the configured namespace), takes them once expired, follows the jobs to the end and
/// deletes their namespaces.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_managers_jobs_in_per_job_namespaces_are_taken_over() {
    let cluster = Cluster::start().await;
    let per_job = "    namespace_per_job = true\n";
    let mut a = cluster.manager_with("a", 2, 3, per_job);
    let jobs: Vec<i64> = (0..2)
        .map(|n| cluster.gitlab.enqueue(long_job(n, 10)))
        .collect();
    for (n, id) in jobs.iter().enumerate() {
        cluster
            .trace_contains(*id, &format!("start-{n}-mark"))
            .await;
    }
    let b = cluster.manager_with("b", 2, 3, per_job);
    until(Duration::from_secs(20), "b verified", || {
        cluster.gitlab.managers().len() == 2
    })
    .await;
    let namespaces: Vec<String> = cluster
        .kube
        .objects("Pod")
        .iter()
        .map(|p| {
            p["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    for id in &jobs {
        assert!(
            namespaces.contains(&format!("ci-job-{id}")),
            "{namespaces:?}"
        );
    }
    a.kill().await;
    for (n, id) in jobs.iter().enumerate() {
        let view = cluster.finished(*id).await;
        let trace = String::from_utf8_lossy(&view.trace).into_owned();
        assert_eq!(view.status, "success", "job {n}: {trace}\nb: {}", b.log());
        assert_eq!(count(&trace, &format!("start-{n}-mark\n")), 1, "{trace}");
        assert_eq!(count(&trace, &format!("end-{n}-mark\n")), 1, "{trace}");
    }
    cluster.clean().await;
    let log = b.log();
    for id in &jobs {
        assert_eq!(
            log.lines()
                .filter(
                    |l| l.contains("Pod adopted") && l.contains(&format!("namespace=ci-job-{id}"))
                )
                .count(),
            1,
            "{log}"
        );
    }
    until(
        Duration::from_secs(20),
        "the job namespaces are deleted",
        || {
            !cluster.kube.objects("Namespace").iter().any(|n| {
                n["metadata"]["name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("ci-job-"))
            })
        },
    )
    .await;
    b.stop().await;
}
