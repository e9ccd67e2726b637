//! The fake API server's object store: objects by resource, namespace and name, one global
//! resourceVersion counter, and the change history watches replay (until compacted).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::resources::Resource;

/// What a write may fail with, mapped to the API server's Status responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    NotFound(String),
    AlreadyExists(String),
    Conflict(String),
    Invalid(String),
}

impl StoreError {
    pub fn code(&self) -> u16 {
        match self {
            StoreError::NotFound(_) => 404,
            StoreError::AlreadyExists(_) | StoreError::Conflict(_) => 409,
            StoreError::Invalid(_) => 422,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "NotFound",
            StoreError::AlreadyExists(_) => "AlreadyExists",
            StoreError::Conflict(_) => "Conflict",
            StoreError::Invalid(_) => "Invalid",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StoreError::NotFound(m)
            | StoreError::AlreadyExists(m)
            | StoreError::Conflict(m)
            | StoreError::Invalid(m) => m,
        }
    }
}

/// One change, as a watch delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub resource_version: u64,
    pub resource: Resource,
    pub namespace: Option<String>,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
}

type Key = (&'static str, &'static str, String, String);

/// Objects and their history. Pure: the HTTP layer and clock live outside.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    resource_version: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted_below: u64,
    uid_counter: u64,
}

fn key(resource: Resource, namespace: Option<&str>, name: &str) -> Key {
    (
        resource.api_version,
        resource.plural,
        namespace.unwrap_or_default().to_owned(),
        name.to_owned(),
    )
}

fn describe(resource: Resource, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", resource.kind),
        None => format!("{} {name}", resource.kind),
    }
}

