//! FerroLB's network lab: namespaces, a bridge, nodes and a client on one machine, for
//! end-to-end tests that never touch a real network.
//!
//! - [`apiserver`]: [`ApiServer`], an in-memory Kubernetes API on loopback for adapter tests.
//! - [`control_plane`]: [`ControlPlane`], a real etcd + kube-apiserver + kube-controller-manager.
//! - [`cluster`]: [`Cluster`], FerroLB installed on it as the chart installs it, the lab as nodes.
//! - [`lab`]: [`Lab`] and [`LabBuilder`], the shape of TESTBED.md, torn down on drop.
//! - [`netns`]: [`Namespace`], running commands inside one with bounded time and clear errors.
//! - [`process`]: [`Background`] processes by PID: pause, resume, stop, kill.
//! - [`capture`]: [`Capture`], tcpdump started once it listens, read back as frames.
//! - [`pcap`]: the pcap file format tcpdump writes.
//! - [`floor`]: the least a userspace ARP responder can do, a benchmark's second peer.
//! - [`privilege`]: whether lab tests can run here, and skip-or-fail ([`lab_or_skip!`]).
//! - [`tools`]: arping and ndisc6 from a namespace, answers parsed into MACs.
//! - [`install`]: [`Install`], FerroLB standalone on a lab (state directory, controller, speakers).
//! - [`journey`]: [`Journey`], the user's journey staged: lab, ingress, FerroLB, kube-proxy, client checks.
//! - [`kubeproxy`]: the harness playing kube-proxy on the nodes (DNAT + masquerade).
//! - [`ingress`]: [`IngressProxy`], nginx as the ingress proxy in its own namespace.
//! - [`chart`]: the Helm chart rendered (`helm template`) into Kubernetes' types.
//! - [`kubelet`]: a rendered pod's container as `docker run` options, as the kubelet runs it.
//! - [`container`]: [`Engine`], a dockerd of the test's own; pod sandboxes that become lab nodes.
//! - [`pods`]: [`Pods`], the chart's pods from the image on a lab (standalone backend).
//! - [`load`]: [`RequestLoad`], requests through a VIP at a steady rate, counted.
//!
//! ```no_run
//! use std::time::Duration;
//! use ferrolb_e2e::{Lab, lab_or_skip};
//!
//! #[test]
//! fn client_resolves_node_1() {
//!     lab_or_skip!("ping"); // skip (or fail under FERROLB_REQUIRE_LAB=1) unless root with tools
//!     let lab = Lab::builder().nodes(2).second_segment().build().unwrap();
//!     let (client, n1) = (lab.client(), lab.node(1).unwrap());
//!     let capture = client.ns().capture("eth0", "arp").unwrap(); // tcpdump is listening now
//!     client.ns().run(["ping", "-c1", "-W1", &n1.ipv4().to_string()]).unwrap();
//!     capture.wait_for("an ARP reply", Duration::from_secs(5), |f| f.len() >= 2).unwrap();
//!     let frames = capture.stop().unwrap(); // Vec<CapturedFrame { ts, data, .. }>
//!     let daemon = n1.ns().spawn(["sleep", "600"]).unwrap(); // stopped by PID at teardown
//!     daemon.pause().unwrap();
//! } // lab dropped: processes killed, namespaces deleted, also on panic
//! ```

pub mod apiserver;
pub mod capture;
pub mod chart;
pub mod cluster;
pub mod container;
pub mod control_plane;
pub mod error;
pub mod floor;
pub mod ingress;
pub mod install;
pub mod journey;
pub mod kubelet;
pub mod kubeproxy;
pub mod lab;
pub mod load;
pub mod netns;
pub mod pcap;
pub mod pods;
pub mod privilege;
pub mod process;
pub mod tools;

pub use apiserver::ApiServer;
pub use capture::Capture;
pub use cluster::Cluster;
pub use container::Engine;
pub use control_plane::ControlPlane;
pub use error::{LabError, Result};
pub use ferrolb_proto::wire::MacAddr;
pub use ingress::IngressProxy;
pub use install::Install;
pub use journey::Journey;
pub use lab::{Host, Lab, LabBuilder, Nic};
pub use load::RequestLoad;
pub use netns::Namespace;
pub use pcap::CapturedFrame;
pub use pods::Pods;
pub use privilege::{LabAccess, require_lab};
pub use process::Background;
