//! The real Kubernetes API server tier: FerroLB's Kubernetes backends against etcd +
//! kube-apiserver v1.33 + kube-controller-manager (one control plane per test binary, shared by
//! its tests, which run one at a time), installed as the chart installs it (CRDs, rendered RBAC,
//! ServiceAccounts, admission policy) and run with those accounts' own tokens; the lab's
//! namespaces are the nodes. Needs root (the lab), etcd, openssl, curl, setpriv, helm, and the
//! servers (`KUBEBUILDER_ASSETS` or `../shared/kube/install`); with FERROLB_REQUIRE_LAB=1 a
//! missing one fails the tier instead of skipping it.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ferrolb_e2e::cluster::Cluster;
use ferrolb_e2e::privilege::{REQUIRE_LAB_ENV, required_by};
use ferrolb_e2e::{ControlPlane, Lab, lab_or_skip};
use serde_json::json;

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

#[test]
fn a_service_gets_an_ip_from_the_real_server() {
    let (_serial, plane) = tier_or_skip!();
    let lab = Lab::builder().nodes(2).build().unwrap();
    let mut cluster = Cluster::new(plane, &lab, "ferrolb", "alloc", &[], "alloc").unwrap();
    cluster.app_namespace("alloc-apps").unwrap();
    cluster
        .apply(json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "lan", "namespace": "alloc"},
            "spec": {"addresses": ["10.250.0.100-10.250.0.110"]}}))
        .unwrap();
    cluster.start_controller("a", 1).unwrap();
    cluster
        .apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "alloc-apps"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
        .unwrap();
    let ips = cluster
        .wait("an IP for alloc-apps/web", ALLOCATE, |c| {
            let ips = c.service_ips("alloc-apps", "web");
            (!ips.is_empty()).then_some(ips)
        })
        .unwrap();
    assert_eq!(ips, ["10.250.0.100".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(cluster.forbidden(), Vec::<String>::new());
}
