//! FerroLB's shared vocabulary: everything that crosses a process boundary, with no I/O.
//!
//! - [`api`]: the MetalLB-compatible Kubernetes types users write, the annotation names, and the
//!   validation of address pools.
//! - [`wire`]: Ethernet, ARP and IPv6 neighbour discovery frames, as zero-copy views and owned
//!   representations, plus constructors for every frame a speaker sends.
//! - [`election`]: the owner function every speaker must compute identically.
//! - [`gossip`]: the membership protocol between speakers: messages, their encoding, the sealed
//!   (AEAD) envelope, the cluster key ring and replay protection.

pub mod api;
pub mod election;
pub mod gossip;
pub mod wire;
