//! A watched kind's objects mirrored in memory: kept current from kube-runtime watcher events,
//! and replaced wholesale when the watcher re-lists (after a restart or 410 Gone), so objects
//! deleted during a gap do not linger.

use std::collections::BTreeMap;

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

/// One kind's objects by `namespace/name` (or name), plus the list in progress while its
/// watcher (re)lists.
#[derive(Debug)]
pub struct Mirror<V> {
    objects: BTreeMap<String, V>,
    relisting: Option<BTreeMap<String, V>>,
    synced: bool,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Mirror {
            objects: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

/// What a watch event amounts to.
#[derive(Debug)]
pub enum Seen<V> {
    Applied(V),
    Deleted(V),
    /// A (re)list completed: the whole set was replaced.
    Relisted,
    /// Part of a list in progress: nothing to decide yet.
    Pending,
}

/// `namespace/name`, or the name of a cluster-scoped object.
pub fn key_of<V: ResourceExt>(object: &V) -> String {
    match object.namespace() {
        Some(ns) => format!("{ns}/{}", object.name_any()),
        None => object.name_any(),
    }
}

impl<V: ResourceExt + Clone> Mirror<V> {
    /// Applies one watcher event.
    pub fn apply(&mut self, event: watcher::Event<V>) -> Seen<V> {
        match event {
            watcher::Event::Apply(v) => {
                self.objects.insert(key_of(&v), v.clone());
                Seen::Applied(v)
            }
            watcher::Event::Delete(v) => {
                self.objects.remove(&key_of(&v));
                Seen::Deleted(v)
            }
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                Seen::Pending
            }
            watcher::Event::InitApply(v) => {
                if let Some(list) = &mut self.relisting {
                    list.insert(key_of(&v), v);
                }
                Seen::Pending
            }
            watcher::Event::InitDone => {
                if let Some(list) = self.relisting.take() {
                    self.objects = list;
                }
                self.synced = true;
                Seen::Relisted
            }
        }
    }

    /// Whether the first list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn all(&self) -> Vec<V> {
        self.objects.values().cloned().collect()
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.objects.get(key)
    }
}

/// A watcher's events with kube's default backoff; errors are logged and retried (the watcher
/// re-lists by itself), so the stream only ends when the API client does.
pub fn watch_events<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Event<K>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .filter_map(|event| async move {
            match event {
                Ok(event) => Some(event),
                Err(err) => {
                    tracing::warn!("watch failed, retrying: {err}");
                    None
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;

    fn ns(name: &str) -> Namespace {
        Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_relist_replaces_everything() {
        let mut mirror = Mirror::default();
        assert!(!mirror.synced());
        mirror.apply(watcher::Event::Init);
        mirror.apply(watcher::Event::InitApply(ns("a")));
        mirror.apply(watcher::Event::InitApply(ns("b")));
        assert!(
            mirror.all().is_empty(),
            "nothing counts until the list is complete"
        );
        assert!(matches!(
            mirror.apply(watcher::Event::InitDone),
            Seen::Relisted
        ));
        assert_eq!(mirror.all().len(), 2);
        mirror.apply(watcher::Event::Delete(ns("a")));
        mirror.apply(watcher::Event::Init);
        mirror.apply(watcher::Event::InitApply(ns("c")));
        mirror.apply(watcher::Event::InitDone);
        let names: Vec<String> = mirror.all().iter().map(|n| n.name_any()).collect();
        assert_eq!(names, ["c"], "b vanished during the gap");
        assert!(mirror.get("c").is_some());
    }
}
