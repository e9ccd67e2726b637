//! Shared builders for the allocator's integration tests: pools, Services, addresses.
#![allow(dead_code)] // Each test binary uses a different part.

use std::net::IpAddr;

use ferrolb_controller::ipam::{Allocator, Assignment, ServiceKey, ServiceRequest};
use ferrolb_proto::api::{IPAddressPool, IPAddressPoolSpec, ServiceAllocation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
    let mut pool = IPAddressPool::new(
        name,
        IPAddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
        },
    );
    pool.metadata.namespace = Some("metallb-system".into());
    pool
}

pub fn manual(mut pool: IPAddressPool) -> IPAddressPool {
    pool.spec.auto_assign = false;
    pool
}

pub fn avoid_buggy(mut pool: IPAddressPool) -> IPAddressPool {
    pool.spec.avoid_buggy_ips = true;
    pool
}

pub fn allocation(mut pool: IPAddressPool, allocation: ServiceAllocation) -> IPAddressPool {
    pool.spec.service_allocation = Some(allocation);
    pool
}

pub fn prio(priority: i32, namespaces: &[&str]) -> ServiceAllocation {
    ServiceAllocation {
        priority: Some(priority),
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

pub fn selector(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(key.to_owned(), value.to_owned())].into()),
        ..Default::default()
    }
}

pub fn svc(namespace: &str, name: &str) -> ServiceRequest {
    ServiceRequest::new(namespace, name)
}

pub fn key(namespace: &str, name: &str) -> ServiceKey {
    ServiceKey::new(namespace, name)
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

pub fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|t| ip(t)).collect()
}

pub fn allocator(pools: Vec<IPAddressPool>) -> Allocator {
    let mut alloc = Allocator::new();
    let change = alloc.set_pools(pools);
    assert!(change.problems.is_empty(), "{:?}", change.problems);
    alloc
}

/// `pool: ip,ip` for compact assertions.
pub fn show(assignment: &Assignment) -> String {
    let ips: Vec<String> = assignment.ips.iter().map(|ip| ip.to_string()).collect();
    format!("{}: {}", assignment.pool, ips.join(","))
}

/// Assigns and shows the result, panicking with the message on failure.
pub fn give(alloc: &mut Allocator, request: &ServiceRequest) -> String {
    match alloc.assign(request) {
        Ok(a) => show(&a),
        Err(e) => panic!("{}: {e}", request.key),
    }
}

pub fn fail(alloc: &mut Allocator, request: &ServiceRequest) -> String {
    match alloc.assign(request) {
        Ok(a) => panic!("{} unexpectedly got {}", request.key, show(&a)),
        Err(e) => e.to_string(),
    }
}

pub fn holds(alloc: &Allocator, namespace: &str, name: &str) -> Option<String> {
    alloc.assignment(&key(namespace, name)).map(|a| show(&a))
}
