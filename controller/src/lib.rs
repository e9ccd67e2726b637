//! FerroLB's controller: decides which IP address each LoadBalancer Service gets.
//!
//! - [`ipam`]: the pure allocator core (pools, allocation, sharing, dual-stack, pool statistics).
//! - [`reconcile`]: the controller's decisions: objects in, writes and events out (pure).
//! - [`kubernetes`]: the backend over the Kubernetes API (watches, status writes, events).
//! - [`standalone`]: the backend over a directory of manifests.
//! - [`metrics`]: the Prometheus metrics.
//! - [`leader`]: leader election over a Lease, so two replicas are safe.
//! - [`status`]: the `status` view: Services, IPs, owners, problems and pool usage, as text.

pub mod ipam;
pub mod kubernetes;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod standalone;
pub mod status;
