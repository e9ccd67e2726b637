//! What both FerroLB daemons need around their pure cores, written once:
//!
//! - [`telemetry`]: tracing logs as text or JSON.
//! - [`endpoint`]: the HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.
//! - [`kubernetes`]: a client that names itself (User-Agent), and Events written one by one.
//! - [`mirror`]: a watched Kubernetes kind mirrored in memory, re-listed after gaps.
//! - [`shutdown`]: SIGTERM / SIGINT as a value tasks can wait on.
//! - [`statedir`]: the standalone state directory: read as a snapshot, watched for changes,
//!   written atomically.

pub mod endpoint;
pub mod kubernetes;
pub mod mirror;
pub mod shutdown;
pub mod statedir;
pub mod telemetry;
