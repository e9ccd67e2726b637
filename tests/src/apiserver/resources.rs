//! The resource kinds the fake API server knows: where they live in the URL space, their kind
//! name, scope, and whether status is a separate subresource.

/// One kind of resource, as the API server's discovery would describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// `v1` for the core group, `group/version` otherwise.
    pub api_version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Writes to the main resource keep the stored status, and `/status` writes touch only status.
    pub status_subresource: bool,
}

const fn r(
    api_version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> Resource {
    Resource {
        api_version,
        plural,
        kind,
        namespaced,
        status_subresource,
    }
}

/// Every resource FerroLB's components read or write.
pub const RESOURCES: &[Resource] = &[
    r("v1", "services", "Service", true, true),
    r("v1", "namespaces", "Namespace", false, true),
    r("v1", "nodes", "Node", false, true),
    r("v1", "pods", "Pod", true, true),
    r("v1", "secrets", "Secret", true, false),
    r("v1", "events", "Event", true, false),
    r("events.k8s.io/v1", "events", "Event", true, false),
    r(
        "discovery.k8s.io/v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    r("coordination.k8s.io/v1", "leases", "Lease", true, false),
    r(
        "metallb.io/v1beta1",
        "ipaddresspools",
        "IPAddressPool",
        true,
        true,
    ),
    r(
        "metallb.io/v1beta1",
        "l2advertisements",
        "L2Advertisement",
        true,
        true,
    ),
    r(
        "metallb.io/v1beta1",
        "servicel2statuses",
        "ServiceL2Status",
        true,
        true,
    ),
];

pub fn by_plural(api_version: &str, plural: &str) -> Option<Resource> {
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.api_version == api_version && r.plural == plural)
}

pub fn by_kind(api_version: &str, kind: &str) -> Option<Resource> {
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.api_version == api_version && r.kind == kind)
}

/// Where a request points: a collection or one object, maybe a subresource of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub resource: Resource,
    /// `None` for cluster-scoped kinds and for lists across all namespaces.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/group/version/...` paths. `None` for anything else.
pub fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // `namespaces/{ns}/{plural}...` unless it is the Namespace object itself (or its status).
        ["namespaces", ns, plural, rest @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some((*ns).to_owned()), [&[*plural][..], rest].concat())
        }
        other => (None, other.to_vec()),
    };
    let resource = by_plural(&api_version, rest.first()?)?;
    if rest.len() > 3 || (namespace.is_some() && !resource.namespaced) {
        return None;
    }
    Some(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        let t = parse_path(path).unwrap();
        (
            t.resource.kind.to_owned(),
            t.namespace,
            t.name,
            t.subresource,
        )
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn core_and_group_paths() {
        assert_eq!(
            target("/api/v1/services"),
            ("Service".into(), None, None, None)
        );
        assert_eq!(
            target("/api/v1/namespaces/web/services/app/status"),
            ("Service".into(), s("web"), s("app"), s("status"))
        );
        assert_eq!(
            target("/api/v1/namespaces"),
            ("Namespace".into(), None, None, None)
        );
        assert_eq!(
            target("/api/v1/namespaces/web"),
            ("Namespace".into(), None, s("web"), None)
        );
        assert_eq!(
            target("/api/v1/namespaces/web/status"),
            ("Namespace".into(), None, s("web"), s("status"))
        );
        assert_eq!(
            target("/apis/metallb.io/v1beta1/namespaces/lb/ipaddresspools"),
            ("IPAddressPool".into(), s("lb"), None, None)
        );
        assert_eq!(
            target("/api/v1/nodes/n1"),
            ("Node".into(), None, s("n1"), None)
        );
    }

    #[test]
    fn unknown_paths_are_refused() {
        assert_eq!(parse_path("/healthz"), None);
        assert_eq!(parse_path("/apis/metallb.io/v1/ipaddresspools"), None);
        assert_eq!(parse_path("/api/v1/namespaces/x/nodes"), None);
        assert_eq!(parse_path("/api/v1/services/a/b/c"), None);
    }
}
