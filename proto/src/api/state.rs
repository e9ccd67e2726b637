//! The standalone state directory as values: the manifests users write, plus the status the
//! controller writes back beside them, combined into one [`Snapshot`].
//!
//! Layout: every `*.yaml` / `*.yml` file outside `status/` holds user manifests (any number of
//! documents, any kinds [`super::manifest`] reads). The controller never edits them; it writes
//! each Service's allocation to `status/services/<namespace>/<name>.yaml` (a Service object
//! carrying only metadata, annotations and status) and pool counters to
//! `status/ipaddresspools/<name>.yaml`, with the time it first saw the pool as the pool's
//! `metadata.creationTimestamp` (its seniority where pools overlap, as a cluster's API server
//! would have stamped it). Reading overlays those on the user's objects, so user
//! files keep their comments and a half-written status file cannot corrupt them. Each speaker
//! records what it announces as a ServiceL2Status in `status/l2/<node>/<namespace>/<name>.yaml`
//! (one directory per node, so speakers never write the same file), and how it stands (its
//! quorum, and why it answers for none of some IPs) in `status/speakers/<node>.yaml`.
//!
//! Reading files and watching the directory is each binary's thin shell; this is the pure core.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::annotations::IP_ALLOCATED_FROM_POOL;
use super::manifest::{Manifest, ManifestError, parse_documents};
use super::{IPAddressPool, L2Advertisement, ServiceL2Status};

/// The subdirectory the controller owns.
pub const STATUS_DIR: &str = "status";

/// The namespace of objects written without one, as `kubectl apply` would place them.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The directory of the Services' allocations, relative to the state directory.
pub const SERVICES_STATUS_DIR: &str = "status/services";

/// The directory of the pools' counters and first-seen times, relative to the state directory.
pub const POOLS_STATUS_DIR: &str = "status/ipaddresspools";

/// Where the controller writes a Service's allocation, relative to the state directory.
pub fn service_status_path(namespace: &str, name: &str) -> String {
    format!("{SERVICES_STATUS_DIR}/{namespace}/{name}.yaml")
}

/// Where the controller writes a pool's counters, relative to the state directory.
pub fn pool_status_path(name: &str) -> String {
    format!("{POOLS_STATUS_DIR}/{name}.yaml")
}

/// Where a speaker records that it announces a Service, relative to the state directory.
pub fn l2_status_path(node: &str, namespace: &str, name: &str) -> String {
    format!("{}/{namespace}/{name}.yaml", l2_status_dir(node))
}

/// The directory of one node's announcement records, relative to the state directory.
pub fn l2_status_dir(node: &str) -> String {
    format!("{STATUS_DIR}/l2/{node}")
}

/// The directory where the standalone controller keeps the last good version of each manifest
/// file that no longer reads, relative to the state directory.
pub const LAST_GOOD_DIR: &str = "status/last-good";

/// Where the controller keeps the last good version of manifest file `relative`.
pub fn last_good_path(relative: &str) -> String {
    format!("{LAST_GOOD_DIR}/{relative}")
}

/// Where the standalone controller records that it runs and the manifest problems it sees,
/// relative to the state directory: not a manifest, and no watcher reports its changes.
pub const CONTROLLER_RECORD_PATH: &str = "status/controller.yaml";

/// How often the standalone controller refreshes its record; `ferrolb-controller status`
/// calls it gone after [`CONTROLLER_HEARTBEAT_MISSES`] missed refreshes.
pub const CONTROLLER_HEARTBEAT: Duration = Duration::from_secs(10);

/// Missed refreshes after which a controller's record says it is gone (a crash, a kill).
pub const CONTROLLER_HEARTBEAT_MISSES: u32 = 3;

/// What the standalone controller records about itself at [`CONTROLLER_RECORD_PATH`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerRecord {
    pub pid: u32,
    pub started_at: Time,
    /// Refreshed every [`CONTROLLER_HEARTBEAT`] while it runs.
    pub heartbeat: Time,
    /// When it stopped cleanly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Time>,
    /// The manifest problems as it last read the directory; files it keeps at their last good
    /// version say so.
    #[serde(default)]
    pub manifest_problems: Vec<String>,
}

