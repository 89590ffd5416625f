//! A least-recently-used map bounded by the bytes of its values, for chunks and index
//! pages read from the vault. Values are shared (`Arc`), so a hit costs no copy.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

pub struct ByteLru<K, V> {
    inner: Mutex<Inner<K, V>>,
    capacity: usize,
}

struct Inner<K, V> {
    map: HashMap<K, (Arc<V>, u64, usize)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    bytes: usize,
}

impl<K: Eq + Hash + Clone, V> ByteLru<K, V> {
    pub fn new(capacity: usize) -> Self {
        ByteLru {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
            }),
            capacity,
        }
    }

    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        let mut g = self.inner.lock().expect("cache lock");
        let inner = &mut *g;
        let (value, tick, _) = inner.map.get_mut(key)?;
        inner.order.remove(tick);
        inner.tick += 1;
        *tick = inner.tick;
        inner.order.insert(inner.tick, key.clone());
        Some(value.clone())
    }

    /// Inserts `value` of `size` bytes, evicting the least recently used entries. A value
    /// larger than the whole capacity is not kept.
    pub fn insert(&self, key: K, value: Arc<V>, size: usize) {
        if size > self.capacity {
            return;
        }
        let mut g = self.inner.lock().expect("cache lock");
        let inner = &mut *g;
        if let Some((_, tick, old)) = inner.map.remove(&key) {
            inner.order.remove(&tick);
            inner.bytes -= old;
        }
        while inner.bytes + size > self.capacity {
            let Some((_, victim)) = inner.order.pop_first() else {
                break;
            };
            if let Some((_, _, s)) = inner.map.remove(&victim) {
                inner.bytes -= s;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.insert(tick, key.clone());
        inner.map.insert(key, (value, tick, size));
        inner.bytes += size;
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("cache lock").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_the_byte_bound() {
        let c = ByteLru::new(100);
        c.insert(1, Arc::new("a"), 40);
        c.insert(2, Arc::new("b"), 40);
        assert!(c.get(&1).is_some()); // 1 is now more recent than 2
        c.insert(3, Arc::new("c"), 40);
        assert!(c.get(&2).is_none(), "2 was least recently used");
        assert!(c.get(&1).is_some() && c.get(&3).is_some());
        assert!(c.bytes() <= 100);
        c.insert(4, Arc::new("huge"), 101);
        assert!(c.get(&4).is_none());
        c.insert(1, Arc::new("a2"), 10);
        assert_eq!(*c.get(&1).unwrap(), "a2");
        assert_eq!(c.bytes(), 50);
    }
}