fn stored_rv(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty())
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn compacted_below(&self) -> u64 {
        self.compacted_below
    }

    /// Forgets history up to now: watches from any earlier resourceVersion get 410 Gone.
    pub fn compact(&mut self) {
        self.compacted_below = self.resource_version + 1;
        self.history.clear();
    }

    pub fn get(&self, resource: Resource, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&key(resource, namespace, name))
    }

    /// Objects of a resource, in one namespace or all.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((api, plural, ns, _), _)| {
                *api == resource.api_version
                    && *plural == resource.plural
                    && namespace.is_none_or(|want| want == ns)
            })
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Changes after `since`, for watches.
    pub fn changes_since(&self, resource: Resource, since: u64) -> Vec<Change> {
        self.history
            .iter()
            .filter(|c| c.resource == resource && c.resource_version > since)
            .cloned()
            .collect()
    }

    fn next_rv(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn record(&mut self, resource: Resource, kind: &'static str, object: Value) -> Change {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let change = Change {
            resource_version: self.resource_version,
            resource,
            namespace,
            kind,
            object,
        };
        self.history.push(change.clone());
        change
    }

    /// Creates an object; `generateName` is honoured. Returns the stored object and its change.
    pub fn create(
        &mut self,
        resource: Resource,
        namespace: Option<&str>,
        mut object: Value,
        now: &str,
    ) -> Result<(Value, Change), StoreError> {
        let namespace = namespace.filter(|_| resource.namespaced);
        let meta = object
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                StoreError::Invalid(format!("{} body is not an object", resource.kind))
            })?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) => {
                    self.uid_counter += 1;
                    format!("{prefix}{:05x}", self.uid_counter)
                }
                None => {
                    return Err(StoreError::Invalid(format!(
                        "{}: metadata.name or metadata.generateName is required",
                        resource.kind
                    )));
                }
            },
        };
        if self.objects.contains_key(&key(resource, namespace, &name)) {
            return Err(StoreError::AlreadyExists(format!(
                "{} already exists",
                describe(resource, namespace, &name)
            )));
        }
        self.uid_counter += 1;
        let rv = self.next_rv();
        meta.insert("name".into(), json!(name));
        if let Some(ns) = namespace {
            meta.insert("namespace".into(), json!(ns));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", self.uid_counter)),
        );
        meta.insert("creationTimestamp".into(), json!(now));
        meta.insert("generation".into(), json!(1));
        if let Some(o) = object.as_object_mut() {
            o.insert("apiVersion".into(), json!(resource.api_version));
            o.insert("kind".into(), json!(resource.kind));
        }
        self.objects
            .insert(key(resource, namespace, &name), object.clone());
        let change = self.record(resource, "ADDED", object.clone());
        Ok((object, change))
    }

    /// Replaces an object (or only its status). A non-empty `metadata.resourceVersion` in
    /// `object` must match the stored one, or the write is refused with 409 Conflict. A write
    /// that changes nothing yields no change and keeps the resourceVersion, as the real server.
    pub fn replace(
        &mut self,
        resource: Resource,
        namespace: Option<&str>,
        name: &str,
        object: Value,
        status_only: bool,
    ) -> Result<(Value, Option<Change>), StoreError> {
        let namespace = namespace.filter(|_| resource.namespaced);
        let k = key(resource, namespace, name);
        let old = self.objects.get(&k).cloned().ok_or_else(|| {
            StoreError::NotFound(format!("{} not found", describe(resource, namespace, name)))
        })?;
        if let Some(wanted) = stored_rv(&object)
            && Some(wanted) != stored_rv(&old)
        {
            return Err(StoreError::Conflict(format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                resource.plural
            )));
        }
        let mut new = if status_only {
            let mut new = old.clone();
            if let (Some(o), Some(status)) = (new.as_object_mut(), object.get("status")) {
                o.insert("status".into(), status.clone());
            }
            new
        } else {
            let mut new = object;
            if resource.status_subresource
                && let Some(o) = new.as_object_mut()
            {
                match old.get("status") {
                    Some(status) => o.insert("status".into(), status.clone()),
                    None => o.remove("status"),
                };
            }
            new
        };
        // Identity and bookkeeping stay the server's.
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
        ] {
            if let Some(value) = old.pointer(&format!("/metadata/{field}")).cloned()
                && let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut)
            {
                meta.insert(field.into(), value);
            }
        }
        if new == old {
            return Ok((old, None));
        }
        let spec_changed = old.get("spec") != new.get("spec");
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let rv = self.next_rv();
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            meta.insert(
                "generation".into(),
                json!(generation + i64::from(spec_changed)),
            );
        }
        if let Some(o) = new.as_object_mut() {
            o.insert("apiVersion".into(), json!(resource.api_version));
            o.insert("kind".into(), json!(resource.kind));
        }
        self.objects.insert(k, new.clone());
        let change = self.record(resource, "MODIFIED", new.clone());
        Ok((new, Some(change)))
    }

    pub fn delete(
        &mut self,
        resource: Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(Value, Change), StoreError> {
        let namespace = namespace.filter(|_| resource.namespaced);
        let mut old = self
            .objects
            .remove(&key(resource, namespace, name))
            .ok_or_else(|| {
                StoreError::NotFound(format!("{} not found", describe(resource, namespace, name)))
            })?;
        let rv = self.next_rv();
        if let Some(meta) = old.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let change = self.record(resource, "DELETED", old.clone());
        Ok((old, change))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_kind;

    fn services() -> Resource {
        by_kind("v1", "Service").unwrap()
    }

    fn svc(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"type": "LoadBalancer"}})
    }

    #[test]
    fn create_assigns_identity_and_versions() {
        let mut store = Store::default();
        let (a, _) = store
            .create(services(), Some("web"), svc("a"), "t")
            .unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(a["metadata"]["namespace"], "web");
        assert_eq!(a["kind"], "Service");
        let err = store
            .create(services(), Some("web"), svc("a"), "t")
            .unwrap_err();
        assert_eq!(err.code(), 409);
        assert_eq!(store.list(services(), None).len(), 1);
        assert_eq!(store.list(services(), Some("other")).len(), 0);
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let mut store = Store::default();
        let (a, _) = store
            .create(services(), Some("web"), svc("a"), "t")
            .unwrap();
        let mut edit = a.clone();
        edit["spec"]["ports"] = json!([{"port": 80}]);
        let (edited, _) = store
            .replace(services(), Some("web"), "a", edit.clone(), false)
            .unwrap();
        assert_eq!(edited["metadata"]["resourceVersion"], "2");
        assert_eq!(edited["metadata"]["generation"], 2);
        let err = store
            .replace(services(), Some("web"), "a", edit, false)
            .unwrap_err();
        assert_eq!(err.reason(), "Conflict");
    }

    #[test]
    fn status_is_a_subresource() {
        let mut store = Store::default();
        let (a, _) = store
            .create(services(), Some("web"), svc("a"), "t")
            .unwrap();
        let mut with_status = a.clone();
        with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}});
        with_status["spec"]["type"] = json!("ClusterIP");
        let (after, _) = store
            .replace(services(), Some("web"), "a", with_status.clone(), true)
            .unwrap();
        assert_eq!(
            after["spec"]["type"], "LoadBalancer",
            "a status write leaves spec alone"
        );
        assert_eq!(
            after["status"]["loadBalancer"]["ingress"][0]["ip"],
            "10.0.0.1"
        );
        with_status["metadata"]["resourceVersion"] = after["metadata"]["resourceVersion"].clone();
        with_status["status"] = json!({});
        let (after, _) = store
            .replace(services(), Some("web"), "a", with_status, false)
            .unwrap();
        assert_eq!(after["spec"]["type"], "ClusterIP");
        assert_eq!(
            after["status"]["loadBalancer"]["ingress"][0]["ip"], "10.0.0.1",
            "a main write leaves status alone"
        );
    }

    #[test]
    fn history_replays_until_compacted() {
        let mut store = Store::default();
        store
            .create(services(), Some("web"), svc("a"), "t")
            .unwrap();
        store
            .create(services(), Some("web"), svc("b"), "t")
            .unwrap();
        store.delete(services(), Some("web"), "a").unwrap();
        let kinds: Vec<_> = store
            .changes_since(services(), 1)
            .iter()
            .map(|c| c.kind)
            .collect();
        assert_eq!(kinds, ["ADDED", "DELETED"]);
        store.compact();
        assert_eq!(store.compacted_below(), 4);
        assert!(store.changes_since(services(), 0).is_empty());
    }

    #[test]
    fn a_write_that_changes_nothing_keeps_the_version() {
        let mut store = Store::default();
        let (a, _) = store
            .create(services(), Some("web"), svc("a"), "t")
            .unwrap();
        let (same, _) = store
            .replace(services(), Some("web"), "a", a.clone(), false)
            .unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], "1");
        assert_eq!(store.resource_version(), 1);
    }
}