/// The directory where each standalone speaker records how it stands, one file per node.
pub const SPEAKERS_STATUS_DIR: &str = "status/speakers";

/// Where the speaker of `node` records how it stands, relative to the state directory.
pub fn speaker_record_path(node: &str) -> String {
    format!("{SPEAKERS_STATUS_DIR}/{node}.yaml")
}

/// What a standalone speaker records about itself at [`speaker_record_path`]: how much of the
/// cluster it sees, and why it answers for none of the IPs the election gave it, where it does
/// not (what `ferrolb-controller status` shows beside a Service nobody answers for).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerRecord {
    pub node: String,
    /// `majority`, `half`, `minority` or `unadmitted` (the speaker's `ferrolb_speaker_quorum`).
    pub quorum: String,
    /// It lost a link and announces nothing.
    pub fenced: bool,
    pub updated: Time,
    #[serde(default)]
    pub problems: Vec<SpeakerProblem>,
}

/// An IP the election gave a speaker that it does not answer for, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerProblem {
    /// `namespace/name`.
    pub service: String,
    pub ip: String,
    /// `IPConflict`, `SplitMembership` or `NoInterface`.
    pub reason: String,
    pub detail: String,
}

/// Whether a relative path is one the controller writes (and user manifests must not be in).
pub fn is_status_path(relative: &str) -> bool {
    relative == STATUS_DIR || relative.starts_with(&format!("{STATUS_DIR}/"))
}

/// Whether a relative path holds manifests or status to read at all (the controller's own
/// record and its copies of last good versions are not read as such).
pub fn is_manifest_path(relative: &str) -> bool {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    !name.starts_with('.')
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
        && relative != CONTROLLER_RECORD_PATH
        && !relative.starts_with(&format!("{LAST_GOOD_DIR}/"))
        && !relative.starts_with(&format!("{SPEAKERS_STATUS_DIR}/"))
}

/// Everything the directory says, with the problems found on the way. Objects are sorted by
/// namespace and name, so equal directories give equal snapshots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub pools: Vec<IPAddressPool>,
    pub advertisements: Vec<L2Advertisement>,
    pub services: Vec<Service>,
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// What speakers recorded announcing (from `status/l2/`), by path order.
    pub l2_statuses: Vec<ServiceL2Status>,
    /// Documents that could not be read, or objects defined twice. The rest is still usable.
    pub problems: Vec<ManifestError>,
    /// Manifest files read at their last good version, because the current one does not
    /// read in full or is empty (the state directory's reader decides; see `problems`).
    pub held: Vec<String>,
}

type Key = (String, String);

#[derive(Default)]
struct Collected {
    pools: BTreeMap<Key, IPAddressPool>,
    advertisements: BTreeMap<Key, L2Advertisement>,
    services: BTreeMap<Key, Service>,
    namespaces: BTreeMap<Key, Namespace>,
    nodes: BTreeMap<Key, Node>,
    endpoint_slices: BTreeMap<Key, EndpointSlice>,
    /// Where each object came from, for "defined twice" messages.
    origins: BTreeMap<(String, Key), String>,
}

/// A file of the directory read into its documents: its relative path and what each
/// document gave.
pub type ParsedFile = (String, Vec<Result<Manifest, ManifestError>>);

impl Snapshot {
    /// Builds a snapshot from `(relative path, text)` pairs; paths decide whether a file holds
    /// user manifests or controller-written status. Owned texts are taken as they are and each
    /// is dropped once parsed: a directory of many Services is never held twice.
    pub fn from_files<I, P, T>(files: I) -> Snapshot
    where
        I: IntoIterator<Item = (P, T)>,
        P: Into<String>,
        T: Into<String>,
    {
        Snapshot::from_parsed(
            files
                .into_iter()
                .map(|(p, t)| (p.into(), t))
                .filter(|(p, _)| is_manifest_path(p))
                .map(|(p, t)| {
                    let documents = parse_documents(&p, &t.into());
                    (p, documents)
                }),
        )
    }

