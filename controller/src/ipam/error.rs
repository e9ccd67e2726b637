//! Why a Service gets no address: every message names the Service, the field or annotation and
//! the value at fault, and says what would be accepted.

use std::net::IpAddr;

use ferrolb_proto::api::IpFamily;

use super::service::ServiceKey;
use super::sharing::SharingMismatch;

/// A Service's request that cannot be met, or cannot even be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    // --- the Service object itself ---
    #[error(
        "service in namespace {namespace:?}: metadata.name is missing; every Service needs a name"
    )]
    MissingName { namespace: String },

    #[error(
        "service {service}: spec.ipFamilyPolicy {value:?} is not a policy; allowed: SingleStack, \
         PreferDualStack, RequireDualStack"
    )]
    InvalidFamilyPolicy { service: ServiceKey, value: String },

    #[error(
        "service {service}: spec.ipFamilies[{index}] {value:?} is not an IP family; allowed: IPv4, \
         IPv6"
    )]
    InvalidFamily {
        service: ServiceKey,
        index: usize,
        value: String,
    },

    #[error(
        "service {service}: spec.externalTrafficPolicy {value:?} is not a policy; allowed: \
         Cluster, Local"
    )]
    InvalidTrafficPolicy { service: ServiceKey, value: String },

    #[error(
        "service {service}: spec.ports[{index}].protocol {value:?} is not a protocol; allowed: \
         TCP, UDP, SCTP"
    )]
    InvalidProtocol {
        service: ServiceKey,
        index: usize,
        value: String,
    },

    #[error(
        "service {service}: spec.ports[{index}].port {value} is not a port; allowed: 1 to 65535"
    )]
    InvalidPort {
        service: ServiceKey,
        index: usize,
        value: i32,
    },

    #[error(
        "service {service}: status.loadBalancer.ingress[{index}].ip {value:?} is not an IP \
         address; the controller will replace it"
    )]
    InvalidStatusIp {
        service: ServiceKey,
        index: usize,
        value: String,
    },

    // --- requested addresses ---
    #[error(
        "service {service}: spec.loadBalancerIP {spec:?} and annotation {annotation} {value:?} \
         are both set; set only the annotation"
    )]
    BothIpFields {
        service: ServiceKey,
        spec: String,
        annotation: String,
        value: String,
    },

    #[error(
        "service {service}: annotation {annotation} is empty; list one address per family \
         (e.g. \"192.168.10.5,fd00::5\"), or remove the annotation"
    )]
    EmptyIpList {
        service: ServiceKey,
        annotation: String,
    },

    #[error(
        "service {service}: {field} {value:?}: {item:?} is not an IP address; write addresses \
         like 192.168.10.5 or fd00::5, comma-separated"
    )]
    InvalidIp {
        service: ServiceKey,
        field: String,
        value: String,
        item: String,
    },

    #[error(
        "service {service}: {field} {value:?}: two {family} addresses requested; at most one \
         per family"
    )]
    TwoOfOneFamily {
        service: ServiceKey,
        field: String,
        value: String,
        family: IpFamily,
    },

    #[error(
        "service {service}: {field} {value:?}: a SingleStack Service takes one address; \
         request one, or set spec.ipFamilyPolicy to PreferDualStack or RequireDualStack"
    )]
    SingleStackTwoIps {
        service: ServiceKey,
        field: String,
        value: String,
    },

    #[error(
        "service {service}: {field} {value:?}: a RequireDualStack Service needs one IPv4 and \
         one IPv6 address; add an {missing} address"
    )]
    DualStackIncomplete {
        service: ServiceKey,
        field: String,
        value: String,
        missing: IpFamily,
    },

    #[error(
        "service {service}: {field} {value:?}: {ip} is {family} but the Service is \
         single-stack {allowed} (spec.ipFamilies); use an {allowed} address"
    )]
    WrongFamily {
        service: ServiceKey,
        field: String,
        value: String,
        ip: IpAddr,
        family: IpFamily,
        allowed: IpFamily,
    },

    #[error(
        "service {service}: {field} {value:?}: {ip} is in no IPAddressPool; use an address from \
         a pool, or add a pool that holds it"
    )]
    IpInNoPool {
        service: ServiceKey,
        field: String,
        value: String,
        ip: IpAddr,
    },

    #[error(
        "service {service}: {field} {value:?}: {ip} is {found}, not in IPAddressPool {pool:?} \
         named by annotation {annotation}; request an address from that pool, or drop one of \
         the two annotations"
    )]
    IpOutsidePool {
        service: ServiceKey,
        field: String,
        value: String,
        ip: IpAddr,
        /// Where the address is, e.g. `in IPAddressPool "b"`.
        found: String,
        pool: String,
        annotation: String,
    },

    #[error(
        "service {service}: {field} {value:?}: {first} is in IPAddressPool {first_pool:?} but \
         {second} is in {second_pool:?}; a Service's addresses come from one pool"
    )]
    IpsInDifferentPools {
        service: ServiceKey,
        field: String,
        value: String,
        first: IpAddr,
        first_pool: String,
        second: IpAddr,
        second_pool: String,
    },

    #[error(
        "service {service}: {field} {value:?}: {ip} ends in .0 or .255, which IPAddressPool \
         {pool:?} skips (avoidBuggyIPs: true); use another address"
    )]
    BuggyIp {
        service: ServiceKey,
        field: String,
        value: String,
        ip: IpAddr,
        pool: String,
    },

    #[error(
        "service {service}: {field} {value:?}: {ip} is used by service {other} and they cannot \
         share it: {why}; sharing needs the same metallb.io/allow-shared-ip key, the same \
         externalTrafficPolicy (and selector if Local) and no common port"
    )]
    IpInUse {
        service: ServiceKey,
        field: String,
        value: String,
        ip: IpAddr,
        other: ServiceKey,
        why: SharingMismatch,
    },

    #[error(
        "service {service}: {field} {value:?} no longer matches {request} {requested:?}; the \
         Service gets the requested addresses instead"
    )]
    NotRequested {
        service: ServiceKey,
        field: String,
        value: String,
        request: String,
        requested: String,
    },

    // --- pools ---
    #[error(
        "service {service}: annotation {annotation} is empty; name an IPAddressPool, or remove \
         the annotation"
    )]
    EmptyPoolName {
        service: ServiceKey,
        annotation: String,
    },

    #[error(
        "service {service}: annotation {annotation} {pool:?}: no IPAddressPool has that name; \
         known pools: {known}"
    )]
    UnknownPool {
        service: ServiceKey,
        annotation: String,
        pool: String,
        /// Comma-separated names, or `none`.
        known: String,
    },

    #[error(
        "service {service}: IPAddressPool {pool:?} is invalid and hands out no addresses: \
         {problem}"
    )]
    InvalidPool {
        service: ServiceKey,
        pool: String,
        problem: String,
    },

    #[error("service {service}: IPAddressPool {pool:?} does not serve this Service: {why}")]
    PoolNotForService {
        service: ServiceKey,
        pool: String,
        why: String,
    },

    #[error(
        "service {service}: IPAddressPool {pool:?} (annotation {annotation}) has no {family} \
         addresses, and the Service needs {needs}"
    )]
    PoolLacksFamily {
        service: ServiceKey,
        pool: String,
        annotation: String,
        family: IpFamily,
        /// What the Service asked for, e.g. `an IPv6 address (spec.ipFamilies)`.
        needs: String,
    },

    #[error(
        "service {service}: no IPAddressPool with autoAssign serves namespace {namespace:?} and \
         this Service's labels; add a pool, or name one with annotation metallb.io/address-pool"
    )]
    NoPoolForService {
        service: ServiceKey,
        namespace: String,
    },

    #[error(
        "service {service}: RequireDualStack needs a pool with both IPv4 and IPv6 addresses, and \
         none that serves this Service has both; add the missing family to a pool, or use \
         PreferDualStack"
    )]
    NoDualStackPool { service: ServiceKey },

    #[error(
        "service {service}: no free {wanted} address in IPAddressPool(s) {pools}; free some, or \
         add addresses to a pool"
    )]
    NoAvailableIps {
        service: ServiceKey,
        /// e.g. `IPv4`, `IPv4 and IPv6`.
        wanted: String,
        /// Comma-separated quoted pool names, in the order tried.
        pools: String,
    },

    #[error(
        "service {service}: no free {wanted} address in IPAddressPool(s) {pools}, and it cannot \
         share {ip} with service {other}: {why}; sharing needs the same \
         metallb.io/allow-shared-ip key, the same externalTrafficPolicy (and selector if Local) \
         and no common port"
    )]
    SharingRefused {
        service: ServiceKey,
        wanted: String,
        pools: String,
        /// The held address it could have shared, and one of its holders.
        ip: IpAddr,
        other: ServiceKey,
        why: SharingMismatch,
    },
}

