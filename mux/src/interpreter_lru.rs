//! `InterpreterLru`: the per-Target policy that keeps at most `MITOGEN_MAX_INTERPRETERS`
//! become interpreters alive.
//!
//! Plain logic with no actors in it, so the policy can be tested on its own: the Target
//! tells it when an account starts and finishes calls, and it answers which idle
//! interpreters to stop. The rules (docs/protocol.md, "Become interpreters"):
//!
//! - before one more is spawned, the least recently used *idle* ones are stopped until
//!   there is room;
//! - a busy one (a call queued, spawning or running) is never stopped; if every one is busy
//!   the Target goes over the limit, and comes back to it as calls finish;
//! - the login interpreter is not an entry here: it is never counted and never evicted.

use std::hash::Hash;

use lru::LruCache;

/// What [`InterpreterLru::admit`] decided for a new interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission<K> {
    /// Idle interpreters to stop now, least recently used first.
    pub evict: Vec<K>,
    /// Set when every live interpreter is busy, so the new one takes the count past the
    /// limit (the Target warns).
    pub over_limit: bool,
}

/// Become interpreters of one Target, most recently used first, with their busy counts.
#[derive(Debug)]
pub struct InterpreterLru<K: Hash + Eq> {
    /// Key -> number of calls queued or running on it; recency order is the LRU's.
    entries: LruCache<K, usize>,
    /// `MITOGEN_MAX_INTERPRETERS`: how many may live when not all are busy.
    limit: usize,
}

impl<K: Hash + Eq + Clone> InterpreterLru<K> {
    /// An empty policy for at most `limit` interpreters (`limit` >= 1, checked at start).
    pub fn new(limit: usize) -> InterpreterLru<K> {
        InterpreterLru {
            entries: LruCache::unbounded(),
            limit: limit.max(1),
        }
    }

    /// How many become interpreters are alive (or being spawned).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `key` has an entry.
    #[cfg(test)]
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains(key)
    }

    /// Whether `key` has calls queued or running.
    #[cfg(test)]
    pub fn is_busy(&self, key: &K) -> bool {
        self.entries.peek(key).is_some_and(|busy| *busy > 0)
    }

    /// Makes room for a new interpreter `key` and records it (idle, most recent). The
    /// caller stops the returned idle interpreters before spawning the new one.
    pub fn admit(&mut self, key: K) -> Admission<K> {
        let mut evict = Vec::new();
        while self.entries.len() >= self.limit {
            match self.least_recent_idle() {
                Some(victim) => {
                    self.entries.pop(&victim);
                    evict.push(victim);
                }
                None => break,
            }
        }
        let over_limit = self.entries.len() >= self.limit;
        self.entries.put(key, 0);
        Admission { evict, over_limit }
    }

    /// A call for `key` was queued or sent: it is busy and the most recently used.
    pub fn start_call(&mut self, key: &K) {
        if let Some(busy) = self.entries.get_mut(key) {
            *busy += 1;
        }
    }

    /// A call for `key` was answered, failed or cancelled. Returns idle interpreters to stop
    /// because the Target is over its limit (at most down to the limit).
    pub fn finish_call(&mut self, key: &K) -> Vec<K> {
        if let Some(busy) = self.entries.peek_mut(key) {
            *busy = busy.saturating_sub(1);
        }
        self.trim()
    }

    /// Forgets `key` (its interpreter failed to spawn, died or was stopped).
    pub fn remove(&mut self, key: &K) {
        self.entries.pop(key);
    }

    /// Pops least recently used idle interpreters while over the limit.
    fn trim(&mut self) -> Vec<K> {
        let mut evict = Vec::new();
        while self.entries.len() > self.limit {
            match self.least_recent_idle() {
                Some(victim) => {
                    self.entries.pop(&victim);
                    evict.push(victim);
                }
                None => break,
            }
        }
        evict
    }

    /// The least recently used entry with nothing queued or running.
    fn least_recent_idle(&self) -> Option<K> {
        self.entries
            .iter()
            .rev()
            .find(|(_, busy)| **busy == 0)
            .map(|(key, _)| key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns `key` through the policy and starts one call on it, as the Target does.
    fn spawn(lru: &mut InterpreterLru<&'static str>, key: &'static str) -> Admission<&'static str> {
        let admission = lru.admit(key);
        lru.start_call(&key);
        admission
    }

    #[test]
    fn evicts_least_recently_used_idle_one() {
        let mut lru = InterpreterLru::new(2);
        assert!(spawn(&mut lru, "a").evict.is_empty());
        assert!(lru.finish_call(&"a").is_empty());
        spawn(&mut lru, "b");
        lru.finish_call(&"b");
        // a is used again: b becomes the least recent.
        lru.start_call(&"a");
        lru.finish_call(&"a");
        let admission = spawn(&mut lru, "c");
        assert_eq!(admission.evict, vec!["b"]);
        assert!(!admission.over_limit);
        assert!(lru.contains(&"a") && lru.contains(&"c") && !lru.contains(&"b"));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn never_evicts_busy_ones_and_recovers_as_they_finish() {
        let mut lru = InterpreterLru::new(2);
        spawn(&mut lru, "a");
        spawn(&mut lru, "b");
        // Both busy: c goes over the limit.
        let admission = spawn(&mut lru, "c");
        assert!(admission.evict.is_empty());
        assert!(admission.over_limit);
        assert_eq!(lru.len(), 3);
        // b finishes while over the limit: it is the only idle one, so it goes.
        assert_eq!(lru.finish_call(&"b"), vec!["b"]);
        assert_eq!(lru.len(), 2);
        // Back at the limit: finishing does not evict.
        assert!(lru.finish_call(&"a").is_empty());
        assert!(lru.finish_call(&"c").is_empty());
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn busy_least_recent_is_skipped_for_an_idle_newer_one() {
        let mut lru = InterpreterLru::new(2);
        spawn(&mut lru, "a"); // stays busy
        spawn(&mut lru, "b");
        lru.finish_call(&"b");
        let admission = spawn(&mut lru, "c");
        assert_eq!(admission.evict, vec!["b"]);
        assert!(lru.is_busy(&"a"));
    }

    #[test]
    fn thirty_accounts_with_limit_five_never_exceed_five() {
        let mut lru = InterpreterLru::new(5);
        let names: Vec<&'static str> = (0..30)
            .map(|i| &*Box::leak(format!("u{i}").into_boxed_str()))
            .collect();
        for name in &names {
            if !lru.contains(name) {
                spawn(&mut lru, name);
            } else {
                lru.start_call(name);
            }
            assert!(lru.len() <= 5);
            lru.finish_call(name);
        }
        assert_eq!(lru.len(), 5);
    }

    #[test]
    fn removed_entries_free_their_slot() {
        let mut lru = InterpreterLru::new(1);
        spawn(&mut lru, "a");
        lru.remove(&"a");
        let admission = spawn(&mut lru, "b");
        assert!(admission.evict.is_empty() && !admission.over_limit);
    }
}