    /// Builds a snapshot from files already read into documents (the state directory's reader
    /// decides which version of a file to use); every document error becomes a problem.
    pub fn from_parsed(files: impl IntoIterator<Item = ParsedFile>) -> Snapshot {
        let (mut statuses, mut manifests): (Vec<ParsedFile>, Vec<ParsedFile>) = files
            .into_iter()
            .filter(|(p, _)| is_manifest_path(p))
            .partition(|(p, _)| is_status_path(p));
        manifests.sort_by(|a, b| a.0.cmp(&b.0));
        statuses.sort_by(|a, b| a.0.cmp(&b.0));

        let mut problems = Vec::new();
        let mut collected = Collected::default();
        for (path, documents) in manifests {
            for result in documents {
                match result.map(|manifest| collected.add(&path, manifest)) {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) | Err(err) => problems.push(err),
                }
            }
        }
        // Status after every manifest, so each overlay lands on its object at once.
        let mut l2_statuses = Vec::new();
        for (_, documents) in statuses {
            for result in documents {
                match result {
                    Ok(Manifest::Service(overlay)) => {
                        if let Some(svc) = collected.services.get_mut(&key_of(&*overlay)) {
                            apply_service_overlay(svc, *overlay);
                        }
                    }
                    Ok(Manifest::IPAddressPool(overlay)) => {
                        if let Some(pool) = collected
                            .pools
                            .get_mut(&(String::new(), overlay.name_any()))
                        {
                            pool.status = overlay.status;
                            // When the controller first saw the pool: its seniority.
                            if overlay.metadata.creation_timestamp.is_some() {
                                pool.metadata.creation_timestamp =
                                    overlay.metadata.creation_timestamp;
                            }
                        }
                    }
                    Ok(Manifest::ServiceL2Status(status)) => l2_statuses.push(status),
                    Ok(_) => {}
                    Err(err) => problems.push(err),
                }
            }
        }

        Snapshot {
            pools: collected.pools.into_values().collect(),
            advertisements: collected.advertisements.into_values().collect(),
            services: collected.services.into_values().collect(),
            namespaces: collected.namespaces.into_values().collect(),
            nodes: collected.nodes.into_values().collect(),
            endpoint_slices: collected.endpoint_slices.into_values().collect(),
            l2_statuses,
            problems,
            held: Vec::new(),
        }
    }
}

/// Gives every pool without a creation time (one the controller sees for the first time) a
/// first-seen time, as the API server stamps new objects: `now`, or just after the youngest
/// pool's when the clock is behind it, so a pool seen later is always the younger
/// ([`super::seniority`]). Pools first seen together get one time and so stay in name order.
/// Returns the names of the pools stamped.
pub fn stamp_new_pools(pools: &mut [IPAddressPool], now: Timestamp) -> Vec<String> {
    let youngest = pools
        .iter()
        .filter_map(|p| p.metadata.creation_timestamp.as_ref())
        .max()
        .map(|t| t.0);
    let at = match youngest {
        Some(youngest) if youngest >= now => youngest
            .checked_add(SignedDuration::from_nanos(1))
            .unwrap_or(youngest),
        _ => now,
    };
    pools
        .iter_mut()
        .filter(|p| p.metadata.creation_timestamp.is_none())
        .map(|p| {
            p.metadata.creation_timestamp = Some(Time(at));
            p.name_any()
        })
        .collect()
}

fn key_of<K: ResourceExt>(object: &K) -> Key {
    (
        object
            .namespace()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        object.name_any(),
    )
}

