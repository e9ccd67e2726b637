//! Figures with a real Kubernetes API server as the backend (the tier's control plane: etcd,
//! kube-apiserver v1.33, kube-controller-manager), FerroLB installed as the chart installs it,
//! a lab of 3 nodes:
//!
//! 1. from the apply of a Service (create, as `kubectl apply` does) to its IP in
//!    `status.loadBalancer.ingress` (admin client polling every 2 ms) and to the first ARP reply
//!    for it (client capture; the client arpings every 10 ms from before the apply), median of N;
//! 2. failover with the real API backend: the owner's speaker SIGKILLed at a random moment, to
//!    the first ARP reply from another MAC (capture timestamps), N trials;
//! 3. resident memory of the controller and each speaker with 1,000 Services (and their
//!    EndpointSlices) in the server.
//!
//! ```text
//! cargo build -p ferrolb-controller -p ferrolb-speaker -p ferrolb-e2e --bins
//! target/debug/kube-bench --trials 20 --services 1000
//! ```
//!
//! Needs root, arping, tcpdump, etcd, openssl, curl, setpriv, helm, and the servers
//! (`KUBEBUILDER_ASSETS` or `../shared/kube/install`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use ferrolb_e2e::cluster::Cluster;
use ferrolb_e2e::journey::replies;
use ferrolb_e2e::{ControlPlane, Lab, tools};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "bench";
const APPS: &str = "bench-apps";

