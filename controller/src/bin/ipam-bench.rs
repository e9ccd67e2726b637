//! Allocation benchmark for `controller::ipam`: prints time and memory for 100,000 allocations
//! with releases interleaved, a rebuild of 50,000 assignments, and allocation in a 99%-full
//! /16. Run with `cargo run --release -p ferrolb-controller --bin ipam-bench`.
//!
//! Each run of each scenario is a fresh child process (this program re-started with
//! `--scenario`), so its peak memory (VmHWM) is its own; the parent prints median and range.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::IpAddr;
use std::process::Command;
use std::time::Instant;

use ferrolb_controller::ipam::{Allocator, FamilyPolicy, ServiceKey, ServiceRequest};
use ferrolb_proto::api::{IPAddressPool, IPAddressPoolSpec, IpFamily};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// A small deterministic generator (xorshift64*), so every run does the same work.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
    IPAddressPool::new(
        name,
        IPAddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
        },
    )
}

fn request(i: usize, family: IpFamily) -> ServiceRequest {
    ServiceRequest::new("bench", &format!("svc-{i:06}"))
        .with_families(FamilyPolicy::SingleStack, &[family])
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn memory() -> Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("{name} missing from /proc/self/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .ok_or("malformed status line")?
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// 100,000 allocations alternating a v4 /8 and a v6 /64 pool; after each, with probability
/// 30%, a random live Service is released.
fn scenario_alloc(size: usize) -> Result<BTreeMap<&'static str, f64>> {
    let mut a = Allocator::new();
    a.set_pools(vec![
        pool("v4", &["10.0.0.0/8"]),
        pool("v6", &["fd00::/64"]),
    ]);
    let requests: Vec<ServiceRequest> = (0..size)
        .map(|i| {
            request(
                i,
                if i % 2 == 0 {
                    IpFamily::V4
                } else {
                    IpFamily::V6
                },
            )
        })
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut live: Vec<ServiceKey> = Vec::with_capacity(size);
    let (rss_before, _) = memory()?;
    let start = Instant::now();
    let mut releases = 0usize;
    let mut peak_live = 0usize;
    for r in &requests {
        a.assign(r)?;
        live.push(r.key.clone());
        if rng.below(10) < 3 {
            let victim = live.swap_remove(rng.below(live.len()));
            a.release(&victim);
            releases += 1;
        }
        peak_live = peak_live.max(live.len());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (_, hwm) = memory()?;
    let stats = a.pool_stats();
    let assigned: u128 = stats
        .iter()
        .map(|s| s.ipv4.assigned + s.ipv6.assigned)
        .sum();
    if assigned != live.len() as u128 {
        return Err(format!("{assigned} assigned but {} live", live.len()).into());
    }
    // The `live` vector is the benchmark's own: 16 bytes per entry, not the allocator's.
    let own = (live.capacity() * std::mem::size_of::<ServiceKey>()) as f64;
    let grown = hwm.saturating_sub(rss_before) as f64 - own;
    Ok(BTreeMap::from([
        ("allocations", size as f64),
        ("releases", releases as f64),
        ("live_at_end", live.len() as f64),
        ("total_ms", elapsed * 1e3),
        ("us_per_op", elapsed * 1e6 / (size + releases) as f64),
        ("peak_bytes_per_live", grown / peak_live.max(1) as f64),
        ("peak_bytes_per_allocation", grown / size as f64),
    ]))
}

/// Rebuilding an allocator from 50,000 Services' status, as after a restart.
fn scenario_rebuild(size: usize) -> Result<BTreeMap<&'static str, f64>> {
    let pools = vec![pool("v4", &["10.0.0.0/8"]), pool("v6", &["fd00::/64"])];
    let mut a = Allocator::new();
    a.set_pools(pools.clone());
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut status: Vec<(ServiceRequest, Vec<IpAddr>)> = Vec::with_capacity(size);
    // Allocate with holes (a third released), so the restored state is fragmented.
    let mut n = 0;
    while status.len() < size {
        let family = if n % 2 == 0 {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        let r = request(n, family);
        n += 1;
        let got = a.assign(&r)?;
        if rng.below(3) == 0 {
            a.release(&r.key);
        } else {
            status.push((r, got.ips));
        }
    }
    drop(a);
    // The API server lists in name order anyway; shuffle so sorting is part of the cost.
    for i in (1..status.len()).rev() {
        status.swap(i, rng.below(i + 1));
    }
    let (rss_before, _) = memory()?;
    let start = Instant::now();
    let mut fresh = Allocator::new();
    fresh.set_pools(pools);
    let outcomes = fresh.rebuild(status);
    let elapsed = start.elapsed().as_secs_f64();
    let (_, hwm) = memory()?;
    let changed = outcomes.iter().filter(|o| o.changed()).count();
    if changed != 0 {
        return Err(format!("{changed} Services changed on rebuild").into());
    }
    Ok(BTreeMap::from([
        ("services", size as f64),
        ("total_ms", elapsed * 1e3),
        (
            "peak_bytes_growth_per_service",
            hwm.saturating_sub(rss_before) as f64 / size as f64,
        ),
    ]))
}

/// A /16 filled to 99% with random holes; then 650 allocations fill holes, and 20,000
/// release-then-allocate cycles keep it at 99%.
fn scenario_full(cycles: usize) -> Result<BTreeMap<&'static str, f64>> {
    const SIZE: usize = 65_536;
    let mut a = Allocator::new();
    a.set_pools(vec![pool("p", &["10.1.0.0/16"])]);
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut live: Vec<ServiceKey> = Vec::with_capacity(SIZE);
    for i in 0..SIZE {
        let r = request(i, IpFamily::V4);
        a.assign(&r)?;
        live.push(r.key);
    }
    let holes = SIZE / 100;
    for _ in 0..holes {
        let victim = live.swap_remove(rng.below(live.len()));
        a.release(&victim);
    }
    let fill: Vec<ServiceRequest> = (0..holes)
        .map(|i| request(SIZE + i, IpFamily::V4))
        .collect();
    let start = Instant::now();
    for r in &fill {
        a.assign(r)?;
    }
    let fill_time = start.elapsed().as_secs_f64();
    for r in fill {
        live.push(r.key);
    }
    // Keep it 99% full: free one random address, take the first free one.
    for _ in 0..holes {
        let victim = live.swap_remove(rng.below(live.len()));
        a.release(&victim);
    }
    let cycle: Vec<ServiceRequest> = (0..cycles)
        .map(|i| request(2 * SIZE + i, IpFamily::V4))
        .collect();
    let mut alloc_time = 0.0;
    for r in &cycle {
        let victim = live.swap_remove(rng.below(live.len()));
        a.release(&victim);
        let start = Instant::now();
        a.assign(r)?;
        alloc_time += start.elapsed().as_secs_f64();
        live.push(r.key.clone());
    }
    Ok(BTreeMap::from([
        ("hole_fill_allocations", holes as f64),
        ("us_per_hole_fill", fill_time * 1e6 / holes as f64),
        ("cycles", cycles as f64),
        (
            "us_per_allocation_at_99pct",
            alloc_time * 1e6 / cycles.max(1) as f64,
        ),
    ]))
}

fn run_scenario(name: &str, small: bool) -> Result<BTreeMap<&'static str, f64>> {
    match (name, small) {
        ("alloc", false) => scenario_alloc(100_000),
        ("alloc", true) => scenario_alloc(2_000),
        ("rebuild", false) => scenario_rebuild(50_000),
        ("rebuild", true) => scenario_rebuild(1_000),
        ("full", false) => scenario_full(20_000),
        ("full", true) => scenario_full(200),
        _ => Err(format!("unknown scenario {name:?}; known: alloc, rebuild, full").into()),
    }
}