/// The controller's overlay brings status and the allocated-from-pool annotation, nothing else.
fn apply_service_overlay(svc: &mut Service, overlay: Service) {
    let pool = overlay.annotations().get(IP_ALLOCATED_FROM_POOL).cloned();
    svc.status = overlay.status;
    match pool {
        Some(pool) => {
            svc.annotations_mut()
                .insert(IP_ALLOCATED_FROM_POOL.to_owned(), pool);
        }
        None => {
            svc.annotations_mut().remove(IP_ALLOCATED_FROM_POOL);
        }
    }
}

impl Collected {
    fn add(&mut self, path: &str, manifest: Manifest) -> Result<(), ManifestError> {
        match manifest {
            Manifest::IPAddressPool(o) => insert(
                &mut self.origins,
                &mut self.pools,
                "IPAddressPool",
                path,
                o,
                false,
            ),
            Manifest::L2Advertisement(o) => insert(
                &mut self.origins,
                &mut self.advertisements,
                "L2Advertisement",
                path,
                o,
                false,
            ),
            Manifest::Service(o) => insert(
                &mut self.origins,
                &mut self.services,
                "Service",
                path,
                *o,
                true,
            ),
            Manifest::Namespace(o) => insert(
                &mut self.origins,
                &mut self.namespaces,
                "Namespace",
                path,
                o,
                false,
            ),
            Manifest::Node(o) => {
                insert(&mut self.origins, &mut self.nodes, "Node", path, *o, false)
            }
            Manifest::EndpointSlice(o) => insert(
                &mut self.origins,
                &mut self.endpoint_slices,
                "EndpointSlice",
                path,
                o,
                true,
            ),
            // Written by speakers in a cluster; meaningless in a directory.
            Manifest::ServiceL2Status(_) => Ok(()),
        }
    }
}

