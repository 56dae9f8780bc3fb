//! A bounded map whose entries also expire with age: the duplicate-suppression cache of
//! gossip and search.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Keeps at most `capacity` entries, none older than `ttl`; the oldest go first.
#[derive(Debug)]
pub(crate) struct TimedCache<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<(Instant, K)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Eq + Hash + Copy, V> TimedCache<K, V> {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k)
    }

    pub(crate) fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// Inserts or replaces (a replaced entry keeps its age), then enforces the bounds.
    pub(crate) fn insert(&mut self, now: Instant, k: K, v: V) {
        self.expire(now);
        if self.map.insert(k, v).is_none() {
            self.order.push_back((now, k));
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Drops entries older than the TTL.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(t, k)) = self.order.front() {
            if now.saturating_duration_since(t) < self.ttl {
                break;
            }
            self.order.pop_front();
            self.map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count_and_age() {
        let t = Instant::now();
        let mut c = TimedCache::new(2, Duration::from_secs(10));
        c.insert(t, 1, ());
        c.insert(t, 2, ());
        c.insert(t, 3, ());
        assert!(!c.contains(&1) && c.contains(&2) && c.contains(&3));
        c.expire(t + Duration::from_secs(10));
        assert!(!c.contains(&2) && !c.contains(&3));
    }
}
