//! The real `ferrolb-controller` binary in standalone mode on a directory: it allocates, reacts
//! to edits quickly (inotify, not polling), writes status files atomically, and keeps every IP
//! across restarts without rewriting anything.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrolb_daemon::statedir::{StateDir, Watch};

const POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lan, namespace: metallb-system}\nspec:\n  addresses: [10.250.0.100-10.250.0.102]\n";

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{type: LoadBalancer, ports: [{{port: 80}}]}}\n"
    )
}

/// The controller process, killed on drop (also when the test fails).
struct Controller(Child);

impl Controller {
    fn start(dir: &Path) -> Self {
        Controller::logging_to(dir, Stdio::null())
    }

    fn logging_to(dir: &Path, log: impl Into<Stdio>) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"))
            .args([
                "--state-dir",
                dir.to_str().unwrap(),
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Controller(child)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_ip(dir: &Path, name: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(dir.join(format!("status/services/demo/{name}.yaml"))).ok()?;
    let value: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    value
        .pointer("/status/loadBalancer/ingress/0/ip")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// Waits, on file events, until `check` holds; returns how long that took.
async fn wait_until(state: &StateDir, what: &str, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    let mut changes = state.watch(Watch::All).unwrap();
    while !check() {
        let left = Duration::from_secs(10).saturating_sub(start.elapsed());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        let _ = tokio::time::timeout(left, changes.changed()).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn allocates_reacts_and_survives_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = StateDir::open(dir).unwrap();
    state.write_atomic("pool.yaml", POOL).unwrap();
    state
        .write_atomic("apps/web.yaml", &service("web"))
        .unwrap();

    let controller = Controller::start(dir);
    wait_until(&state, "web's IP", || status_ip(dir, "web").is_some()).await;
    assert_eq!(status_ip(dir, "web").as_deref(), Some("10.250.0.100"));

    // A new Service is noticed and allocated quickly.
    let started = Instant::now();
    state
        .write_atomic("apps/api.yaml", &service("api"))
        .unwrap();
    wait_until(&state, "api's IP", || status_ip(dir, "api").is_some()).await;
    let reaction = started.elapsed();
    eprintln!("standalone controller reacted in {reaction:?}");
    assert!(reaction < Duration::from_secs(1), "reacted in {reaction:?}");
    assert_eq!(status_ip(dir, "api").as_deref(), Some("10.250.0.101"));

    // Five restarts: same IPs, and no status file is rewritten.
    drop(controller);
    let written = |name: &str| {
        std::fs::metadata(dir.join(format!("status/services/demo/{name}.yaml")))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before = (written("web"), written("api"));
    for _ in 0..5 {
        // A third Service appears while the controller is down, so each run has work to do
        // and its completion is observable: the pending Service's status file.
        let _ = std::fs::remove_file(dir.join("apps/late.yaml"));
        let _ = std::fs::remove_file(dir.join("status/services/demo/late.yaml"));
        state
            .write_atomic("apps/late.yaml", &service("late"))
            .unwrap();
        let controller = Controller::start(dir);
        wait_until(&state, "late's IP", || status_ip(dir, "late").is_some()).await;
        drop(controller);
        assert_eq!(status_ip(dir, "web").as_deref(), Some("10.250.0.100"));
        assert_eq!(status_ip(dir, "api").as_deref(), Some("10.250.0.101"));
        assert_eq!(status_ip(dir, "late").as_deref(), Some("10.250.0.102"));
    }
    assert_eq!(
        (written("web"), written("api")),
        before,
        "a restart rewrote a valid status"
    );

    // Deleting a Service frees its IP, and its status file goes away.
    let controller = Controller::start(dir);
    wait_until(&state, "the restart", || status_ip(dir, "late").is_some()).await;
    std::fs::remove_file(dir.join("apps/web.yaml")).unwrap();
    wait_until(&state, "web's status removed", || {
        status_ip(dir, "web").is_none()
    })
    .await;
    drop(controller);
}

/// The `Valid` condition's status of pool `name` as the controller wrote it.
fn pool_valid(dir: &Path, name: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(dir.join(format!("status/ipaddresspools/{name}.yaml"))).ok()?;
    let value: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    value
        .pointer("/status/conditions/0/status")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

fn allocated_from(dir: &Path, name: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(dir.join(format!("status/services/demo/{name}.yaml"))).ok()?;
    let value: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    value
        .pointer("/metadata/annotations/metallb.io~1ip-allocated-from-pool")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// Issue 19: standalone manifests carry no creation time, yet a pool added later that overlaps
/// a serving one is the one refused (whatever the names), also after a restart; deleted and
/// added again, a pool is a newcomer.
#[tokio::test]
async fn a_pool_added_later_never_wins_an_overlap_also_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = StateDir::open(dir).unwrap();
    state.write_atomic("pool.yaml", POOL).unwrap();
    state
        .write_atomic("apps/web.yaml", &service("web"))
        .unwrap();
    let controller = Controller::start(dir);
    wait_until(&state, "web's IP", || status_ip(dir, "web").is_some()).await;

    let a10 = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a10, namespace: metallb-system}\nspec:\n  addresses: [fd01::/64, 10.0.0.0/8]\n";
    state.write_atomic("a10.yaml", a10).unwrap();
    wait_until(&state, "a10 refused", || {
        pool_valid(dir, "a10").as_deref() == Some("False")
    })
    .await;
    assert_eq!(pool_valid(dir, "lan").as_deref(), Some("True"));
    assert_eq!(allocated_from(dir, "web").as_deref(), Some("lan"));

    drop(controller);
    let controller = Controller::start(dir);
    state
        .write_atomic("apps/api.yaml", &service("api"))
        .unwrap();
    wait_until(&state, "api's IP after the restart", || {
        status_ip(dir, "api").is_some()
    })
    .await;
    assert_eq!(pool_valid(dir, "lan").as_deref(), Some("True"));
    assert_eq!(pool_valid(dir, "a10").as_deref(), Some("False"));
    assert_eq!(allocated_from(dir, "api").as_deref(), Some("lan"));

    // lan deleted: a10 serves. lan back: now lan is the newcomer.
    std::fs::remove_file(dir.join("pool.yaml")).unwrap();
    wait_until(&state, "a10 valid without lan", || {
        pool_valid(dir, "a10").as_deref() == Some("True")
    })
    .await;
    state.write_atomic("pool.yaml", POOL).unwrap();
    wait_until(&state, "lan refused as the newcomer", || {
        pool_valid(dir, "lan").as_deref() == Some("False")
    })
    .await;
    assert_eq!(pool_valid(dir, "a10").as_deref(), Some("True"));
    drop(controller);
}

/// Issue 19: a hand edit of a pool's counters is reverted, as MetalLB does.
#[tokio::test]
async fn a_hand_edit_of_pool_status_is_reverted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = StateDir::open(dir).unwrap();
    state.write_atomic("pool.yaml", POOL).unwrap();
    let _controller = Controller::start(dir);
    let status_file = dir.join("status/ipaddresspools/lan.yaml");
    let available = || {
        let text = std::fs::read_to_string(&status_file).ok()?;
        let value: serde_json::Value = serde_yaml_ng::from_str(&text).ok()?;
        value.pointer("/status/availableIPv4")?.as_i64()
    };
    wait_until(&state, "lan's counters", || available() == Some(3)).await;
    let text = std::fs::read_to_string(&status_file).unwrap();
    let edited = text.replace("availableIPv4: 3", "availableIPv4: 99");
    assert_ne!(edited, text);
    std::fs::write(&status_file, edited).unwrap();
    wait_until(&state, "the edit reverted", || available() == Some(3)).await;
}

/// `GET /metrics` from the endpoint the controller logged it serves on.
fn scrape(log: &str) -> String {
    use std::io::{Read, Write};
    let addr = log
        .split("bound=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// Issue 19: allocation events are logged where they are decided (not under `::metrics`), the
/// standalone controller says it leads, and a manifest that does not read is counted.
#[tokio::test]
async fn events_leadership_and_manifest_errors_are_reported_truthfully() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let state = StateDir::open(&dir).unwrap();
    state.write_atomic("pool.yaml", POOL).unwrap();
    state
        .write_atomic("apps/web.yaml", &service("web"))
        .unwrap();
    let log_path = tmp.path().join("controller.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let _controller = Controller::logging_to(&dir, log_file);
    wait_until(&state, "web's IP", || status_ip(&dir, "web").is_some()).await;
    let log = || std::fs::read_to_string(&log_path).unwrap();
    let allocated = log()
        .lines()
        .find(|l| l.contains("IPAllocated"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        allocated.contains(" ferrolb_controller::reconcile: Assigned IP [\"10.250.0.100\"]"),
        "{allocated}"
    );
    assert!(scrape(&log()).contains("\nferrolb_controller_leader 1\n"));

    std::fs::write(dir.join("broken.yaml"), "kind: [\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !scrape(&log()).contains("ferrolb_manifest_errors{file=\"broken.yaml\"} 1") {
        assert!(
            Instant::now() < deadline,
            "no manifest error counted:\n{}",
            scrape(&log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