impl AllocationError {
    /// A short CamelCase label for events and the `reason` label of failure metrics.
    pub fn reason(&self) -> &'static str {
        use AllocationError::*;
        match self {
            MissingName { .. }
            | InvalidFamilyPolicy { .. }
            | InvalidFamily { .. }
            | InvalidTrafficPolicy { .. }
            | InvalidProtocol { .. }
            | InvalidPort { .. } => "InvalidService",
            InvalidStatusIp { .. } => "InvalidStatus",
            BothIpFields { .. } => "ConflictingIPRequest",
            EmptyIpList { .. } | InvalidIp { .. } => "InvalidIP",
            TwoOfOneFamily { .. } | SingleStackTwoIps { .. } => "TooManyIPs",
            DualStackIncomplete { .. } => "DualStackIncomplete",
            WrongFamily { .. } | PoolLacksFamily { .. } => "WrongFamily",
            IpInNoPool { .. } => "IPNotInPool",
            IpOutsidePool { .. } => "IPOutsidePool",
            IpsInDifferentPools { .. } => "IPsInDifferentPools",
            BuggyIp { .. } => "BuggyIP",
            IpInUse { .. } | SharingRefused { .. } => "SharingConflict",
            NotRequested { .. } => "NotRequested",
            EmptyPoolName { .. } | UnknownPool { .. } => "UnknownPool",
            InvalidPool { .. } => "InvalidPool",
            PoolNotForService { .. } => "PoolNotAllowed",
            NoPoolForService { .. } => "NoMatchingPool",
            NoDualStackPool { .. } => "NoDualStackPool",
            NoAvailableIps { .. } => "NoAvailableIPs",
        }
    }

    /// The Service the error is about, when it has a name.
    pub fn service(&self) -> Option<&ServiceKey> {
        use AllocationError::*;
        match self {
            MissingName { .. } => None,
            InvalidFamilyPolicy { service, .. }
            | InvalidFamily { service, .. }
            | InvalidTrafficPolicy { service, .. }
            | InvalidProtocol { service, .. }
            | InvalidPort { service, .. }
            | InvalidStatusIp { service, .. }
            | BothIpFields { service, .. }
            | EmptyIpList { service, .. }
            | InvalidIp { service, .. }
            | TwoOfOneFamily { service, .. }
            | SingleStackTwoIps { service, .. }
            | DualStackIncomplete { service, .. }
            | WrongFamily { service, .. }
            | IpInNoPool { service, .. }
            | IpOutsidePool { service, .. }
            | IpsInDifferentPools { service, .. }
            | BuggyIp { service, .. }
            | IpInUse { service, .. }
            | NotRequested { service, .. }
            | EmptyPoolName { service, .. }
            | UnknownPool { service, .. }
            | InvalidPool { service, .. }
            | PoolNotForService { service, .. }
            | PoolLacksFamily { service, .. }
            | NoPoolForService { service, .. }
            | NoDualStackPool { service }
            | NoAvailableIps { service, .. }
            | SharingRefused { service, .. } => Some(service),
        }
    }

    /// True when the Service's request could not be read at all. [`super::Allocator::assign`]
    /// then leaves the Service's assignment as it was: nothing loses its address over a typo.
    pub fn is_unreadable_request(&self) -> bool {
        use AllocationError::*;
        matches!(
            self,
            MissingName { .. }
                | InvalidFamilyPolicy { .. }
                | InvalidFamily { .. }
                | InvalidTrafficPolicy { .. }
                | InvalidProtocol { .. }
                | InvalidPort { .. }
                | BothIpFields { .. }
                | EmptyIpList { .. }
                | InvalidIp { .. }
                | TwoOfOneFamily { .. }
                | SingleStackTwoIps { .. }
                | DualStackIncomplete { .. }
                | WrongFamily { .. }
                | EmptyPoolName { .. }
        )
    }
}
