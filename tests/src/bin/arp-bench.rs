//! `arp-bench`: the speaker's layer-2 figures, measured in a lab of its own next to the kernel
//! doing the same job in the same run, printed as a table.
//!
//! 1. ARP reply latency, request to reply, from capture timestamps on the client's interface:
//!    the speaker answering for a VIP on node 1, interleaved with node 2's kernel answering for
//!    its own address.
//! 2. The highest request rate answered with under 0.1% loss, speaker and kernel.
//! 3. The speaker's CPU while its interface carries 100,000 non-ARP packets/s.
//! 4. The speaker daemon's resident memory with 1,000 announced Services.
//!
//! `--floor` puts [`ferrolb_e2e::floor`], the least any responder on an AF_PACKET socket can
//! do, in the speaker's place for parts 1 and 2: how much of the speaker's distance to the
//! kernel is the design's (a thread woken per request) and how much is the speaker's own.
//! (Not in the same lab as the speaker: two userspace responders on one LAN wake each other's
//! threads for every request and share the softirq's work, which changes both figures.)
//!
//! ```text
//! cargo build --release -p ferrolb-speaker --bin ferrolb-speaker
//! cargo run --release -p ferrolb-e2e --bin arp-bench               # everything, ~3 minutes
//! cargo run --release -p ferrolb-e2e --bin arp-bench -- --only latency --requests 3000
//! cargo run --release -p ferrolb-e2e --bin arp-bench -- --only latency --floor
//! cargo run --release -p ferrolb-e2e --bin arp-bench -- --only latency --load 2   # a busy node
//! cargo run --release -p ferrolb-e2e --bin arp-bench -- --only latency --load 2 --rx-cpu 1
//! ```
//!
//! Needs root (namespaces, raw sockets), tcpdump and arping, and the release speaker built
//! first (`cargo build --release -p ferrolb-speaker`), or `--speaker PATH`. Every namespace and
//! process it starts is gone when it exits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use ferrolb_e2e::tools::arping_until;
use ferrolb_e2e::{Background, CapturedFrame, Host, Lab, Namespace, pcap};
use ferrolb_proto::wire::{self, ArpOperation, ArpRepr, EtherType, EthernetRepr, Frame, MacAddr};
use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 100);
/// The lab's broadcast address, for the non-ARP load.
const LAN_BROADCAST: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 255);
/// Services of the memory run take addresses from 10.250.16.0/22 (off the lab's /24: the
/// announcer does not care, and no host of the lab uses them).
const MEMORY_POOL: &str = "10.250.16.0/22";
const MEMORY_POOL_BASE: u32 = u32::from_be_bytes([10, 250, 16, 1]);
/// The loss a request rate may cause and still count as answered.
const MAX_LOSS: f64 = 0.001;
/// Request rates tried, in order, until one loses too much.
const RATE_LADDER: &[u32] = &[
    1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 50_000, 75_000, 100_000, 150_000, 200_000, 300_000,
];
/// The non-ARP load of the CPU run.
const NOISE_RATE: u32 = 100_000;

#[derive(Debug, Clone)]
struct Options {
    speaker: Option<PathBuf>,
    requests: usize,
    parts: Vec<Part>,
    services: usize,
    cpu_secs: u64,
    floor: bool,
    /// CPU-bound processes run beside the responder on node 1 during parts 1-3.
    load: usize,
    /// Steer the nodes' received frames to this CPU (RPS), as a NIC interrupting it would.
    rx_cpu: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Latency,
    Rate,
    Cpu,
    Memory,
}

impl Part {
    const ALL: [Part; 4] = [Part::Latency, Part::Rate, Part::Cpu, Part::Memory];

    fn name(self) -> &'static str {
        match self {
            Part::Latency => "latency",
            Part::Rate => "rate",
            Part::Cpu => "cpu",
            Part::Memory => "memory",
        }
    }
}

const USAGE: &str = "usage: arp-bench [--speaker PATH | --floor] [--requests N] [--services N] \
[--cpu-secs N] [--load N] [--rx-cpu N] [--only latency,rate,cpu,memory]";

