//! The real Kubernetes API server tier: FerroLB's Kubernetes backends against etcd +
//! kube-apiserver v1.33 + kube-controller-manager (one control plane per test binary, shared by
//! its tests, which run one at a time), installed as the chart installs it (CRDs, rendered RBAC,
//! ServiceAccounts, admission policy) and run with those accounts' own tokens; the lab's
//! namespaces are the nodes. Needs root (the lab), etcd, openssl, curl, setpriv, helm, and the
//! servers (`KUBEBUILDER_ASSETS` or `../shared/kube/install`); with FERROLB_REQUIRE_LAB=1 a
//! missing one fails the tier instead of skipping it.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferrolb_e2e::cluster::{self, Cluster};
use ferrolb_e2e::privilege::{REQUIRE_LAB_ENV, required_by};
use ferrolb_e2e::{ControlPlane, Lab, lab_or_skip};
use serde_json::{Value, json};

const ALLOCATE: Duration = Duration::from_secs(15);

/// The tests share one control plane and cluster-scoped objects: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shared control plane, or `None` (skipped) when it cannot run here and nobody requires it.
fn plane() -> Option<&'static ControlPlane> {
    match ControlPlane::shared() {
        Ok(plane) => Some(plane),
        Err(err) if required_by(std::env::var_os(REQUIRE_LAB_ENV).as_deref()) => {
            panic!("{err} [{REQUIRE_LAB_ENV}=1 makes this a failure]")
        }
        Err(err) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipping: {err}");
            None
        }
    }
}

macro_rules! tier_or_skip {
    () => {{
        lab_or_skip!("etcd", "openssl", "curl", "setpriv", "arping");
        let guard = serial();
        match plane() {
            Some(plane) => (guard, plane),
            None => return,
        }
    }};
}

fn pool(namespace: &str, name: &str, addresses: &[&str]) -> Value {
    json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"addresses": addresses}})
}

fn l2(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// A LoadBalancer Service without a selector (its EndpointSlice is made by hand), port 80.
fn service(namespace: &str, name: &str, class: Option<&str>) -> Value {
    let mut svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
    if let Some(class) = class {
        svc["spec"]["loadBalancerClass"] = json!(class);
    }
    svc
}

/// One ready endpoint of Service `namespace/name` on `node` at `address`.
fn endpoints(namespace: &str, name: &str, node: &str, address: IpAddr) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-{node}"), "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name}},
        "addressType": if address.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true, "serving": true}, "nodeName": node}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]})
}

fn wait_ips(cluster: &Cluster, namespace: &str, name: &str) -> Vec<IpAddr> {
    cluster
        .wait(&format!("an IP for {namespace}/{name}"), ALLOCATE, |c| {
            let ips = c.service_ips(namespace, name);
            (!ips.is_empty()).then_some(ips)
        })
        .unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The test's lab of `nodes` nodes and FerroLB installed as release `release` in `namespace`,
/// nodes named `<namespace>-n<i>`.
fn stage<'p>(
    plane: &'p ControlPlane,
    lab: &Lab,
    release: &str,
    namespace: &str,
    set: &[&str],
) -> Cluster<'p> {
    let set: Vec<String> = set.iter().map(|s| (*s).to_owned()).collect();
    Cluster::new(plane, lab, release, namespace, &set, namespace).unwrap()
}

fn no_forbidden(cluster: &Cluster) {
    let forbidden = cluster.forbidden();
    assert!(
        forbidden.is_empty(),
        "requests refused, or `forbidden` in the logs:\n{}",
        forbidden.join("\n")
    );
}

/// The (group, resource, verb) an account used over the run, from the audit log.
fn used(cluster: &Cluster, account: &str) -> BTreeSet<(String, String, String)> {
    cluster::audit(cluster.plane, &cluster.release.user(account))
        .into_iter()
        .map(|e| (e.group, e.resource, e.verb))
        .collect()
}

/// What an account may do in its namespace, by its own token, less what every authenticated
/// user may (self reviews, discovery).
fn granted(cluster: &Cluster, account: &str) -> BTreeSet<(String, String, String)> {
    let plane = cluster.plane;
    let token = plane
        .block_on(cluster::token(&plane.admin(), cluster.namespace(), account))
        .unwrap();
    let path = cluster.dir().join(format!("{account}-host.kubeconfig"));
    std::fs::write(
        &path,
        ferrolb_e2e::control_plane::token_kubeconfig(
            &format!("https://{}", plane.address()),
            &plane.ca_file(),
            account,
            &token,
        ),
    )
    .unwrap();
    let client = plane
        .block_on(ferrolb_e2e::control_plane::client_from(&path))
        .unwrap();
    plane
        .block_on(cluster::rules(&client, cluster.namespace()))
        .unwrap()
        .into_iter()
        .filter(|(group, _, _)| group != "authorization.k8s.io" && group != "authentication.k8s.io")
        .collect()
}

