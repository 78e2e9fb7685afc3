//! One value per key, started at most once: the registry's guarantee of one actor per
//! session, kept apart from actors so its races can be tested on their own.
//!
//! A key maps to a once-cell that is inserted under the map's lock and filled outside it,
//! so concurrent first uses share one start. A start that fails removes its cell *before*
//! it lets the next waiter in, and a waiter whose cell is no longer the mapped one starts
//! over from the map: no start ever runs on a cell the map has forgotten, which is how a
//! failed start could otherwise leave two values (two actors) for one key.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::OnceCell;

/// Values by key, each started once.
pub struct Slots<K, V> {
    map: DashMap<K, Arc<OnceCell<V>>>,
}

enum StartError<E> {
    /// The cell was forgotten while this caller waited; look it up again.
    Stale,
    /// The start failed.
    Failed(E),
}

impl<K: Eq + Hash + Clone, V: Clone> Default for Slots<K, V> {
    fn default() -> Self {
        Slots { map: DashMap::new() }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Slots<K, V> {
    /// The value of `key`, started with `start` if there is none. Concurrent callers share
    /// one start; after a failed start the next caller starts afresh on a new cell.
    pub async fn get_or_start<E, F, Fut>(&self, key: &K, start: F) -> Result<V, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        loop {
            let cell = self.map.entry(key.clone()).or_insert_with(|| Arc::new(OnceCell::new())).clone();
            let result = cell
                .get_or_try_init(|| async {
                    if !self.is_current(key, &cell) {
                        return Err(StartError::Stale);
                    }
                    match start().await {
                        Ok(value) => Ok(value),
                        Err(e) => {
                            // Forget the cell while still holding its start, so no waiter
                            // can start on it once this start returns.
                            self.map.remove_if(key, |_, c| Arc::ptr_eq(c, &cell));
                            Err(StartError::Failed(e))
                        }
                    }
                })
                .await;
            match result {
                Ok(value) => return Ok(value.clone()),
                Err(StartError::Stale) => continue,
                Err(StartError::Failed(e)) => return Err(e),
            }
        }
    }

    fn is_current(&self, key: &K, cell: &Arc<OnceCell<V>>) -> bool {
        self.map.get(key).is_some_and(|c| Arc::ptr_eq(&c, cell))
    }

    /// The started value of `key`, if any (never starts one).
    pub fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).and_then(|cell| cell.get().cloned())
    }

    /// Forgets the value of `key` if `matches` says it is the one to forget.
    pub fn forget_if(&self, key: &K, matches: impl Fn(&V) -> bool) {
        self.map.remove_if(key, |_, cell| cell.get().is_some_and(&matches));
    }

    /// Every started value.
    pub fn values(&self) -> Vec<V> {
        self.map.iter().filter_map(|e| e.value().get().cloned()).collect()
    }

    /// How many values are started.
    pub fn started(&self) -> usize {
        self.map.iter().filter(|e| e.value().initialized()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// The first start fails while others wait on it and a newcomer arrives after the
    /// failure: everyone ends up with the one value of the second start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_start_leaves_one_value() {
        for _ in 0..50 {
            let slots: Arc<Slots<u32, usize>> = Arc::new(Slots::default());
            let starts = Arc::new(AtomicUsize::new(0));
            let start = {
                let starts = starts.clone();
                move || {
                    let starts = starts.clone();
                    async move {
                        let n = starts.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        if n == 0 { Err("first start fails") } else { Ok(n) }
                    }
                }
            };
            let callers: Vec<_> = (0..8)
                .map(|i| {
                    let (slots, start) = (slots.clone(), start.clone());
                    tokio::spawn(async move {
                        // Half arrive during the failing start, half just after it.
                        tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 0 } else { 6 })).await;
                        slots.get_or_start(&7, start).await
                    })
                })
                .collect();
            let results: Vec<_> = futures::future::join_all(callers).await.into_iter().map(Result::unwrap).collect();
            let values: std::collections::HashSet<usize> = results.iter().filter_map(|r| r.ok()).collect();
            assert_eq!(values.len(), 1, "one value for one key: {results:?}");
            assert_eq!(starts.load(Ordering::SeqCst), 2, "one failed start, one that succeeded");
            assert_eq!(slots.get(&7), values.into_iter().next());
        }
    }

    #[tokio::test]
    async fn forget_only_the_matching_value() {
        let slots: Slots<u32, u32> = Slots::default();
        assert_eq!(slots.get_or_start(&1, || async { Ok::<_, ()>(10) }).await, Ok(10));
        slots.forget_if(&1, |v| *v == 11);
        assert_eq!(slots.get(&1), Some(10));
        slots.forget_if(&1, |v| *v == 10);
        assert_eq!(slots.get(&1), None);
        assert_eq!(slots.get_or_start(&1, || async { Ok::<_, ()>(12) }).await, Ok(12));
        assert_eq!(slots.values(), vec![12]);
        assert_eq!(slots.started(), 1);
    }
}
