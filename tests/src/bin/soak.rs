//! Membership soak (not run in CI): FerroLB at default settings in the lab, 1% random loss on
//! every host's link (tc netem on each eth0, or an nftables random drop where the kernel has no
//! netem; every datagram crosses exactly one lossy hop),
//! and one speaker paused (SIGSTOP) for 100 ms every 10 s, in turn. Counts members declared
//! dead (must be 0: a 100 ms pause is below what the defaults tolerate) and ownership changes
//! of the Service IP per pause (must be at most 1).
//!
//! ```text
//! cargo build -p ferrolb-speaker -p ferrolb-controller
//! cargo run -p ferrolb-e2e --bin soak -- --minutes 10 --members 5
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::thread;
use std::time::{Duration, Instant};

use ferrolb_e2e::install::manifests;
use ferrolb_e2e::{Background, Journey, Lab};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 1% random loss on everything `host` receives on eth0: tc netem where the kernel has it,
/// else an nftables rule dropping a random 1% (kernels built without sch_netem, such as some
/// microVM kernels). Either way every datagram crosses exactly one lossy hop.
fn add_loss(host: &ferrolb_e2e::Host) -> Result<(), Box<dyn std::error::Error>> {
    let netem = host.ns().exec([
        "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", "1%",
    ])?;
    if netem.status.success() {
        return Ok(());
    }
    let rules = "table inet soak {\n  chain loss {\n    type filter hook ingress device \"eth0\" priority 0;\n    numgen random mod 100 < 1 drop\n  }\n}\n";
    let path = std::env::temp_dir().join(format!("soak-loss-{}.nft", host.name()));
    std::fs::write(&path, rules)?;
    let out = host.ns().exec(["nft", "-f", &path.to_string_lossy()])?;
    if !out.status.success() {
        return Err(format!(
            "neither tc netem nor nftables can drop 1% on {}: {}",
            host.name(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let minutes = arg("--minutes", 10);
    let members = arg("--members", 5) as usize;
    let pause = Duration::from_millis(arg("--pause-ms", 100));
    let every = Duration::from_secs(arg("--every-secs", 10));
    let mut builder = Lab::builder().nodes(members.clamp(1, 9));
    for k in 10..(10 + members.saturating_sub(9)) {
        builder = builder.extra(&format!("m{k}"), Ipv4Addr::new(10, 250, 0, 150 + k as u8));
    }
    let mut journey = Journey::new(builder)?;
    let install = &mut journey.install;
    install.write("pool.yaml", &manifests::pool("lan", &["10.250.0.100/30"]))?;
    install.write("l2.yaml", &manifests::l2_advertisement("l2", &[]))?;
    install.start_all()?;
    install.write("apps/web.yaml", &manifests::service("demo", "web").yaml())?;
    let ip = install.wait_ip("demo", "web", Duration::from_secs(20))?;
    let IpAddr::V4(ip) = ip else {
        return Err("expected IPv4".into());
    };
    let nodes: Vec<String> = journey
        .lab
        .nodes()
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    for node in journey.lab.nodes() {
        add_loss(node)?;
    }
    journey.arp_owner("eth0", ip, Duration::from_secs(10))?;
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut pauses = 0usize;
    let mut last_owner_changes = owner_changes(&journey, &nodes);
    let mut worst = 0usize;
    eprintln!(
        "soak: {} members, 1% loss, {pause:?} pause every {every:?}, {minutes} min",
        nodes.len()
    );
    while Instant::now() < end {
        thread::sleep(every);
        let victim = &nodes[pauses % nodes.len()];
        let process: &Background = journey.install.speaker(victim).ok_or("speaker missing")?;
        process.pause()?;
        thread::sleep(pause);
        process.resume()?;
        pauses += 1;
        let changes = owner_changes(&journey, &nodes);
        let new = changes.saturating_sub(last_owner_changes);
        worst = worst.max(new);
        last_owner_changes = changes;
        let deaths = deaths(&journey, &nodes);
        eprintln!(
            "pause {pauses} of {victim}: ownership changes since last pause {new}, deaths so far {}",
            deaths.len()
        );
    }
    // Wait out the last pause's consequences.
    thread::sleep(Duration::from_secs(2));
    let deaths = deaths(&journey, &nodes);
    let changes = owner_changes(&journey, &nodes);
    worst = worst.max(changes.saturating_sub(last_owner_changes));
    println!(
        "soak over {:.0} s, {} members, 1% loss, {pauses} pauses of {pause:?}: {} members declared dead {:?}; ownership changes of {ip} at most {worst} per pause",
        start.elapsed().as_secs_f64(),
        nodes.len(),
        deaths.len(),
        deaths
    );
    if !deaths.is_empty() || worst > 1 {
        std::process::exit(1);
    }
    Ok(())
}

/// `member dead` lines in every speaker's log.
fn deaths(journey: &Journey, nodes: &[String]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| journey.install.speaker(n)?.log().ok())
        .flat_map(|log| {
            log.lines()
                .filter(|l| l.contains("member dead"))
                .map(|l| {
                    l.chars()
                        .skip(l.find("member dead").unwrap_or(0))
                        .take(120)
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// How many times any speaker started announcing the Service since the start.
fn owner_changes(journey: &Journey, nodes: &[String]) -> usize {
    nodes
        .iter()
        .filter_map(|n| journey.install.speaker(n)?.log().ok())
        .map(|log| {
            log.lines()
                .filter(|l| l.contains("announcing from node"))
                .count()
        })
        .sum::<usize>()
        .saturating_sub(1)
}
