//! Which Services hold each address. Almost always exactly one, so a held address costs its
//! 17-byte key and a 4-byte slot in one map; the few shared ones list their holders on the side.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::records::{Records, Slot};

#[derive(Debug, Default)]
pub(crate) struct Owners {
    /// Every held address: its holder, or None when several hold it (see `crowds`).
    held: BTreeMap<IpAddr, Option<Slot>>,
    /// The holders of each address held by several Services, by name.
    crowds: BTreeMap<IpAddr, Vec<Slot>>,
}

impl Owners {
    /// The holders of `ip`, by name.
    pub(crate) fn of(&self, ip: IpAddr) -> &[Slot] {
        match self.held.get(&ip) {
            Some(Some(one)) => std::slice::from_ref(one),
            Some(None) => self.crowds.get(&ip).map_or(&[], Vec::as_slice),
            None => &[],
        }
    }

    /// The held addresses in `range`, in order.
    pub(crate) fn range(&self, range: RangeInclusive<IpAddr>) -> impl Iterator<Item = IpAddr> {
        self.held.range(range).map(|(ip, _)| *ip)
    }

    /// Adds `slot` to the holders of `ip`, kept in name order as `records` tells; true when
    /// the address was free.
    pub(crate) fn insert(&mut self, ip: IpAddr, slot: Slot, records: &Records) -> bool {
        let name = |s: &Slot| records.at(*s).map(|r| &r.key);
        let Some(holder) = self.held.get_mut(&ip) else {
            self.held.insert(ip, Some(slot));
            return true;
        };
        match *holder {
            Some(one) if one == slot => {}
            Some(one) => {
                let mut crowd = vec![one, slot];
                crowd.sort_by(|a, b| name(a).cmp(&name(b)));
                self.crowds.insert(ip, crowd);
                *holder = None;
            }
            None => {
                let crowd = self.crowds.entry(ip).or_default();
                if let Err(at) = crowd.binary_search_by(|s| name(s).cmp(&name(&slot))) {
                    crowd.insert(at, slot);
                }
            }
        }
        false
    }

    /// Removes `slot` from the holders of `ip`; true when nobody holds it any more.
    pub(crate) fn remove(&mut self, ip: IpAddr, slot: Slot) -> bool {
        match self.held.get(&ip) {
            Some(Some(one)) if *one == slot => {
                self.held.remove(&ip);
                true
            }
            Some(None) => {
                if let Some(crowd) = self.crowds.get_mut(&ip) {
                    crowd.retain(|s| *s != slot);
                    if let [last] = crowd.as_slice() {
                        self.held.insert(ip, Some(*last));
                        self.crowds.remove(&ip);
                    }
                }
                false
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::records::Record;
    use crate::ipam::service::{ServiceKey, ServiceRequest};

    #[test]
    fn holders_stay_in_name_order_and_collapse_back() {
        let mut records = Records::default();
        for name in ["c", "a", "b"] {
            let request = ServiceRequest::new("ns", name);
            records.insert(Record {
                key: request.key.clone(),
                intent: request.intent().unwrap(),
                held: None,
                hold_only: false,
            });
        }
        let slot = |name| records.slot(&ServiceKey::new("ns", name)).unwrap();
        let (a, b, c) = (slot("a"), slot("b"), slot("c"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut owners = Owners::default();

        assert!(owners.insert(ip, c, &records));
        assert!(!owners.insert(ip, c, &records));
        assert!(!owners.insert(ip, a, &records));
        assert!(!owners.insert(ip, b, &records));
        assert_eq!(owners.of(ip), [a, b, c]);

        assert!(!owners.remove(ip, b));
        assert!(!owners.remove(ip, a));
        assert_eq!(owners.of(ip), [c]);
        assert!(owners.crowds.is_empty());
        assert!(!owners.remove(ip, a));
        assert!(owners.remove(ip, c));
        assert_eq!(owners.of(ip), []);
        assert_eq!(owners.range(ip..=ip).count(), 0);
    }
}
