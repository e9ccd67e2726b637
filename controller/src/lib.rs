//! FerroLB's controller: decides which IP address each LoadBalancer Service gets.
//!
//! - [`ipam`]: the pure allocator core (pools, allocation, sharing, dual-stack, pool statistics).

pub mod ipam;
