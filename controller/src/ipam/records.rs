//! Every Service the allocator knows, one compact record each.
//!
//! Records live in a slab whose freed slots are reused, and are found by name through an index
//! of 4-byte slots, so the B-tree nodes, which are half empty after in-order inserts, hold
//! 20-byte entries and not whole records. The address owners refer to records by slot too.
//! The slab grows in fixed chunks: growing never copies it (no moment with two copies
//! resident) and never reserves more than one chunk ahead.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use super::Assignment;
use super::pool::{PoolId, PoolNames};
use super::service::{Intent, Ips, ServiceKey};

/// What the allocator holds for one Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub pool: PoolId,
    pub ips: Ips,
}

impl Held {
    pub(crate) fn assignment(&self, names: &PoolNames) -> Assignment {
        Assignment {
            pool: names.name(self.pool).to_string(),
            ips: self.ips.to_vec(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub key: ServiceKey,
    pub intent: Intent,
    pub held: Option<Held>,
    /// The request could not be read; the Service only keeps what its status held and is
    /// never given new addresses until a readable request comes.
    pub hold_only: bool,
}

// The memory budget of a Service (docs/benchmarks.md): keep rare fields behind `Intent`'s box.
const _: () = assert!(size_of::<Record>() <= 64);

/// Where a record lives in the slab; non-zero so that `Option<Slot>` takes 4 bytes too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot(NonZeroU32);

impl Slot {
    fn new(index: usize) -> Slot {
        u32::try_from(index + 1)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Slot)
            .expect("fewer than 2^32 Services")
    }

    fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// Records per slab chunk: 64 KiB, small enough for malloc's heap and reuse.
const CHUNK: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Records {
    /// The slab: chunks of `CHUNK` slots, each allocated once at full size.
    chunks: Vec<Vec<Option<Record>>>,
    /// Empty slots, reused before the slab grows.
    free: Vec<Slot>,
    by_key: BTreeMap<ServiceKey, Slot>,
}

impl Records {
    pub(crate) fn slot(&self, key: &ServiceKey) -> Option<Slot> {
        self.by_key.get(key).copied()
    }

    pub(crate) fn get(&self, key: &ServiceKey) -> Option<&Record> {
        self.at(self.slot(key)?)
    }

    pub(crate) fn at(&self, slot: Slot) -> Option<&Record> {
        let i = slot.index();
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)?.as_ref()
    }

    pub(crate) fn at_mut(&mut self, slot: Slot) -> Option<&mut Record> {
        self.place(slot)?.as_mut()
    }

    /// Every record, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Record> {
        self.by_key.values().filter_map(|slot| self.at(*slot))
    }

    /// Stores the record, replacing the Service's previous one in place (its slot stays).
    pub(crate) fn insert(&mut self, record: Record) {
        let slot = match self.slot(&record.key) {
            Some(slot) => slot,
            None => {
                let slot = self.vacant();
                self.by_key.insert(record.key.clone(), slot);
                slot
            }
        };
        if let Some(place) = self.place(slot) {
            *place = Some(record);
        }
    }

    pub(crate) fn remove(&mut self, key: &ServiceKey) -> Option<Record> {
        let slot = self.by_key.remove(key)?;
        self.free.push(slot);
        self.place(slot)?.take()
    }

    fn place(&mut self, slot: Slot) -> Option<&mut Option<Record>> {
        let i = slot.index();
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    /// A slot that holds nothing: a freed one, else a new one at the end of the slab.
    fn vacant(&mut self) -> Slot {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        let chunks = self.chunks.len();
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => {
                last.push(None);
                Slot::new((chunks - 1) * CHUNK + last.len() - 1)
            }
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(None);
                self.chunks.push(chunk);
                Slot::new(chunks * CHUNK)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::service::{FamilyPolicy, ServiceRequest};

    fn record(name: &str) -> Record {
        let request = ServiceRequest::new("ns", name);
        Record {
            key: request.key.clone(),
            intent: request.intent().unwrap(),
            held: None,
            hold_only: false,
        }
    }

    #[test]
    fn slots_are_reused_and_names_stay_ordered() {
        let mut records = Records::default();
        for i in (0..2 * CHUNK + 3).rev() {
            records.insert(record(&format!("s{i:05}")));
        }
        let key = |name: &str| ServiceKey::new("ns", name);
        let last = records.slot(&key("s00000")).unwrap();
        assert_eq!(last.index(), 2 * CHUNK + 2);
        assert_eq!(records.at(last).unwrap().key, key("s00000"));

        let freed = records.slot(&key("s00007")).unwrap();
        assert!(records.remove(&key("s00007")).is_some());
        assert!(records.get(&key("s00007")).is_none());
        records.insert(record("new"));
        assert_eq!(records.slot(&key("new")), Some(freed));

        let mut replaced = record("new");
        replaced.intent = ServiceRequest::new("ns", "new")
            .with_families(FamilyPolicy::PreferDualStack, &[])
            .intent()
            .unwrap();
        records.insert(replaced);
        assert_eq!(records.slot(&key("new")), Some(freed));
        assert_eq!(
            records.get(&key("new")).unwrap().intent.policy,
            FamilyPolicy::PreferDualStack
        );

        let names: Vec<String> = records.iter().map(|r| r.key.to_string()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 2 * CHUNK + 3);
    }
}