fn parse_args() -> Result<Options> {
    let mut options = Options {
        speaker: None,
        requests: 1000,
        parts: Part::ALL.to_vec(),
        services: 1000,
        cpu_secs: 10,
        floor: false,
        load: 0,
        rx_cpu: None,
    };
    let mut only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| anyhow!("{name} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--speaker" => options.speaker = Some(PathBuf::from(value("--speaker")?)),
            "--floor" => options.floor = true,
            "--requests" => {
                options.requests = value("--requests")?
                    .parse()
                    .context("--requests: a whole number")?;
            }
            "--services" => {
                options.services = value("--services")?
                    .parse()
                    .context("--services: a whole number")?;
            }
            "--load" => {
                options.load = value("--load")?
                    .parse()
                    .context("--load: a whole number of CPU-bound processes")?;
            }
            "--rx-cpu" => {
                options.rx_cpu = Some(
                    value("--rx-cpu")?
                        .parse()
                        .context("--rx-cpu: a CPU number")?,
                );
            }
            "--cpu-secs" => {
                options.cpu_secs = value("--cpu-secs")?
                    .parse()
                    .context("--cpu-secs: a whole number")?;
            }
            "--only" => {
                only = true;
                let list = value("--only")?;
                options.parts = list
                    .split(',')
                    .map(|name| {
                        Part::ALL
                            .into_iter()
                            .find(|p| p.name() == name.trim())
                            .ok_or_else(|| {
                                anyhow!("--only {name}: not one of latency, rate, cpu, memory")
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if options.floor {
        if options.speaker.is_some() {
            bail!("--floor and --speaker both name what answers on node 1; give one");
        }
        if !only {
            options.parts = vec![Part::Latency, Part::Rate];
        }
        if let Some(part) = options
            .parts
            .iter()
            .find(|p| matches!(p, Part::Cpu | Part::Memory))
        {
            bail!(
                "--floor measures latency and rate only (the {} part is the speaker's own)",
                part.name()
            );
        }
    }
    Ok(options)
}

/// What answers for the VIP on node 1.
enum Responder {
    Speaker(PathBuf),
    /// This program as [`ferrolb_e2e::floor`] (`--floor-responder IFACE IP`).
    Floor(PathBuf),
}

/// How this program runs itself as the floor responder in a lab namespace.
const FLOOR_MODE: &str = "--floor-responder";

impl Responder {
    /// The column its figures go in.
    fn name(&self) -> &'static str {
        match self {
            Responder::Speaker(_) => "FerroLB",
            Responder::Floor(_) => "floor",
        }
    }

    fn describe(&self) -> String {
        match self {
            Responder::Speaker(path) => path.display().to_string(),
            Responder::Floor(_) => {
                "in the speaker's place the floor, a minimal AF_PACKET responder".to_owned()
            }
        }
    }

    /// Starts answering for `ip` on `host`'s eth0.
    fn start(&self, host: &Host, ip: Ipv4Addr) -> Result<Background> {
        Ok(match self {
            Responder::Speaker(binary) => {
                announce(host, &binary.to_string_lossy(), &ip.to_string())?
            }
            Responder::Floor(exe) => host.ns().spawn([
                exe.as_os_str(),
                FLOOR_MODE.as_ref(),
                "eth0".as_ref(),
                ip.to_string().as_ref(),
            ])?,
        })
    }
}

/// How this program runs itself as one CPU-bound process of `--load`.
const HOG_MODE: &str = "--cpu-hog";

/// The `--load` mode: spins on one CPU, never sleeping and making no system call, until killed
/// (as a busy tenant of the node would: the responder has to preempt it).
fn cpu_hog() -> Result<()> {
    let mut x = 1u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
}

/// Has the frames `host` receives on eth0 handled in a softirq of `cpu` (receive packet
/// steering). In the lab a frame is otherwise handled on its sender's CPU, where the sender is
/// the running task: the responder then never has to preempt a busy tenant of the node, which
/// on a real node, with the NIC interrupting whatever runs, it does.
fn steer_receive(host: &Host, cpu: usize) -> Result<()> {
    if cpu >= 64 {
        bail!("--rx-cpu {cpu}: at most 63");
    }
    let mask = 1u64 << cpu;
    host.ns()
        .run([
            "sh",
            "-c",
            &format!("echo {mask:x} > /sys/class/net/eth0/queues/rx-0/rps_cpus"),
        ])
        .with_context(|| format!("steering {}'s eth0 to CPU {cpu}", host.name()))?;
    Ok(())
}

/// Starts `count` CPU-bound processes in `host`'s namespace, beside the responder; each is
/// killed (by PID) when its handle drops.
fn cpu_load(host: &Host, count: usize) -> Result<Vec<Background>> {
    let exe = std::env::current_exe().context("locating this program")?;
    (0..count)
        .map(|_| {
            host.ns()
                .spawn([exe.as_os_str(), HOG_MODE.as_ref()])
                .context("starting a CPU-bound process")
        })
        .collect()
}

/// The floor responder's mode: answers ARP for `ip` on `iface` until killed.
fn floor_responder(iface: &str, ip: &str) -> Result<()> {
    let ip: Ipv4Addr = ip.parse().context("the floor responder's IP")?;
    let interface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == iface)
        .ok_or_else(|| anyhow!("no interface {iface} here"))?;
    let mac = interface
        .mac
        .map(|m| MacAddr(m.octets()))
        .ok_or_else(|| anyhow!("{iface} has no MAC address"))?;
    ferrolb_e2e::floor::serve(interface.index, mac, ip)
        .with_context(|| format!("answering ARP for {ip} on {iface}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.as_slice() {
        [mode, iface, ip] if mode == FLOOR_MODE => floor_responder(iface, ip),
        [mode] if mode == HOG_MODE => cpu_hog(),
        _ => run(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("arp-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let options = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root: it builds network namespaces and opens raw sockets");
    }
    let responder = if options.floor {
        Responder::Floor(std::env::current_exe().context("locating this program")?)
    } else {
        Responder::Speaker(speaker_binary(options.speaker.as_deref())?)
    };
    let mut report = Report::new(&responder);
    eprintln!("on node 1: {}", responder.describe());

    let wants = |part| options.parts.contains(&part);
    if wants(Part::Latency) || wants(Part::Rate) || wants(Part::Cpu) {
        let lab = Lab::builder()
            .nodes(2)
            .build()
            .context("building the lab")?;
        let bench = LanBench::start(&lab, &responder)?;
        if let Some(cpu) = options.rx_cpu {
            for host in lab.nodes() {
                steer_receive(host, cpu)?;
            }
            report.note(format!(
                "the nodes' received frames steered to CPU {cpu} (RPS on eth0), as a NIC interrupting it would"
            ));
        }
        let _load = cpu_load(node(&lab, 1)?, options.load)?;
        if options.load > 0 {
            report.note(format!(
                "{} CPU-bound process(es) beside the responder on node 1 during parts 1-3",
                options.load
            ));
        }
        if wants(Part::Latency) {
            report.load("latency");
            bench.latency(options.requests, &mut report)?;
        }
        if wants(Part::Rate) {
            report.load("rate");
            bench.rates(&mut report)?;
        }
        if wants(Part::Cpu) {
            report.load("cpu");
            bench.cpu(Duration::from_secs(options.cpu_secs), &mut report)?;
        }
    }
    if wants(Part::Memory)
        && let Responder::Speaker(speaker) = &responder
    {
        report.load("memory");
        memory(speaker, options.services, &mut report)?;
    }
    report.load("end");
    println!("{}", report.render());
    Ok(())
}

/// The speaker binary: the caller's, or the release build next to this program, which must
/// not be older than the speaker's source.
///
/// Not built from here: a cargo started by `cargo run` inherits its `CARGO_*` environment,
/// which makes build scripts rerun and the whole dependency graph rebuild, twice.
fn speaker_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("locating this program")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?;
    let path = dir.join("ferrolb-speaker");
    let build = "cargo build --release -p ferrolb-speaker --bin ferrolb-speaker";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|_| {
            anyhow!(
                "no speaker binary at {}: run `{build}` first, or pass --speaker PATH",
                path.display()
            )
        })?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../speaker/src");
    if let Some(newest) = newest_file(&source)
        && newest > built
    {
        bail!(
            "{} is older than the speaker's source in {}: run `{build}` first",
            path.display(),
            source.display()
        );
    }
    Ok(path)
}

/// The latest modification time of any file under `dir`.
fn newest_file(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_file(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

// ---------------------------------------------------------------------------------------------
// The report.

/// The figures as they come, and the machine's load at each stage.
#[derive(Debug)]
struct Report {
    started: SystemTime,
    /// What answered on node 1, and the name of its column.
    responder: (String, &'static str),
    rows: Vec<Row>,
    loads: Vec<(String, String)>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct Row {
    figure: String,
    ferrolb: String,
    kernel: String,
    ratio: String,
    target: String,
}

impl Report {
    fn new(responder: &Responder) -> Self {
        Report {
            started: SystemTime::now(),
            responder: (responder.describe(), responder.name()),
            rows: Vec::new(),
            loads: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn load(&mut self, stage: &str) {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        self.loads.push((stage.to_owned(), load.join(" ")));
    }

    fn row(&mut self, figure: &str, ferrolb: String, kernel: String, ratio: String, target: &str) {
        self.rows.push(Row {
            figure: figure.to_owned(),
            ferrolb,
            kernel,
            ratio,
            target: target.to_owned(),
        });
    }

    fn note(&mut self, note: String) {
        eprintln!("note: {note}");
        self.notes.push(note);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let secs = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "\nARP/NDP figures of the responder on node 1 ({}, started at unix time {secs}; {} cores)",
            self.responder.0,
            thread::available_parallelism().map_or(0, usize::from)
        );
        let loads: Vec<String> = self
            .loads
            .iter()
            .map(|(stage, load)| format!("{stage}: {load}"))
            .collect();
        let _ = writeln!(
            out,
            "load average (1/5/15 min) before each part: {}\n",
            loads.join("; ")
        );
        let headers = ["figure", self.responder.1, "kernel", "ratio", "target"];
        let cells: Vec<[&str; 5]> = self
            .rows
            .iter()
            .map(|r| [&*r.figure, &*r.ferrolb, &*r.kernel, &*r.ratio, &*r.target])
            .collect();
        let widths: Vec<usize> = (0..5)
            .map(|i| {
                cells
                    .iter()
                    .map(|c| c[i].chars().count())
                    .chain([headers[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: [&str; 5]| -> String {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        let _ = writeln!(out, "{}", line(headers));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
        for c in cells {
            let _ = writeln!(out, "{}", line(c));
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n- {note}");
        }
        out
    }
}

fn us(v: f64) -> String {
    format!("{v:.1} µs")
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".to_owned()
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// The client side: raw frames and UDP from inside the client's namespace.

/// Runs `f` on a thread that has entered the network namespace `ns` (sockets it opens live
/// there), and returns its result.
fn in_namespace<T, F>(ns: &Namespace, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = format!("/run/netns/{}", ns.name());
    thread::Builder::new()
        .name(format!("in-{}", ns.name()))
        .spawn(move || {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            f()
        })
        .context("starting a client thread")?
        .join()
        .map_err(|_| anyhow!("the client thread panicked"))?
}

/// A layer-2 sender on one interface of the namespace the calling thread is in.
struct RawSender {
    tx: Box<dyn DataLinkSender>,
    /// Kept open with the sender (pnet closes the socket when both halves drop); never read.
    _rx: Box<dyn DataLinkReceiver>,
}

impl RawSender {
    fn open(iface: &str) -> Result<RawSender> {
        let interface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == iface)
            .ok_or_else(|| anyhow!("no interface {iface} in the client namespace"))?;
        let config = Config {
            promiscuous: false,
            read_buffer_size: 2048,
            ..Config::default()
        };
        match pnet_datalink::channel(&interface, config)
            .with_context(|| format!("opening a packet socket on {iface}"))?
        {
            Channel::Ethernet(tx, rx) => Ok(RawSender { tx, _rx: rx }),
            _ => bail!("pnet gave a non-Ethernet channel on {iface}"),
        }
    }

    /// Sends one frame; false if the kernel refused it (a full queue).
    fn send(&mut self, frame: &[u8]) -> bool {
        matches!(self.tx.send_to(frame, None), Some(Ok(())))
    }
}

/// A broadcast ARP request from the client for `target`.
fn arp_request(client_mac: MacAddr, client_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    Frame::Arp {
        ethernet: EthernetRepr {
            src_addr: client_mac,
            dst_addr: MacAddr::BROADCAST,
            ethertype: EtherType::ARP,
            vlan: None,
        },
        arp: ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: client_mac,
            source_protocol_addr: client_ip,
            target_hardware_addr: MacAddr::UNSPECIFIED,
            target_protocol_addr: target,
        },
    }
    .to_bytes()
}

/// Paces sends at a fixed rate from a start instant: sleeps while far from the next slot,
/// spins when close, and never tries to catch up faster than the schedule (sends that fall
/// behind go out back to back).
struct Pacer {
    start: Instant,
    interval: Duration,
}

impl Pacer {
    fn new(rate: u32) -> Pacer {
        Pacer {
            start: Instant::now(),
            interval: Duration::from_secs(1) / rate.max(1),
        }
    }

    fn wait_for(&self, slot: u64) {
        let due = self.start + self.interval * u32::try_from(slot).unwrap_or(u32::MAX);
        loop {
            let now = Instant::now();
            if now >= due {
                return;
            }
            let left = due - now;
            if left > Duration::from_micros(300) {
                thread::sleep(left - Duration::from_micros(200));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// A small xorshift generator: random phases without a dependency.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x2545_f491_4f6c_dd1d);
        Jitter(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [lo, hi).
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_nanos().max(1) as u64;
        lo + Duration::from_nanos(self.next() % span)
    }
}

// ---------------------------------------------------------------------------------------------
// Captures that report their own drops.

/// tcpdump on one interface with a large buffer, nanosecond timestamps, and the kernel's drop
/// count read back when it stops.
///
/// Not in immediate mode: the kernel timestamps each frame as it passes and hands tcpdump
/// whole blocks of them (at the latest after libpcap's 1 s block timeout), so the capture does
/// not wake a process per frame on the CPUs whose wake-ups are being measured. Stop it only
/// [`SNIFFER_LINGER`] after the last frame, when the last block has been handed over.
struct Sniffer {
    process: Background,
    path: PathBuf,
}

/// Longer than libpcap's block timeout (1 s), so every frame captured has reached the file.
const SNIFFER_LINGER: Duration = Duration::from_millis(1600);

impl Sniffer {
    fn start(ns: &Namespace, iface: &str, filter: &str, dir: &Path) -> Result<Sniffer> {
        let path = dir.join(format!(
            "{}-{iface}-{}.pcap",
            ns.name(),
            Jitter::new().next() % 1_000_000
        ));
        let path_text = path.to_string_lossy().into_owned();
        let process = ns.spawn([
            "tcpdump",
            "-i",
            iface,
            "-w",
            &path_text,
            "-U",
            "--time-stamp-precision=nano",
            "-B",
            "65536",
            "-n",
            "-Z",
            "root",
            filter,
        ])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.log()?.contains("listening on") {
            if Instant::now() > deadline || !process.is_running()? {
                bail!(
                    "tcpdump on {iface} in {} did not start listening: {}",
                    ns.name(),
                    process.log()?
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(Sniffer { process, path })
    }

    /// Stops tcpdump; the frames and how many the kernel dropped before tcpdump read them.
    /// Call it [`SNIFFER_LINGER`] after the last frame of interest.
    fn stop(self) -> Result<(Vec<CapturedFrame>, u64)> {
        self.process.stop()?;
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let frames = pcap::parse(&bytes).map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        let log = self.process.log()?;
        let dropped = log
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let _ = std::fs::remove_file(&self.path);
        Ok((frames, dropped))
    }
}

fn arp_of(frame: &CapturedFrame) -> Option<(EthernetRepr, ArpRepr)> {
    match wire::parse_frame(&frame.data) {
        Ok(Frame::Arp { ethernet, arp }) => Some((ethernet, arp)),
        _ => None,
    }
}

fn micros_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1e6,
        Err(e) => -e.duration().as_secs_f64() * 1e6,
    }
}

/// Interface packet counters of a host, from sysfs inside its namespace.
fn iface_counter(host: &Host, counter: &str) -> Result<u64> {
    let out = host
        .ns()
        .run(["cat", &format!("/sys/class/net/eth0/statistics/{counter}")])?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("reading {counter} of {}", host.name()))
}

// ---------------------------------------------------------------------------------------------
// Parts 1-3: one lab, the speaker announcing a VIP on node 1, node 2's kernel as the peer.

struct LanBench<'a> {
    lab: &'a Lab,
    speaker: Background,
    /// The responder's column name: "FerroLB", or "floor".
    responder: &'static str,
    dir: tempfile::TempDir,
}

impl<'a> LanBench<'a> {
    fn start(lab: &'a Lab, responder: &Responder) -> Result<LanBench<'a>> {
        let (client, n1) = (lab.client(), node(lab, 1)?);
        let speaker = responder.start(n1, VIP)?;
        arping_until(client.ns(), "eth0", VIP, Duration::from_secs(10), |macs| {
            macs.contains(&n1.mac())
        })
        .with_context(|| {
            format!(
                "the {} responder never answered; log:\n{}",
                responder.name(),
                speaker.log().unwrap_or_default()
            )
        })?;
        // Let the gratuitous burst (5 x 1.1 s) end: measure the steady state.
        thread::sleep(Duration::from_millis(5000));
        let dir = tempfile::Builder::new()
            .prefix("arp-bench-")
            .tempdir()
            .context("creating a capture directory")?;
        Ok(LanBench {
            lab,
            speaker,
            responder: responder.name(),
            dir,
        })
    }

    fn client(&self) -> &Host {
        self.lab.client()
    }

    fn kernel_ip(&self) -> Result<Ipv4Addr> {
        Ok(node(self.lab, 2)?.ipv4())
    }

    /// Part 1: interleaved requests for the VIP and node 2's address, `count` each, a random
    /// 2-4 ms apart, in random order within each pair.
    fn latency(&self, count: usize, report: &mut Report) -> Result<()> {
        eprintln!(
            "latency: {count} requests each for {} ({VIP}) and the kernel, interleaved ...",
            self.responder
        );
        let client = self.client();
        let kernel_ip = self.kernel_ip()?;
        let sniffer = Sniffer::start(client.ns(), "eth0", "arp", self.dir.path())?;
        // The same exchanges seen at each node's own interface: the responder's time alone.
        let at_n1 = Sniffer::start(node(self.lab, 1)?.ns(), "eth0", "arp", self.dir.path())?;
        let at_n2 = Sniffer::start(node(self.lab, 2)?.ns(), "eth0", "arp", self.dir.path())?;
        let (mac, ip) = (client.mac(), client.ipv4());
        let sent = in_namespace(client.ns(), move || {
            let mut sender = RawSender::open("eth0")?;
            let to_vip = arp_request(mac, ip, VIP);
            let to_kernel = arp_request(mac, ip, kernel_ip);
            let mut jitter = Jitter::new();
            let mut sent = 0usize;
            for _ in 0..count {
                let pair = if jitter.next().is_multiple_of(2) {
                    [&to_vip, &to_kernel]
                } else {
                    [&to_kernel, &to_vip]
                };
                for frame in pair {
                    if sender.send(frame) {
                        sent += 1;
                    }
                    thread::sleep(
                        jitter.between(Duration::from_millis(2), Duration::from_millis(4)),
                    );
                }
            }
            Ok(sent)
        })?;
        thread::sleep(SNIFFER_LINGER);
        let (frames, dropped) = sniffer.stop()?;
        let (n1_frames, n1_dropped) = at_n1.stop()?;
        let (n2_frames, n2_dropped) = at_n2.stop()?;
        if dropped + n1_dropped + n2_dropped > 0 {
            report.note(format!(
                "latency captures dropped frames: client {dropped}, node 1 {n1_dropped}, node 2 {n2_dropped}"
            ));
        }
        let in_node = (
            latencies(&n1_frames, mac, VIP),
            latencies(&n2_frames, mac, kernel_ip),
        );
        let ferrolb = latencies(&frames, mac, VIP);
        let kernel = latencies(&frames, mac, kernel_ip);
        eprintln!(
            "latency: {sent} requests sent; {} + {} answered",
            ferrolb.len(),
            kernel.len()
        );
        for (name, p) in [("median", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            let (f, k) = (percentile(&ferrolb, p), percentile(&kernel, p));
            let target = match name {
                "median" => "≤ 1.3x kernel",
                "p99" => "≤ 2x kernel",
                _ => "",
            };
            report.row(
                &format!("ARP reply latency {name} (request to reply on the client's wire)"),
                us(f),
                us(k),
                ratio(f, k),
                target,
            );
        }
        for (name, p) in [("median", 0.5), ("p99", 0.99)] {
            let (f, k) = (percentile(&in_node.0, p), percentile(&in_node.1, p));
            report.row(
                &format!(
                    "  {name} inside the answering node (request in to reply out on its eth0)"
                ),
                us(f),
                us(k),
                ratio(f, k),
                "",
            );
        }
        report.row(
            "  requests answered (latency run)",
            format!("{}/{count}", ferrolb.len()),
            format!("{}/{count}", kernel.len()),
            String::new(),
            "",
        );
        Ok(())
    }

    /// Part 2: for each responder, request rates up the ladder until one loses 0.1% or more.
    fn rates(&self, report: &mut Report) -> Result<()> {
        let kernel_ip = self.kernel_ip()?;
        let mut best = BTreeMap::new();
        for (who, target) in [(self.responder, VIP), ("kernel", kernel_ip)] {
            let mut highest: Option<RateStep> = None;
            let mut first_failure: Option<RateStep> = None;
            for &rate in RATE_LADDER {
                let step = self.rate_step(target, rate)?;
                eprintln!(
                    "rate: {who:7} {rate:>7}/s: sent {} at {:.0}/s, answered {} (rx counter {}), loss {:.3}%{}",
                    step.sent,
                    step.achieved,
                    step.answered,
                    step.rx_delta,
                    step.loss() * 100.0,
                    if step.dropped > 0 {
                        format!(", capture dropped {}", step.dropped)
                    } else {
                        String::new()
                    }
                );
                if step.achieved < f64::from(rate) * 0.9 {
                    report.note(format!(
                        "rate ({who}): the client could not send faster than {:.0}/s (asked {rate}/s); the ladder stops there",
                        step.achieved
                    ));
                    if step.loss() < MAX_LOSS {
                        highest = Some(step);
                    } else {
                        first_failure = Some(step);
                    }
                    break;
                }
                if step.loss() < MAX_LOSS {
                    highest = Some(step);
                } else {
                    first_failure = Some(step);
                    break;
                }
            }
            best.insert(who, (highest, first_failure));
        }
        let cell = |who: &str| -> (String, f64) {
            match best.get(who) {
                Some((Some(ok), failed)) => {
                    let after = match failed {
                        Some(f) => {
                            format!("; {:.2}% lost at {:.0}/s", f.loss() * 100.0, f.achieved)
                        }
                        None if ok.achieved < f64::from(ok.rate) * 0.9 => {
                            " (all the client could send)".to_owned()
                        }
                        None => String::new(),
                    };
                    // The rate achieved, not the one asked for: the sender may fall short.
                    let rate = ok.achieved.min(f64::from(ok.rate));
                    (format!("{rate:.0}/s{after}"), rate)
                }
                Some((None, Some(f))) => (
                    format!("< {:.0}/s ({:.2}% lost)", f.achieved, f.loss() * 100.0),
                    0.0,
                ),
                _ => ("-".to_owned(), 0.0),
            }
        };
        let (f, fr) = cell(self.responder);
        let (k, kr) = cell("kernel");
        // A rate the client could not exceed says nothing about the responder: no ratio then.
        let limited = |cell: &str| cell.contains("all the client could send");
        let ratio = if limited(&f) || limited(&k) {
            "- (client-bound)".to_owned()
        } else {
            ratio(fr, kr)
        };
        report.row(
            "highest ARP request rate answered with < 0.1% loss",
            f,
            k,
            ratio,
            "next to the kernel's",
        );
        Ok(())
    }

    fn rate_step(&self, target: Ipv4Addr, rate: u32) -> Result<RateStep> {
        let client = self.client();
        // At least 5,000 requests (so 0.1% is 5 frames), at least one second.
        let count = u64::from(rate).max(5_000);
        // Only replies: the capture must keep up with the answers, not with our own requests.
        let sniffer = Sniffer::start(client.ns(), "eth0", "arp[6:2] = 2", self.dir.path())?;
        let rx_before = iface_counter(client, "rx_packets")?;
        let (mac, ip) = (client.mac(), client.ipv4());
        let (sent, elapsed) = in_namespace(client.ns(), move || {
            let mut sender = RawSender::open("eth0")?;
            let frame = arp_request(mac, ip, target);
            let pacer = Pacer::new(rate);
            let mut sent = 0u64;
            for slot in 0..count {
                pacer.wait_for(slot);
                if sender.send(&frame) {
                    sent += 1;
                }
            }
            Ok((sent, pacer.start.elapsed()))
        })?;
        thread::sleep(SNIFFER_LINGER);
        let rx_delta = iface_counter(client, "rx_packets")?.saturating_sub(rx_before);
        let (frames, dropped) = sniffer.stop()?;
        let answered = frames
            .iter()
            .filter_map(arp_of)
            .filter(|(eth, arp)| {
                arp.operation == ArpOperation::Reply
                    && arp.source_protocol_addr == target
                    && !arp.is_gratuitous()
                    && eth.dst_addr == mac
            })
            .count() as u64;
        Ok(RateStep {
            rate,
            sent,
            achieved: sent as f64 / elapsed.as_secs_f64().max(1e-9),
            answered,
            rx_delta,
            dropped,
        })
    }

    /// Part 3: UDP from the client to node 1's address and to the LAN broadcast, alternating,
    /// at [`NOISE_RATE`] for `secs`, while the speaker's CPU time is read from /proc.
    fn cpu(&self, duration: Duration, report: &mut Report) -> Result<()> {
        let n1 = node(self.lab, 1)?;
        let pid = self.speaker.pid();
        eprintln!("cpu: speaker idle for {duration:?} ...");
        let idle = CpuSample::take(pid)?;
        thread::sleep(duration);
        let idle = CpuSample::take(pid)?.since(&idle);

        eprintln!("cpu: {NOISE_RATE} UDP packets/s at node 1 for {duration:?} ...");
        let rx_before = iface_counter(n1, "rx_packets")?;
        let before = CpuSample::take(pid)?;
        let unicast = SocketAddr::from((n1.ipv4(), 9));
        let broadcast = SocketAddr::from((LAN_BROADCAST, 9));
        let client = self.client();
        let noise = in_namespace(client.ns(), move || {
            let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
            socket.set_broadcast(true)?;
            let payload = [0u8; 18];
            let pacer = Pacer::new(NOISE_RATE);
            let total = u64::from(NOISE_RATE) * duration.as_secs();
            let mut sent = 0u64;
            for slot in 0..total {
                pacer.wait_for(slot);
                let to = if slot.is_multiple_of(2) {
                    unicast
                } else {
                    broadcast
                };
                if socket.send_to(&payload, to).is_ok() {
                    sent += 1;
                }
            }
            Ok((sent, pacer.start.elapsed()))
        });
        let after = CpuSample::take(pid)?;
        let (sent, elapsed) = noise?;
        let busy = after.since(&before);
        let received = iface_counter(n1, "rx_packets")?.saturating_sub(rx_before);
        let rate = received as f64 / elapsed.as_secs_f64();
        eprintln!(
            "cpu: sent {sent} in {elapsed:?} ({:.0}/s), node 1 received {received} ({rate:.0}/s); speaker {:.3}% of a core (idle {:.3}%)",
            sent as f64 / elapsed.as_secs_f64(),
            busy.percent(),
            idle.percent()
        );
        report.row(
            &format!(
                "speaker CPU under non-ARP load ({rate:.0} packets/s received on its interface, {:.0}/s sent)",
                sent as f64 / elapsed.as_secs_f64()
            ),
            busy.describe(),
            "-".to_owned(),
            String::new(),
            "< 1% of a core",
        );
        report.row(
            "speaker CPU, idle (same run)",
            idle.describe(),
            "-".to_owned(),
            String::new(),
            "",
        );
        if rate < f64::from(NOISE_RATE) * 0.95 {
            report.note(format!(
                "cpu: the client reached {rate:.0} packets/s on node 1's interface, not {NOISE_RATE}"
            ));
        }
        Ok(())
    }
}

/// Request-to-reply times in µs for `target`, sorted: each request from the client paired
/// with the next non-gratuitous reply for the same IP sent to the client.
fn latencies(frames: &[CapturedFrame], client: MacAddr, target: Ipv4Addr) -> Vec<f64> {
    let mut pending: Option<SystemTime> = None;
    let mut out = Vec::new();
    for frame in frames {
        let Some((ethernet, arp)) = arp_of(frame) else {
            continue;
        };
        if arp.operation == ArpOperation::Request
            && arp.source_hardware_addr == client
            && arp.target_protocol_addr == target
        {
            pending = Some(frame.ts);
        } else if arp.operation == ArpOperation::Reply
            && arp.source_protocol_addr == target
            && !arp.is_gratuitous()
            && ethernet.dst_addr == client
            && let Some(sent) = pending.take()
        {
            out.push(micros_between(sent, frame.ts));
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

#[derive(Debug, Clone)]
struct RateStep {
    rate: u32,
    sent: u64,
    achieved: f64,
    answered: u64,
    /// Frames the client's interface received during the step (replies, and anything else).
    rx_delta: u64,
    /// Frames the capture lost.
    dropped: u64,
}

impl RateStep {
    fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - (self.answered.min(self.sent) as f64 / self.sent as f64)
    }
}

/// A process's CPU time: utime + stime from /proc/<pid>/stat (clock ticks) and the sum of its
/// threads' run time from schedstat (nanoseconds), at one instant.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    ticks: u64,
    run_ns: u64,
}

/// Linux reports /proc times in USER_HZ, which is 100 on every architecture it runs on.
const USER_HZ: f64 = 100.0;

impl CpuSample {
    fn take(pid: u32) -> Result<CpuSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat (did the speaker exit?)"))?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: no command name"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let field = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| anyhow!("/proc/{pid}/stat: field {} unreadable", i + 3))
        };
        let ticks = field(11)? + field(12)?;
        let mut run_ns = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let schedstat =
                std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            run_ns += schedstat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(CpuSample {
            at: Instant::now(),
            ticks,
            run_ns,
        })
    }

    fn since(&self, earlier: &CpuSample) -> CpuUse {
        CpuUse {
            wall: self.at.duration_since(earlier.at),
            ticks: self.ticks.saturating_sub(earlier.ticks),
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct CpuUse {
    wall: Duration,
    ticks: u64,
    run_ns: u64,
}

impl CpuUse {
    /// From utime + stime, as the target is stated.
    fn percent(&self) -> f64 {
        self.ticks as f64 / USER_HZ / self.wall.as_secs_f64() * 100.0
    }

    fn precise_percent(&self) -> f64 {
        self.run_ns as f64 / 1e9 / self.wall.as_secs_f64() * 100.0
    }

    fn describe(&self) -> String {
        format!(
            "{:.2}% of a core ({} ticks in {:.1} s; schedstat {:.3}%)",
            self.percent(),
            self.ticks,
            self.wall.as_secs_f64(),
            self.precise_percent()
        )
    }
}

/// `ferrolb-speaker announce` of `ips` (comma list) on `host`'s eth0, quiet but for warnings.
fn announce(host: &Host, binary: &str, ips: &str) -> Result<Background> {
    Ok(host.ns().spawn([
        binary,
        "--log-level",
        "warn",
        "announce",
        "--interface",
        "eth0",
        "--ip",
        ips,
    ])?)
}

fn node(lab: &Lab, i: usize) -> Result<&Host> {
    lab.node(i)
        .ok_or_else(|| anyhow!("the lab has no node {i}"))
}

// ---------------------------------------------------------------------------------------------
// Part 4: the daemon on a state directory with many announced Services.

fn memory(binary: &Path, services: usize, report: &mut Report) -> Result<()> {
    eprintln!("memory: the speaker daemon with {services} announced Services ...");
    let lab = Lab::builder()
        .nodes(1)
        .build()
        .context("building the lab")?;
    let n1 = node(&lab, 1)?;
    let dir = tempfile::Builder::new()
        .prefix("arp-bench-state-")
        .tempdir()
        .context("creating the state directory")?;
    write_state(dir.path(), n1, services)?;
    let key = dir.path().join("membership.key");
    let mut jitter = Jitter::new();
    let hex: String = (0..4).map(|_| format!("{:016x}", jitter.next())).collect();
    std::fs::write(&key, format!("{hex}\n")).context("writing the membership key")?;

    let binary = binary.to_string_lossy().into_owned();
    let state = dir.path().to_string_lossy().into_owned();
    let key = key.to_string_lossy().into_owned();
    let bind = format!("{}:7946", n1.ipv4());
    let started = Instant::now();
    let daemon = n1.ns().spawn([
        binary.as_str(),
        "--log-level",
        "warn",
        "run",
        "--node-name",
        "n1",
        "--state-dir",
        &state,
        "--membership-key-file",
        &key,
        "--membership-bind",
        &bind,
        "--metrics-addr",
        "127.0.0.1:7473",
    ])?;
    let l2 = dir.path().join("status/l2/n1/bench");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let recorded = std::fs::read_dir(&l2).map(|d| d.count()).unwrap_or(0);
        if recorded >= services {
            break;
        }
        if Instant::now() > deadline || !daemon.is_running()? {
            bail!(
                "the daemon recorded {recorded} of {services} announcements; log:\n{}",
                daemon.log()?
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let announced_after = started.elapsed();
    let at_announce = memory_of(daemon.pid())?;
    // The gratuitous bursts take 5 x 1.1 s; read again in the steady state.
    thread::sleep(Duration::from_secs(7));
    let steady = memory_of(daemon.pid())?;
    eprintln!(
        "memory: {services} announced after {announced_after:?}; VmRSS {} kB then {} kB (VmHWM {} kB)",
        at_announce.rss_kb, steady.rss_kb, steady.hwm_kb
    );
    daemon.stop()?;
    report.row(
        &format!(
            "speaker daemon resident memory, {services} announced Services (standalone `run`)"
        ),
        format!(
            "{:.1} MB (peak {:.1}; {:.1} anonymous + {:.1} file-backed; {:.1} when all were first announced)",
            steady.rss_kb as f64 / 1024.0,
            steady.hwm_kb as f64 / 1024.0,
            steady.anon_kb as f64 / 1024.0,
            steady.file_kb as f64 / 1024.0,
            at_announce.rss_kb as f64 / 1024.0,
        ),
        "-".to_owned(),
        String::new(),
        "< 20 MB",
    );
    report.row(
        "  time from start until all are recorded as announced",
        format!("{:.2} s", announced_after.as_secs_f64()),
        "-".to_owned(),
        String::new(),
        "",
    );

    // The announcer's own share: the static mode with the same number of IPs, no daemon around.
    let ips: Vec<String> = (0..services)
        .filter_map(|i| u32::try_from(i).ok())
        .map(|i| Ipv4Addr::from(MEMORY_POOL_BASE + i).to_string())
        .collect();
    let ips = ips.join(",");
    let announce = announce(n1, &binary, &ips)?;
    // Past the gratuitous bursts, as above.
    thread::sleep(Duration::from_secs(7));
    if !announce.is_running()? {
        bail!(
            "`announce` with {services} IPs exited; log:\n{}",
            announce.log()?
        );
    }
    let alone = memory_of(announce.pid())?;
    announce.stop()?;
    report.row(
        &format!("  the announcer alone: `announce` with {services} IPs"),
        format!(
            "{:.1} MB ({:.1} anonymous + {:.1} file-backed)",
            alone.rss_kb as f64 / 1024.0,
            alone.anon_kb as f64 / 1024.0,
            alone.file_kb as f64 / 1024.0,
        ),
        "-".to_owned(),
        String::new(),
        "",
    );
    Ok(())
}

struct Memory {
    rss_kb: u64,
    hwm_kb: u64,
    /// Heap, stacks and other private memory.
    anon_kb: u64,
    /// Pages of the binary and libraries.
    file_kb: u64,
}

fn memory_of(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/status has no {name}"))
    };
    Ok(Memory {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
        anon_kb: field("RssAnon:")?,
        file_kb: field("RssFile:")?,
    })
}

/// One Node, a pool, an L2Advertisement, and `services` LoadBalancer Services with their
/// allocations already in `status/services/` as the controller writes them.
fn write_state(dir: &Path, n1: &Host, services: usize) -> Result<()> {
    let cluster = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n\
---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: bench, namespace: metallb-system}}\nspec:\n  addresses: [{MEMORY_POOL}]\n\
---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: bench, namespace: metallb-system}}\nspec:\n  ipAddressPools: [bench]\n  interfaces: [eth0]\n",
        ip = n1.ipv4()
    );
    std::fs::write(dir.join("cluster.yaml"), cluster).context("writing cluster.yaml")?;
    let status_dir = dir.join("status/services/bench");
    std::fs::create_dir_all(&status_dir).context("creating status/services/bench")?;
    let mut manifests = String::new();
    for i in 0..services {
        let name = format!("svc-{i:04}");
        let offset = u32::try_from(i).context("too many Services")?;
        let ip = Ipv4Addr::from(MEMORY_POOL_BASE + offset);
        let _ = write!(
            manifests,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n"
        );
        let status = format!(
            "# Written by ferrolb-controller; do not edit.\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: bench\n  annotations: {{metallb.io/ip-allocated-from-pool: bench}}\nstatus:\n  loadBalancer:\n    ingress: [{{ip: {ip}}}]\n"
        );
        std::fs::write(status_dir.join(format!("{name}.yaml")), status)
            .with_context(|| format!("writing the status of {name}"))?;
    }
    std::fs::write(dir.join("services.yaml"), manifests).context("writing services.yaml")?;
    Ok(())
}
