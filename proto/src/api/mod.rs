//! The Kubernetes API users write, MetalLB-compatible: `metallb.io/v1beta1` custom resources,
//! the Service annotations, and the validation of address pools.

pub mod addresses;
pub mod advertisement;
pub mod annotations;
pub mod crd;
pub mod l2status;
pub mod manifest;
pub mod pool;
pub mod selector;
pub mod state;
pub mod validation;

pub use addresses::{AddressError, AddressRange, IpFamily};
pub use advertisement::{L2Advertisement, L2AdvertisementSpec, L2AdvertisementStatus};
pub use annotations::ServiceAnnotation;
pub use l2status::{InterfaceInfo, MetalLBServiceL2Status, ServiceL2Status, ServiceL2StatusSpec};
pub use manifest::{Manifest, ManifestError, parse_documents};
pub use pool::{IPAddressPool, IPAddressPoolSpec, IPAddressPoolStatus, ServiceAllocation};
pub use validation::{PoolProblem, check_pool, check_pools, seniority};

/// The API group of every FerroLB resource, shared with MetalLB.
pub const GROUP: &str = "metallb.io";
/// The served version.
pub const VERSION: &str = "v1beta1";