/// `kubectl auth can-i --list` as the account, for the record (the assertion above it uses
/// the same SelfSubjectRulesReview through the API).
fn print_can_i(cluster: &Cluster, account: &str) {
    let path = cluster.dir().join(format!("{account}-host.kubeconfig"));
    if let Ok(out) = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&path)
        .args(["auth", "can-i", "--list", "-n", cluster.namespace()])
        .output()
    {
        eprintln!(
            "kubectl auth can-i --list as {account}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Issue 15, bug 4 (least privilege), and the chart's RBAC with the accounts' own tokens: a run
/// that allocates, announces, records, withdraws and restarts, with no request refused and no
/// grant left unused.
#[test]
fn the_chart_grants_what_the_code_uses_and_nothing_is_refused() {
    let (_serial, plane) = tier_or_skip!();
    let lab = Lab::builder().nodes(2).build().unwrap();
    let ns = "rbac";
    let apps = "rbac-apps";
    let mut cluster = stage(plane, &lab, "ferrolb", ns, &[]);
    cluster.app_namespace(apps).unwrap();
    cluster
        .apply(pool(ns, "lan", &["10.250.0.100-10.250.0.110"]))
        .unwrap();
    cluster.apply(l2(ns, "l2", json!({}))).unwrap();
    cluster.start_speakers().unwrap();
    cluster.wait_membership(Duration::from_secs(20)).unwrap();
    cluster.start_controller("a", 1).unwrap();
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    cluster.apply(service(apps, "web", None)).unwrap();
    cluster
        .apply(endpoints(apps, "web", &nodes[0], ip("10.250.0.50")))
        .unwrap();
    cluster
        .apply(endpoints(apps, "web", &nodes[1], ip("10.250.0.51")))
        .unwrap();
    let ips = wait_ips(&cluster, apps, "web");
    cluster
        .wait("a ServiceL2Status for rbac-apps/web", ALLOCATE, |c| {
            (c.l2_records()
                .iter()
                .filter(|(_, s, _)| s == "rbac-apps/web")
                .count()
                == 1)
                .then_some(())
        })
        .unwrap();
    // A restart of both kinds: the controller reads its Lease back and renews it, a speaker
    // takes its record over.
    cluster.stop_controller("a").unwrap();
    cluster.start_controller("b", 2).unwrap();
    let owner = cluster
        .l2_records()
        .into_iter()
        .find(|(_, s, _)| s == "rbac-apps/web")
        .unwrap()
        .0;
    let i = nodes.iter().position(|n| *n == owner).unwrap() + 1;
    cluster.kill_speaker(&owner).unwrap();
    // A new Pod of the node (the crashed one is replaced): its speaker takes the record over.
    cluster.nodes[i - 1].pod = None;
    cluster.start_speaker(i).unwrap();
    let uid = cluster.node(i).unwrap().pod.clone().unwrap().1;
    cluster
        .wait("the restarted speaker owning its record", ALLOCATE, |c| {
            c.l2_records().into_iter().find(|(n, s, o)| {
                *n == owner
                    && s == "rbac-apps/web"
                    && o.pointer("/metadata/ownerReferences/0/uid")
                        .and_then(Value::as_str)
                        == Some(uid.as_str())
            })
        })
        .unwrap();
    cluster
        .wait("the controller leading again", ALLOCATE, |c| {
            c.controller("b")?
                .log()
                .ok()?
                .contains("leading: allocating")
                .then_some(())
        })
        .unwrap();
    assert_eq!(
        cluster.service_ips(apps, "web"),
        ips,
        "a restart changes no IP"
    );
    // Withdrawn on deletion.
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(cluster.admin(), apps);
    plane
        .block_on(services.delete("web", &Default::default()))
        .unwrap();
    cluster
        .wait("no ServiceL2Status left for rbac-apps/web", ALLOCATE, |c| {
            c.l2_records()
                .iter()
                .all(|(_, s, _)| s != "rbac-apps/web")
                .then_some(())
        })
        .unwrap();
    no_forbidden(&cluster);
    for account in [
        cluster.release.controller_account.clone(),
        cluster.release.speaker_account.clone(),
    ] {
        let granted = granted(&cluster, &account);
        print_can_i(&cluster, &account);
        let used = used(&cluster, &account);
        let unused: Vec<_> = granted.difference(&used).cloned().collect();
        assert!(
            unused.is_empty(),
            "{account} is granted, and never used: {unused:?}\nused: {used:?}"
        );
    }
}

fn patch_service_status(cluster: &Cluster, namespace: &str, name: &str, ips: &[&str]) {
    let api: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(cluster.admin(), namespace);
    let ingress: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    let body = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    cluster
        .plane
        .block_on(api.patch_status(name, &Default::default(), &kube::api::Patch::Merge(&body)))
        .unwrap();
}

fn writes_by(cluster: &Cluster, account: &str, since: usize) -> Vec<cluster::AuditEntry> {
    cluster::audit(cluster.plane, &cluster.release.user(account))
        .into_iter()
        .skip(since)
        .filter(|e| !matches!(e.verb.as_str(), "get" | "list" | "watch"))
        .collect()
}

/// Issue 15, bug 1: a controller with `--lb-class` touches only its class's Services; two
/// installs in one namespace (a default one and one with a class) each lead their own Lease,
/// never hand out one address twice from a shared pool, and settle instead of fighting.
#[test]
fn controllers_of_two_classes_share_a_namespace_without_a_fight() {
    let (_serial, plane) = tier_or_skip!();
    let lab = Lab::builder().nodes(2).build().unwrap();
    let ns = "classes";
    let apps = "classes-apps";
    let mut foo = stage(
        plane,
        &lab,
        "foo",
        ns,
        &["loadBalancerClass=example.com/foo"],
    );
    foo.app_namespace(apps).unwrap();
    foo.apply(pool(ns, "shared", &["10.250.0.100-10.250.0.101"]))
        .unwrap();
    // MetalLB (or a default FerroLB) already served this one.
    let mut theirs = service(apps, "theirs", None);
    theirs["metadata"]["annotations"] = json!({"metallb.io/ip-allocated-from-pool": "shared"});
    foo.apply(theirs).unwrap();
    patch_service_status(&foo, apps, "theirs", &["10.250.0.100"]);
    foo.start_controller("foo", 1).unwrap();
    foo.apply(service(apps, "mine", Some("example.com/foo")))
        .unwrap();
    let mine = wait_ips(&foo, apps, "mine");
    assert_eq!(
        mine,
        [ip("10.250.0.101")],
        "the address a Service of another class holds is taken"
    );
    let theirs = foo.service(apps, "theirs").unwrap();
    assert_eq!(
        foo.service_ips(apps, "theirs"),
        [ip("10.250.0.100")],
        "another class's status is left alone"
    );
    assert_eq!(
        theirs
            .metadata
            .annotations
            .unwrap_or_default()
            .get("metallb.io/ip-allocated-from-pool")
            .map(String::as_str),
        Some("shared"),
        "another class's annotation is left alone"
    );
    let account = foo.release.controller_account.clone();
    let touched: Vec<_> = writes_by(&foo, &account, 0)
        .into_iter()
        .filter(|e| e.resource.starts_with("services") && e.name.as_deref() == Some("theirs"))
        .collect();
    assert!(
        touched.is_empty(),
        "the foo controller wrote a default-class Service: {touched:?}"
    );

    // A default install beside it, in the same namespace: its own Lease, and both settle.
    let set = [];
    let default = Cluster::new(plane, &lab, "ferrolb", ns, &set, "classes-default").unwrap();
    assert_ne!(
        default.release.lease(),
        foo.release.lease(),
        "two releases, two Leases"
    );
    let mut default = default;
    default.start_controller("default", 2).unwrap();
    default
        .wait("the default release's controller leading", ALLOCATE, |c| {
            c.controller("default")?
                .log()
                .ok()?
                .contains("leading: allocating")
                .then_some(())
        })
        .unwrap();
    default.apply(service(apps, "plain", None)).unwrap();
    std::thread::sleep(Duration::from_secs(2)); // settling: the count below is what follows
    let (a, b) = (
        cluster::audit(plane, &foo.release.user(&foo.release.controller_account)).len(),
        cluster::audit(
            plane,
            &default.release.user(&default.release.controller_account),
        )
        .len(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let later: Vec<_> = writes_by(&foo, &foo.release.controller_account.clone(), a)
        .into_iter()
        .chain(writes_by(
            &default,
            &default.release.controller_account.clone(),
            b,
        ))
        .collect();
    assert!(
        later.len() <= 2,
        "the two controllers keep writing: {} writes in 3 s: {later:?}",
        later.len()
    );
    assert_eq!(
        default.service_ips(apps, "plain"),
        Vec::<IpAddr>::new(),
        "the pool is full: .100 is theirs, .101 mine"
    );
    assert_eq!(foo.service_ips(apps, "theirs"), [ip("10.250.0.100")]);
    assert_eq!(foo.service_ips(apps, "mine"), [ip("10.250.0.101")]);
    no_forbidden(&foo);
    no_forbidden(&default);
}

/// Issue 15, bug 2: a leader stopped with SIGTERM releases its Lease, so the standby leads at
/// once; a leader killed is replaced within the lease duration plus a retry period.
#[test]
fn a_stopped_leader_hands_over_at_once_and_a_killed_one_within_the_lease() {
    let (_serial, plane) = tier_or_skip!();
    let lab = Lab::builder().nodes(2).build().unwrap();
    let ns = "lease";
    let mut cluster = stage(
        plane,
        &lab,
        "ferrolb",
        ns,
        &["controller.leaderElection.leaseDurationSeconds=4"],
    );
    cluster.start_controller("a", 1).unwrap();
    let leader = |c: &Cluster| -> Option<String> {
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(c.admin(), c.namespace());
        let lease = c
            .plane
            .block_on(leases.get_opt(&c.release.lease()?))
            .ok()??;
        lease.spec?.holder_identity.filter(|h| !h.is_empty())
    };
    let first = cluster.wait("a leader", ALLOCATE, leader).unwrap();
    assert_eq!(first, "ferrolb-controller-a");
    cluster.start_controller("b", 2).unwrap();
    cluster
        .wait("b standing by", ALLOCATE, |c| {
            c.controller("b")?
                .log()
                .ok()?
                .contains("serving /metrics")
                .then_some(())
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    cluster.stop_controller("a").unwrap();
    cluster
        .wait("b leading", Duration::from_secs(20), |c| {
            (leader(c)? == "ferrolb-controller-b").then_some(())
        })
        .unwrap();
    let handover = stopped.elapsed();
    assert!(
        handover < Duration::from_secs(3),
        "a stopped leader's Lease was taken over after {handover:?}"
    );
    cluster.start_controller("a", 1).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    cluster.kill_controller("b").unwrap();
    cluster
        .wait("a leading again", Duration::from_secs(30), |c| {
            (leader(c)? == "ferrolb-controller-a").then_some(())
        })
        .unwrap();
    let takeover = killed.elapsed();
    eprintln!("lease: stop hand-over {handover:?}, crash takeover {takeover:?} (duration 4 s)");
    assert!(
        takeover <= Duration::from_secs(4 + 3),
        "crash takeover took {takeover:?} with a 4 s lease"
    );
    no_forbidden(&cluster);
}

/// Issue 15, bug 3: node names of up to 253 characters, records only for what is answered, on
/// the interfaces answering, withdrawn on a graceful stop; a speaker without a Node says so;
/// each process names itself (User-Agent, reportingInstance).
#[test]
fn records_events_and_identities_as_a_real_server_checks_them() {
    let (_serial, plane) = tier_or_skip!();
    let lab = Lab::builder().nodes(2).build().unwrap();
    let ns = "records";
    let apps = "records-apps";
    let long = format!("records-{}.example.com", "a".repeat(70));
    let mut cluster = stage(plane, &lab, "ferrolb", ns, &[]);
    // Node 1 gets an FQDN longer than a label value may be.
    cluster.nodes[0].name = long.clone();
    let n1 = cluster.nodes[0].host.ipv4();
    cluster.create_node(&long, IpAddr::V4(n1)).unwrap();
    cluster.app_namespace(apps).unwrap();
    cluster
        .apply(pool(ns, "lan", &["10.250.0.100-10.250.0.110"]))
        .unwrap();
    cluster
        .apply(pool(ns, "nowhere", &["10.250.0.120-10.250.0.121"]))
        .unwrap();
    cluster
        .apply(l2(ns, "l2", json!({"ipAddressPools": ["lan"]})))
        .unwrap();
    cluster
        .apply(l2(
            ns,
            "missing-nic",
            json!({"ipAddressPools": ["nowhere"], "interfaces": ["eth9"]}),
        ))
        .unwrap();
    cluster.start_speakers().unwrap();
    cluster.wait_membership(Duration::from_secs(20)).unwrap();
    // Replica a runs as an operator would run it by hand: no POD_NAME (nor HOSTNAME). It leads,
    // b stands by.
    cluster.controller_env(&[("POD_NAME", "")]);
    cluster.start_controller("a", 1).unwrap();
    cluster
        .wait("a leading", ALLOCATE, |c| {
            c.controller("a")?
                .log()
                .ok()?
                .contains("leading: allocating")
                .then_some(())
        })
        .unwrap();
    cluster.controller_env(&[]);
    cluster.start_controller("b", 2).unwrap();
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    // Services until one is owned by the long-named node.
    let mut owned_by_long = None;
    for k in 0..6 {
        let name = format!("web{k}");
        cluster.apply(service(apps, &name, None)).unwrap();
        for node in &nodes {
            cluster
                .apply(endpoints(apps, &name, node, ip("10.250.0.50")))
                .unwrap();
        }
        wait_ips(&cluster, apps, &name);
        let (node, _, record) = cluster
            .wait(&format!("a ServiceL2Status for {name}"), ALLOCATE, |c| {
                c.l2_records()
                    .into_iter()
                    .find(|(_, s, _)| *s == format!("{apps}/{name}"))
            })
            .unwrap();
        assert_eq!(
            record.pointer("/status/interfaces").cloned(),
            Some(json!([{"name": "eth0"}])),
            "the record names the interface that answers"
        );
        if node == long {
            owned_by_long = Some(name);
            break;
        }
    }
    let owned = owned_by_long.expect("none of 6 Services elected the long-named node");
    // An interface the node lacks: an announceFailed event, and no record.
    let mut nowhere = service(apps, "nowhere", None);
    nowhere["metadata"]["annotations"] = json!({"metallb.io/address-pool": "nowhere"});
    cluster.apply(nowhere).unwrap();
    for node in &nodes {
        cluster
            .apply(endpoints(apps, "nowhere", node, ip("10.250.0.50")))
            .unwrap();
    }
    wait_ips(&cluster, apps, "nowhere");
    cluster
        .wait("announceFailed on records-apps/nowhere", ALLOCATE, |c| {
            c.events(apps, "nowhere")
                .iter()
                .any(|e| e["reason"] == "announceFailed")
                .then_some(())
        })
        .unwrap();
    assert!(
        cluster
            .l2_records()
            .iter()
            .all(|(_, s, _)| s != "records-apps/nowhere"),
        "a record claims an announcement on a missing interface"
    );
    // Who reported what.
    let events = cluster.events(apps, &owned);
    let instances: BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["reportingInstance"].as_str().map(str::to_owned))
        .collect();
    assert!(
        events.iter().any(|e| e["reason"] == "nodeAssigned"),
        "nodeAssigned on {owned}: {events:?}"
    );
    assert!(
        !instances.contains("ferrolb-controller"),
        "the controller reports as its replica: {instances:?}"
    );
    for e in cluster.list(
        &cluster::resource("events.k8s.io", "v1", "Event", "events"),
        Some(apps),
    ) {
        let instance = e["reportingInstance"].as_str().unwrap_or_default();
        assert!(
            instance.len() <= 128,
            "reportingInstance too long: {instance}"
        );
    }
    let pid = cluster.controller("a").unwrap().pid();
    let controller_instances: BTreeSet<String> = cluster
        .list(
            &cluster::resource("events.k8s.io", "v1", "Event", "events"),
            Some(apps),
        )
        .iter()
        .filter(|e| e["reportingController"] == "ferrolb-controller")
        .filter_map(|e| e["reportingInstance"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        controller_instances,
        BTreeSet::from([format!("ferrolb-controller-{pid}")]),
        "the leader outside a pod names itself by its process"
    );
    for account in [
        cluster.release.controller_account.clone(),
        cluster.release.speaker_account.clone(),
    ] {
        let agents: BTreeSet<String> = cluster::audit(plane, &cluster.release.user(&account))
            .into_iter()
            .map(|e| e.user_agent)
            .collect();
        assert!(
            agents
                .iter()
                .all(|a| a.starts_with("ferrolb-controller/") || a.starts_with("ferrolb-speaker/")),
            "{account} sent User-Agents {agents:?}"
        );
    }
    // A graceful stop withdraws the long-named node's records.
    cluster.stop_speaker(&long).unwrap();
    cluster
        .wait(
            &format!("no record of {long} after its graceful stop"),
            Duration::from_secs(10),
            |c| {
                c.l2_records()
                    .iter()
                    .all(|(node, _, _)| *node != long)
                    .then_some(())
            },
        )
        .unwrap();
    // A speaker whose Node does not exist says so.
    cluster.nodes[0].name = "records-ghost".to_owned();
    cluster.nodes[0].pod = None;
    // With the chart's speaker.membership.advertiseHostIP it still joins: it must say why it is
    // never elected.
    cluster.speaker_env(&[("FERROLB_MEMBERSHIP_ADVERTISE", &format!("{n1}:7946"))]);
    cluster.start_speaker(1).unwrap();
    cluster
        .wait(
            "the ghost speaker saying its Node does not exist",
            ALLOCATE,
            |c| {
                c.speaker("records-ghost")?
                    .log()
                    .ok()?
                    .contains("Node records-ghost does not exist")
                    .then_some(())
            },
        )
        .unwrap();
    no_forbidden(&cluster);
}

/// `ferrolb-controller status` against the cluster, as the admin.
fn status_command(cluster: &Cluster) -> String {
    let bin = ferrolb_e2e::install::binary("ferrolb-controller").unwrap();
    let out = std::process::Command::new(bin)
        .args(["status", "--namespace", cluster.namespace()])
        .env("KUBECONFIG", cluster.plane.admin_kubeconfig())
        .env_remove("FERROLB_LB_CLASS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metrics(cluster: &Cluster, node: usize, port: u16) -> String {
    let host = cluster.node(node).unwrap().host.clone();
    let out = host
        .ns()
        .run(["curl", "-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl(cluster: &Cluster, args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.plane.admin_kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn valid_condition(cluster: &Cluster, pool: &str) -> Option<Value> {
    let resource = cluster::resource("metallb.io", "v1beta1", "IPAddressPool", "ipaddresspools");
    cluster
        .list(&resource, Some(cluster.namespace()))
        .into_iter()
        .find(|p| p.pointer("/metadata/name").and_then(Value::as_str) == Some(pool))?
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Valid")
        .cloned()
}

/// Issue 15, bug 3: `ferrolb-controller status` shows only problems that still hold, the
/// allocator metric counts only the pools that hand out addresses, and the Valid condition's
/// lastTransitionTime moves only when its status does.
#[test]
fn status_metrics_and_conditions_say_what_holds_now() {
    let (_serial, plane) = tier_or_skip!();
    let lab = Lab::builder().nodes(1).build().unwrap();
    let ns = "views";
    let apps = "views-apps";
    // The API server would refuse the overlap below: this is what a cluster without the
    // admission policy (older than 1.30) lets through.
    let mut cluster = stage(
        plane,
        &lab,
        "ferrolb",
        ns,
        &["admissionPolicy.enabled=false"],
    );
    cluster.app_namespace(apps).unwrap();
    cluster.start_controller("a", 1).unwrap();
    cluster.apply(service(apps, "early", None)).unwrap();
    cluster
        .wait("AllocationFailed on early (no pool yet)", ALLOCATE, |c| {
            c.events(apps, "early")
                .iter()
                .any(|e| e["reason"] == "AllocationFailed")
                .then_some(())
        })
        .unwrap();
    cluster
        .apply(pool(ns, "old", &["10.250.0.100-10.250.0.103"]))
        .unwrap();
    wait_ips(&cluster, apps, "early");
    let text = status_command(&cluster);
    assert!(
        !text.contains("! views-apps/early: AllocationFailed"),
        "a resolved problem is listed:\n{text}"
    );
    // A younger pool overlapping the old one is invalid and hands out nothing.
    std::thread::sleep(Duration::from_millis(1100)); // a later creationTimestamp (whole seconds)
    cluster
        .apply(pool(ns, "young", &["10.250.0.102-10.250.0.105"]))
        .unwrap();
    cluster
        .wait("young marked invalid", ALLOCATE, |c| {
            (valid_condition(c, "young")?["status"] == "False").then_some(())
        })
        .unwrap();
    let before = valid_condition(&cluster, "old").unwrap();
    cluster.apply(service(apps, "late", None)).unwrap();
    wait_ips(&cluster, apps, "late");
    cluster
        .wait("old counting two", ALLOCATE, |c| {
            let resource =
                cluster::resource("metallb.io", "v1beta1", "IPAddressPool", "ipaddresspools");
            c.list(&resource, Some(ns))
                .into_iter()
                .find(|p| p["metadata"]["name"] == "old" && p["status"]["assignedIPv4"] == 2)
        })
        .unwrap();
    let after = valid_condition(&cluster, "old").unwrap();
    assert_eq!(
        before["lastTransitionTime"], after["lastTransitionTime"],
        "the count changed, not the condition"
    );
    let text = metrics(&cluster, 1, 7472);
    let line = |pool: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("ferrolb_allocator_addresses_total")
                    && l.contains(&format!("pool=\"{pool}\""))
            })
            .map(str::to_owned)
    };
    assert!(line("old").is_some_and(|l| l.ends_with(" 4")), "{text}");
    assert!(
        line("young").is_none_or(|l| l.ends_with(" 0")),
        "the rejected pool's addresses are counted: {:?}",
        line("young")
    );
    no_forbidden(&cluster);
}

/// Issue 15, bug 5 and the API: MetalLB's documented manifests apply unchanged; invalid pools
/// are refused at `kubectl apply`, naming the field (CRD rules) or the pool overlapped (the
/// chart's admission policy).
#[test]
fn the_api_server_takes_metallb_manifests_and_refuses_invalid_pools() {
    let (_serial, plane) = tier_or_skip!();
    let lab = Lab::builder().nodes(1).build().unwrap();
    let ns = "metallb-system";
    let cluster = stage(plane, &lab, "ferrolb", ns, &[]);
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/fixtures/metallb");
    for file in ["ipaddresspools.yaml", "l2advertisements.yaml"] {
        let text = std::fs::read_to_string(fixtures.join(file)).unwrap();
        let (ok, out) = kubectl(&cluster, &["apply", "-f", "-"], &text);
        assert!(ok, "MetalLB's {file} refused:\n{out}");
    }
    let bad = |name: &str, spec: &str| {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
        )
    };
    for (name, spec, wanted) in [
        (
            "reversed",
            "{addresses: [10.250.9.20-10.250.9.10]}",
            "spec.addresses[0]",
        ),
        ("wide", "{addresses: [10.250.9.0/33]}", "spec.addresses[0]"),
        (
            "mixed",
            "{addresses: [10.250.9.1-fd00::1]}",
            "spec.addresses[0]",
        ),
        (
            "garbage",
            "{addresses: [10.250.9.0/24, not-an-address]}",
            "spec.addresses[1]",
        ),
        (
            "typed",
            "{addresses: [10.250.9.0/24], autoAssign: maybe}",
            "spec.autoAssign",
        ),
        ("overlap", "{addresses: [192.168.10.128/25]}", "first-pool"),
    ] {
        let (ok, out) = kubectl(&cluster, &["apply", "-f", "-"], &bad(name, spec));
        assert!(!ok, "pool {name} ({spec}) was accepted:\n{out}");
        assert!(
            out.contains(wanted),
            "pool {name}: the refusal does not name {wanted}:\n{out}"
        );
        eprintln!("refused {name}: {}", out.trim());
    }
    // Editing a pool in place is not an overlap with itself.
    let (ok, out) = kubectl(
        &cluster,
        &["apply", "-f", "-"],
        &bad("production", "{addresses: [42.176.25.64/29]}"),
    );
    assert!(ok, "{out}");
}

/// The longest silence the client may hear from a Service's IP across restarts: the failover
/// target (README: well under a second).
const FAILOVER_TARGET: Duration = Duration::from_secs(1);

/// Gaps between consecutive ARP replies for `ip` (any MAC), longest first.
fn longest_gap(frames: &[ferrolb_e2e::CapturedFrame], ip: std::net::Ipv4Addr) -> Duration {
    let times: Vec<_> = ferrolb_e2e::journey::replies(frames, ip)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    times
        .windows(2)
        .filter_map(|w| w[1].duration_since(w[0]).ok())
        .max()
        .unwrap_or_default()
}

fn v4(ip: IpAddr) -> std::net::Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => panic!("expected IPv4, got {v6}"),
    }
}

/// The scenario suite's core with the real API server as the backend and the lab as the nodes
/// (the lab plays kube-proxy, nginx the ingress): allocation, arping, curl, crash takeover
/// with the record moved, the controller restarted 5 times and every speaker twice without an
/// IP change or an ARP gap beyond the failover target, deletion.
#[test]
fn the_scenario_core_runs_on_the_real_server() {
    let (_serial, plane) = tier_or_skip!();
    lab_or_skip!("curl", "nginx");
    let mut journey = ferrolb_e2e::Journey::new(Lab::builder().nodes(3)).unwrap();
    let ns = "core";
    let apps = "core-apps";
    let mut cluster = stage(plane, &journey.lab, "ferrolb", ns, &[]);
    cluster.app_namespace(apps).unwrap();
    cluster
        .apply(pool(ns, "lan", &["10.250.0.100-10.250.0.110"]))
        .unwrap();
    cluster.apply(l2(ns, "l2", json!({}))).unwrap();
    cluster.start_speakers().unwrap();
    cluster.wait_membership(Duration::from_secs(20)).unwrap();
    cluster.start_controller("a", 1).unwrap();
    let ingress = IpAddr::V4(journey.ingress_host().unwrap().ipv4());
    let applied = Instant::now();
    cluster.apply(service(apps, "web", None)).unwrap();
    cluster
        .apply(endpoints(
            apps,
            "web",
            &cluster.node(1).unwrap().name.clone(),
            ingress,
        ))
        .unwrap();
    let ips = wait_ips(&cluster, apps, "web");
    let vip = ips[0];
    journey.expose(vip).unwrap();
    let owner = journey
        .arp_owner("eth0", v4(vip), ALLOCATE)
        .unwrap()
        .clone();
    eprintln!(
        "core: {vip} in status and answered by {} {:?} after kubectl apply",
        owner.name(),
        applied.elapsed()
    );
    let owner_node = cluster
        .nodes
        .iter()
        .find(|n| n.host.name() == owner.name())
        .unwrap()
        .name
        .clone();
    let records = |c: &Cluster| -> Vec<String> {
        c.l2_records()
            .into_iter()
            .filter(|(_, s, _)| s == "core-apps/web")
            .map(|(n, _, _)| n)
            .collect()
    };
    cluster
        .wait("the owner's record, and only it", ALLOCATE, |c| {
            (records(c) == [owner_node.clone()]).then_some(())
        })
        .unwrap();
    let page = journey.curl_until(vip, ALLOCATE).unwrap();
    assert!(page.starts_with("ingress proxy ing"), "{page}");
    assert_eq!(
        journey.came_through(&page).map(|h| h.name().to_owned()),
        Some(owner.name().to_owned())
    );
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(cluster.admin(), apps);
    let annotations = plane
        .block_on(services.get("web"))
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default();
    assert_eq!(
        annotations
            .get("metallb.io/ip-allocated-from-pool")
            .map(String::as_str),
        Some("lan")
    );
    let reasons: BTreeSet<String> = cluster
        .events(apps, "web")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect();
    assert!(
        reasons.contains("IPAllocated") && reasons.contains("nodeAssigned"),
        "{reasons:?}"
    );
    let counters = cluster
        .list(
            &cluster::resource("metallb.io", "v1beta1", "IPAddressPool", "ipaddresspools"),
            Some(ns),
        )
        .into_iter()
        .find(|p| p["metadata"]["name"] == "lan")
        .map(|p| {
            (
                p["status"]["assignedIPv4"].clone(),
                p["status"]["availableIPv4"].clone(),
            )
        });
    assert_eq!(counters, Some((json!(1), json!(10))));

    // Crash of the owner: another node answers within the failover target, and its record
    // replaces the crashed one's once the crashed speaker's Pod is gone.
    let i = cluster
        .nodes
        .iter()
        .position(|n| n.name == owner_node)
        .unwrap()
        + 1;
    let crashed_pod = cluster.node(i).unwrap().pod.clone().unwrap().0;
    let takeover = journey
        .measure_takeover("eth0", v4(vip), owner.mac(), Duration::from_secs(5), |_| {
            cluster.kill_speaker(&owner_node)
        })
        .unwrap();
    eprintln!(
        "core: crash takeover {:?} to {}",
        takeover.elapsed, takeover.mac
    );
    assert!(
        takeover.elapsed < FAILOVER_TARGET,
        "takeover took {:?}",
        takeover.elapsed
    );
    assert_eq!(takeover.others_before, 0);
    let successor = cluster.node_by_mac(takeover.mac).unwrap().name.clone();
    cluster.delete_pod(&crashed_pod).unwrap();
    // The garbage collector learns of a CRD's kind on its next discovery (every 30 s).
    cluster
        .wait(
            "the record moved to the successor",
            Duration::from_secs(60),
            |c| (records(c) == [successor.clone()]).then_some(()),
        )
        .unwrap();
    cluster.nodes[i - 1].pod = None;
    cluster.start_speaker(i).unwrap();
    cluster.wait_membership(Duration::from_secs(20)).unwrap();

    // Restarts under a continuous arping: no IP change, no silence beyond the target.
    let client = journey.client().ns().clone();
    let capture = client.capture("eth0", "arp").unwrap();
    let prober =
        ferrolb_e2e::tools::arping_every_10ms(&client, "eth0", v4(vip), Duration::from_secs(600))
            .unwrap();
    for k in 0..5 {
        let id = format!("r{k}");
        let previous = if k == 0 {
            "a".to_owned()
        } else {
            format!("r{}", k - 1)
        };
        cluster.stop_controller(&previous).unwrap();
        cluster.start_controller(&id, 1 + k % 3).unwrap();
        cluster
            .wait(&format!("controller {id} leading"), ALLOCATE, |c| {
                c.controller(&id)?
                    .log()
                    .ok()?
                    .contains("leading: allocating")
                    .then_some(())
            })
            .unwrap();
        assert_eq!(
            cluster.service_ips(apps, "web"),
            ips,
            "controller restart {k} changed the IPs"
        );
    }
    for round in 0..2 {
        for node in 1..=3 {
            cluster.restart_speaker(node).unwrap();
            cluster.wait_membership(Duration::from_secs(20)).unwrap();
            assert_eq!(
                cluster.service_ips(apps, "web"),
                ips,
                "speaker restart {round}/{node} changed the IPs"
            );
        }
    }
    let _ = prober.kill();
    let frames = capture.stop().unwrap();
    let gap = longest_gap(&frames, v4(vip));
    eprintln!("core: longest ARP silence over 5 controller and 6 speaker restarts: {gap:?}");
    assert!(
        gap < FAILOVER_TARGET,
        "the client heard nothing for {gap:?}"
    );
    cluster
        .wait("one record after the restarts", ALLOCATE, |c| {
            (records(c).len() == 1).then_some(())
        })
        .unwrap();

    // Deletion: the IP goes quiet and the record goes.
    plane
        .block_on(services.delete("web", &Default::default()))
        .unwrap();
    cluster
        .wait("no record for web", ALLOCATE, |c| {
            records(c).is_empty().then_some(())
        })
        .unwrap();
    let answers = journey.arp_answers("eth0", v4(vip), 3).unwrap();
    assert!(
        answers.is_empty(),
        "{vip} still answered by {answers:?} after deletion"
    );
    no_forbidden(&cluster);
}