/// Adds an object unless one of the same kind and name is already there. Namespaced kinds
/// without a namespace land in `default`; cluster-scoped ones (and pools, whose namespace does
/// not matter outside a cluster) are keyed by name alone.
fn insert<K: ResourceExt>(
    origins: &mut BTreeMap<(String, Key), String>,
    objects: &mut BTreeMap<Key, K>,
    kind: &str,
    path: &str,
    mut object: K,
    namespaced: bool,
) -> Result<(), ManifestError> {
    let key = if namespaced {
        let ns = object
            .namespace()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        object.meta_mut().namespace = Some(ns.clone());
        (ns, object.name_any())
    } else {
        (String::new(), object.name_any())
    };
    let described = match key.0.as_str() {
        "" => format!("{kind} {}", key.1),
        ns => format!("{kind} {ns}/{}", key.1),
    };
    match objects.entry(key.clone()) {
        Entry::Occupied(_) => {
            let first = origins
                .get(&(kind.to_owned(), key))
                .cloned()
                .unwrap_or_default();
            Err(ManifestError {
                source: path.to_owned(),
                document: 0,
                object: Some(described),
                field: "metadata.name".to_owned(),
                message: format!("defined twice; the first definition, in {first}, is used"),
            })
        }
        Entry::Vacant(slot) => {
            origins.insert((kind.to_owned(), key), path.to_owned());
            slot.insert(object);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lan}\nspec:\n  addresses: [10.250.0.100-10.250.0.150]\n";
    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: LoadBalancer\n  ports: [{port: 80}]\n";
    const STATUS: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  annotations: {metallb.io/ip-allocated-from-pool: lan}\nstatus:\n  loadBalancer:\n    ingress: [{ip: 10.250.0.100}]\n";

    #[test]
    fn status_files_overlay_user_manifests() {
        let snapshot = Snapshot::from_files([
            ("pools.yaml", POOL),
            ("apps/web.yml", SERVICE),
            ("status/services/default/web.yaml", STATUS),
            ("README.md", "not yaml at all: ["),
        ]);
        assert_eq!(snapshot.problems, vec![]);
        assert_eq!(snapshot.pools.len(), 1);
        let web = &snapshot.services[0];
        assert_eq!(web.namespace().as_deref(), Some("default"));
        assert_eq!(
            web.annotations()
                .get(IP_ALLOCATED_FROM_POOL)
                .map(String::as_str),
            Some("lan")
        );
        let ingress = web
            .status
            .clone()
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap();
        assert_eq!(ingress[0].ip.as_deref(), Some("10.250.0.100"));
    }

    #[test]
    fn status_without_its_service_is_ignored_and_specs_in_status_dir_are_not_users() {
        let snapshot = Snapshot::from_files([
            ("status/services/default/web.yaml", STATUS),
            ("status/pool.yaml", POOL),
        ]);
        assert!(snapshot.services.is_empty());
        assert!(snapshot.pools.is_empty());
    }

    #[test]
    fn duplicates_and_bad_documents_are_reported_and_the_rest_kept() {
        let snapshot = Snapshot::from_files([
            (
                "a.yaml",
                format!("{POOL}---\nkind: Nonsense\napiVersion: v1\nmetadata: {{name: x}}\n"),
            ),
            ("b.yaml", POOL.to_owned()),
        ]);
        assert_eq!(snapshot.pools.len(), 1);
        let problems: Vec<String> = snapshot.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].starts_with("a.yaml document 2 (Nonsense x): kind:"),
            "{problems:#?}"
        );
        assert_eq!(
            problems[1],
            "b.yaml (IPAddressPool lan): metadata.name: defined twice; the first definition, in a.yaml, is used"
        );
    }

    #[test]
    fn pools_seen_later_are_younger_and_the_first_seen_time_is_overlaid() {
        let status = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lan, creationTimestamp: \"2030-01-01T00:00:00.5Z\"}\nspec: {addresses: []}\n";
        let other = POOL.replace("name: lan", "name: a10");
        let mut snapshot = Snapshot::from_files([
            ("pools.yaml", POOL),
            ("a10.yaml", &other),
            ("status/ipaddresspools/lan.yaml", status),
        ]);
        let lan_seen: Timestamp = "2030-01-01T00:00:00.5Z".parse().unwrap();
        let created = |s: &Snapshot, name: &str| {
            s.pools
                .iter()
                .find(|p| p.name_any() == name)
                .and_then(|p| p.metadata.creation_timestamp.clone())
                .map(|t| t.0)
        };
        assert_eq!(created(&snapshot, "lan"), Some(lan_seen));
        assert_eq!(created(&snapshot, "a10"), None);

        // The clock is behind lan's stamp (set back): a10 is still the younger.
        let earlier: Timestamp = "2029-06-01T00:00:00Z".parse().unwrap();
        assert_eq!(stamp_new_pools(&mut snapshot.pools, earlier), ["a10"]);
        let a10 = created(&snapshot, "a10").unwrap();
        assert!(a10 > lan_seen, "{a10}");
        assert_eq!(
            stamp_new_pools(&mut snapshot.pools, earlier),
            Vec::<String>::new()
        );

        // First seen together: one time, so name order decides between them.
        let mut fresh = Snapshot::from_files([("pools.yaml", POOL), ("a10.yaml", &other)]);
        let now = Timestamp::now();
        assert_eq!(stamp_new_pools(&mut fresh.pools, now), ["a10", "lan"]);
        assert_eq!(created(&fresh, "a10"), Some(now));
        assert_eq!(created(&fresh, "lan"), Some(now));
    }

    #[test]
    fn paths() {
        assert_eq!(
            service_status_path("web", "app"),
            "status/services/web/app.yaml"
        );
        assert!(is_status_path("status/services/x/y.yaml"));
        assert!(!is_status_path("statuses.yaml"));
        assert!(
            is_manifest_path("a/b.yml")
                && !is_manifest_path(".hidden.yaml")
                && !is_manifest_path("x.json")
                && !is_manifest_path(CONTROLLER_RECORD_PATH)
                && !is_manifest_path(&last_good_path("pool.yaml"))
                && !is_manifest_path(&speaker_record_path("n1"))
        );
    }
}