fn median_and_range(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    let median = match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values.get(mid).copied().unwrap_or(f64::NAN),
        _ => {
            let a = values.get(mid - 1).copied().unwrap_or(f64::NAN);
            let b = values.get(mid).copied().unwrap_or(f64::NAN);
            (a + b) / 2.0
        }
    };
    let min = values.first().copied().unwrap_or(f64::NAN);
    let max = values.last().copied().unwrap_or(f64::NAN);
    (median, min, max)
}

const USAGE: &str = "ipam-bench [--runs N] [--small] [--scenario alloc|rebuild|full]

Benchmarks controller::ipam. Without --scenario, runs every scenario N times (default 7),
each in a fresh child process, and prints median [min..max] of each figure.
--small uses tiny sizes (a smoke test). Build with --release for meaningful figures.";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 7usize;
    let mut small = false;
    let mut scenario = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => runs = it.next().ok_or("--runs needs a number")?.parse()?,
            "--small" => small = true,
            "--scenario" => scenario = Some(it.next().ok_or("--scenario needs a name")?.clone()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}").into()),
        }
    }

    if let Some(name) = scenario {
        // Child: one run, figures as `key=value` lines for the parent.
        for (key, value) in run_scenario(&name, small)? {
            println!("{key}={value}");
        }
        return Ok(());
    }

    let exe = std::env::current_exe()?;
    println!(
        "controller::ipam allocation benchmark: {runs} runs per scenario{}, {} CPUs",
        if small { " (small sizes)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for name in ["alloc", "rebuild", "full"] {
        let mut figures: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for _ in 0..runs {
            let mut cmd = Command::new(&exe);
            cmd.args(["--scenario", name]);
            if small {
                cmd.arg("--small");
            }
            let out = cmd.output()?;
            if !out.status.success() {
                return Err(format!(
                    "scenario {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((key, value)) = line.split_once('=') {
                    figures
                        .entry(key.to_owned())
                        .or_default()
                        .push(value.parse()?);
                }
            }
        }
        println!("\n{name}:");
        for (key, values) in figures {
            let (median, min, max) = median_and_range(values);
            println!("  {key:<32} {median:>12.2}  [{min:.2} .. {max:.2}]");
        }
    }
    Ok(())
}
