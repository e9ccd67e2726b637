//! The membership loop on real UDP sockets on loopback: members find each other, an abruptly
//! stopped one is declared dead within about a second, and a speaker with another key is never
//! admitted while its datagrams are counted as authentication failures.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::SocketAddr;
use std::time::Duration;

use ferrolb_proto::gossip::{KeyRing, Reason};
use ferrolb_speaker::membership::{Event, LiveSet, Membership, MembershipConfig};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

const KEY: &str = "5c1f0e9d8b7a69584736251403f2e1d0c0b1a2938475665748392a1b0c1d2e3f";
const OTHER_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

async fn start(name: &str, key: &str, seeds: Vec<SocketAddr>) -> Membership {
    let mut config = MembershipConfig::new(
        name,
        "127.0.0.1:0".parse().unwrap(),
        KeyRing::parse(key).unwrap(),
    );
    config.seeds = seeds;
    config.log_interval = Duration::from_secs(60);
    Membership::start(config).await.unwrap()
}

async fn wait_for(
    live: &mut watch::Receiver<LiveSet>,
    within: Duration,
    what: &str,
    f: impl Fn(&LiveSet) -> bool,
) -> Duration {
    let start = Instant::now();
    let reached = timeout(within, live.wait_for(|set| f(set))).await.is_ok();
    assert!(
        reached,
        "{what}: not within {within:?}: {:?}",
        *live.borrow()
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_members_see_each_other_and_a_stopped_one_dies() {
    let first = start("node-0", KEY, vec![]).await;
    let seed = first.advertise();
    let mut members = vec![first];
    for i in 1..4 {
        members.push(start(&format!("node-{i}"), KEY, vec![seed]).await);
    }
    for m in &members {
        let mut live = m.live();
        wait_for(&mut live, Duration::from_secs(5), "all four live", |s| {
            s.len() == 4
        })
        .await;
    }
    let mut events = members[0].events();
    // Stop node-3 abruptly: the task is aborted, its socket closed, no goodbye.
    let victim = members.pop().unwrap();
    drop(victim);
    let mut took = Vec::new();
    for m in &members {
        let mut live = m.live();
        took.push(
            wait_for(&mut live, Duration::from_millis(1500), "node-3 gone", |s| {
                !s.contains("node-3")
            })
            .await,
        );
    }
    println!("loopback: stopped member out of every live set after {took:?}");
    let mut saw_dead = false;
    while let Ok(event) = events.try_recv() {
        saw_dead |= matches!(event, Event::MemberDead { ref name, .. } if name == "node-3");
    }
    assert!(saw_dead, "a MemberDead event for node-3");
    let m = members[0].metrics().snapshot();
    assert_eq!(m.members_alive, 3);
    assert_eq!(m.members_dead, 1);
    assert_eq!(m.deaths, 1);
    assert!(m.datagrams_sent > 0 && m.datagrams_received > 0);
    assert_eq!(members[0].metrics().rejected_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_with_another_key_is_never_admitted() {
    let a = start("node-a", KEY, vec![]).await;
    let b = start("node-b", KEY, vec![a.advertise()]).await;
    let intruder = start("intruder", OTHER_KEY, vec![a.advertise(), b.advertise()]).await;
    let mut live = a.live();
    wait_for(&mut live, Duration::from_secs(5), "a and b", |s| {
        s.len() == 2
    })
    .await;
    // The intruder retries its seeds every second; give it a few tries.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for m in [&a, &b] {
        let set = m.live().borrow().clone();
        assert!(!set.contains("intruder"), "{set:?}");
        assert_eq!(set.len(), 2);
    }
    assert!(
        intruder.live().borrow().len() == 1,
        "the intruder stays alone"
    );
    let refused =
        a.metrics().rejected(Reason::UnknownKey) + b.metrics().rejected(Reason::UnknownKey);
    assert!(
        refused >= 2,
        "intruder datagrams counted as wrong-key: {refused}"
    );
    assert!(intruder.metrics().rejected_total() == 0 || intruder.live().borrow().len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_member_is_gone_at_once() {
    let a = start("node-a", KEY, vec![]).await;
    let b = start("node-b", KEY, vec![a.advertise()]).await;
    let mut live = a.live();
    wait_for(&mut live, Duration::from_secs(5), "a and b", |s| {
        s.len() == 2
    })
    .await;
    let mut events = a.events();
    b.leave().await;
    let took = wait_for(&mut live, Duration::from_millis(500), "b left", |s| {
        s.len() == 1
    })
    .await;
    println!("loopback: leave seen after {took:?}");
    let event = timeout(Duration::from_secs(1), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, Event::MemberLeft { ref name, .. } if name == "node-b"),
        "{event:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_datagrams_is_received_or_its_drops_counted() {
    let member = start("node-a", KEY, vec![]).await;
    let to = member.local_addr();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    const BURST: u64 = 500;
    // Garbage of the largest size a peer sends: received, refused, counted.
    let datagram = vec![0xa5u8; 1200];
    for _ in 0..BURST {
        sender.send_to(&datagram, to).unwrap();
    }
    let metrics = member.metrics().clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (received, dropped) = loop {
        let snapshot = metrics.snapshot();
        let seen = (snapshot.datagrams_received, snapshot.receive_drops);
        if seen.0 + seen.1 >= BURST || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("a burst of {BURST}: {received} received, {dropped} dropped by the kernel");
    assert_eq!(received + dropped, BURST, "every datagram accounted for");
    if nix::unistd::geteuid().is_root() {
        // As root the buffer is sized past net.core.rmem_max (SO_RCVBUFFORCE).
        assert_eq!(dropped, 0, "the receive buffer holds the burst");
    }
}