fn main() -> anyhow::Result<()> {
    let mut trials = 20usize;
    let mut services = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--trials" => trials = args.next().and_then(|v| v.parse().ok()).unwrap_or(trials),
            "--services" => services = args.next().and_then(|v| v.parse().ok()).unwrap_or(services),
            other => anyhow::bail!("unknown argument {other} (use --trials N, --services N)"),
        }
    }
    let plane = ControlPlane::start()?;
    let lab = Lab::builder().nodes(3).build()?;
    let mut cluster = Cluster::new(&plane, &lab, "ferrolb", NS, &[], NS)?;
    cluster.app_namespace(APPS)?;
    cluster.apply(pool("lan", &["10.250.0.100-10.250.0.199"]))?;
    cluster.apply(pool("many", &["10.250.8.0/22"]))?;
    cluster.apply(
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
        "metadata": {"name": "l2", "namespace": NS}, "spec": {}}),
    )?;
    cluster.start_speakers()?;
    cluster.wait_membership(Duration::from_secs(30))?;
    cluster.start_controller("a", 1)?;
    cluster.wait("the controller leading", Duration::from_secs(30), |c| {
        c.controller("a")?
            .log()
            .ok()?
            .contains("leading: allocating")
            .then_some(())
    })?;

    // 1. apply -> IP in status -> first ARP reply.
    let client = lab.client().ns().clone();
    let mut to_status = Vec::new();
    let mut to_arp = Vec::new();
    for k in 0..trials {
        let ip = Ipv4Addr::new(10, 250, 0, 100 + u8::try_from(k % 90).unwrap_or(0));
        let name = format!("apply-{k}");
        let capture = client.capture("eth0", "arp")?;
        let prober = tools::arping_every_10ms(&client, "eth0", ip, Duration::from_secs(30))?;
        let mut svc = service(&name, "lan");
        svc["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] = json!(ip.to_string());
        let node = cluster.node(1)?.name.clone();
        cluster.apply(endpoints(&name, &node))?;
        let applied = SystemTime::now();
        let started = Instant::now();
        cluster.apply(svc)?;
        cluster.wait(&format!("{name} in status"), Duration::from_secs(30), |c| {
            (!c.service_ips(APPS, &name).is_empty()).then_some(())
        })?;
        to_status.push(started.elapsed());
        let frames =
            capture.wait_for("the first ARP reply", Duration::from_secs(30), |frames| {
                !replies(frames, ip).is_empty()
            })?;
        let _ = prober.kill();
        let _ = capture.stop();
        let first = replies(&frames, ip)
            .first()
            .map(|(ts, _)| ts.duration_since(applied).unwrap_or_default())
            .unwrap_or_default();
        to_arp.push(first);
    }
    report("apply -> IP in status", &to_status);
    report("apply -> first ARP reply", &to_arp);

    // 2. Failover: SIGKILL of the owner's speaker at a random moment.
    let ip = Ipv4Addr::new(10, 250, 0, 199);
    let mut svc = service("failover", "lan");
    svc["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] = json!(ip.to_string());
    for i in 1..=3 {
        let node = cluster.node(i)?.name.clone();
        cluster.apply(endpoints("failover", &node))?;
    }
    cluster.apply(svc)?;
    let mut takeovers = Vec::new();
    for _ in 0..trials {
        let owner_mac = tools::arping_until(&client, "eth0", ip, Duration::from_secs(30), |m| {
            m.len() == 1
        })?
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no owner for {ip}"))?;
        let (i, owner) = cluster
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.host.mac() == owner_mac)
            .map(|(i, n)| (i + 1, n.name.clone()))
            .ok_or_else(|| anyhow::anyhow!("{owner_mac} is no node's"))?;
        let capture = client.capture("eth0", "arp")?;
        let prober = tools::arping_every_10ms(&client, "eth0", ip, Duration::from_secs(30))?;
        capture.wait_for("a reply before the crash", Duration::from_secs(10), |f| {
            replies(f, ip).iter().any(|(_, m)| *m == owner_mac)
        })?;
        std::thread::sleep(Duration::from_millis(random_below(100)));
        let failed = SystemTime::now();
        cluster.kill_speaker(&owner)?;
        let frames =
            capture.wait_for("a reply from another node", Duration::from_secs(10), |f| {
                replies(f, ip)
                    .iter()
                    .any(|(t, m)| *t >= failed && *m != owner_mac)
            })?;
        let _ = prober.kill();
        let _ = capture.stop();
        if let Some((t, _)) = replies(&frames, ip)
            .into_iter()
            .find(|(t, m)| *t >= failed && *m != owner_mac)
        {
            takeovers.push(t.duration_since(failed).unwrap_or_default());
        }
        // The crashed node comes back (a new Pod), and gets its IPs back.
        if let Some((pod, _)) = cluster.node(i)?.pod.clone() {
            cluster.delete_pod(&pod)?;
        }
        cluster.nodes[i - 1].pod = None;
        cluster.start_speaker(i)?;
        cluster.wait_membership(Duration::from_secs(30))?;
    }
    report("failover, owner's speaker SIGKILLed", &takeovers);

    // 3. Memory with many Services.
    let admin = plane.admin();
    let api: Api<Service> = Api::namespaced(admin.clone(), APPS);
    let started = Instant::now();
    plane.block_on(async {
        for k in 0..services {
            let name = format!("many-{k}");
            let svc: Service = serde_json::from_value(service(&name, "many"))?;
            api.create(&PostParams::default(), &svc).await?;
            let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
                serde_json::from_value(endpoints(&name, &format!("{NS}-n{}", 1 + k % 3)))?;
            Api::namespaced(admin.clone(), APPS)
                .create(&PostParams::default(), &slice)
                .await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let created = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = plane.block_on(api.list(&ListParams::default()))?;
        let served = list
            .items
            .iter()
            .filter(|s| {
                s.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("many-"))
            })
            .filter(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .is_some_and(|i| !i.is_empty())
            })
            .count();
        if served >= services {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {served} of {services} Services got an IP in 600 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{services} Services and EndpointSlices created in {:.1} s, all allocated after {:.1} s",
        created.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // Let the speakers finish probing and recording what they own.
    std::thread::sleep(Duration::from_secs(10));
    if let Some(controller) = cluster.controller("a") {
        println!(
            "controller RSS with {services} Services: {} MiB",
            rss_mib(controller.pid())
        );
    }
    for node in cluster.nodes.clone() {
        if let Some(speaker) = cluster.speaker(&node.name) {
            println!(
                "speaker {} RSS with {services} Services: {} MiB",
                node.name,
                rss_mib(speaker.pid())
            );
        }
    }
    for (name, pid) in plane.pids() {
        println!("{name} RSS: {} MiB", rss_mib(pid));
    }
    let forbidden = cluster.forbidden();
    anyhow::ensure!(forbidden.is_empty(), "forbidden: {forbidden:?}");
    Ok(())
}

fn pool(name: &str, addresses: &[&str]) -> Value {
    json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": name, "namespace": NS}, "spec": {"addresses": addresses}})
}

fn service(name: &str, pool: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": APPS, "annotations": {"metallb.io/address-pool": pool}},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn endpoints(service: &str, node: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-{node}"), "namespace": APPS,
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [IpAddr::from([10, 250, 0, 50]).to_string()], "conditions": {"ready": true}, "nodeName": node}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]})
}

fn rss_mib(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(|| "?".to_owned(), |kb| format!("{:.1}", kb / 1024.0))
}

fn random_below(max: u64) -> u64 {
    RandomState::new().build_hasher().finish() % max.max(1)
}

fn report(what: &str, samples: &[Duration]) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{what}: n={} median {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
        ms.len(),
        at(0.5),
        at(0.9),
        ms.first().copied().unwrap_or(0.0),
        ms.last().copied().unwrap_or(0.0)
    );
}
