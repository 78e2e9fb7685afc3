//! One value per key, started at most once: the registry's guarantee of one actor per
//! session, kept apart from actors so its races can be tested on their own.
//!
//! A key maps to a slot that is inserted under the map's lock; the caller that inserted it
//! starts the value in a task of its own, and every other caller waits for that start. The
//! start runs to its end even when everyone waiting for it gives up (a client that went
//! away mid-request): a start half done (a lease claimed, an actor not yet registered)
//! would otherwise be left behind for good. A start that fails removes its slot *before*
//! it tells the waiters, and a waiter that hears of the failure starts over from the map:
//! no start ever runs on a slot the map has forgotten, which is how a failed start could
//! otherwise leave two values (two actors) for one key.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{oneshot, watch};

/// Values by key, each started once.
pub struct Slots<K, V> {
    map: Arc<DashMap<K, Arc<Slot<V>>>>,
}

/// Where a slot's start stands.
#[derive(Clone)]
enum State<V> {
    Starting,
    Ready(V),
    Failed,
}

struct Slot<V> {
    state: watch::Sender<State<V>>,
}

impl<V: Clone> Slot<V> {
    fn ready(&self) -> Option<V> {
        match &*self.state.borrow() {
            State::Ready(value) => Some(value.clone()),
            _ => None,
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Default for Slots<K, V> {
    fn default() -> Self {
        Slots { map: Arc::new(DashMap::new()) }
    }
}

/// Forgets a slot whose start ended without a value (failed, or its task panicked), and
/// tells its waiters so; disarmed once a value is set.
struct Cleanup<K: Eq + Hash, V> {
    map: Arc<DashMap<K, Arc<Slot<V>>>>,
    key: Option<K>,
    slot: Arc<Slot<V>>,
}

impl<K: Eq + Hash, V> Drop for Cleanup<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.map.remove_if(&key, |_, s| Arc::ptr_eq(s, &self.slot));
            self.slot.state.send_replace(State::Failed);
        }
    }
}

impl<K, V> Slots<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The value of `key`, started with `start` if there is none. Concurrent callers share
    /// one start, which runs in a task of its own to its end; after a failed start the
    /// next caller starts afresh on a new slot.
    pub async fn get_or_start<E, F, Fut>(&self, key: &K, start: F) -> Result<V, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + 'static,
    {
        loop {
            let (slot, mine) = match self.map.entry(key.clone()) {
                Entry::Occupied(entry) => (entry.get().clone(), false),
                Entry::Vacant(entry) => {
                    let slot = Arc::new(Slot { state: watch::channel(State::Starting).0 });
                    entry.insert(slot.clone());
                    (slot, true)
                }
            };
            if mine {
                let (tell, told) = oneshot::channel();
                let starting = start();
                let mut cleanup = Cleanup { map: self.map.clone(), key: Some(key.clone()), slot: slot.clone() };
                tokio::spawn(async move {
                    let result = starting.await;
                    let answer = match result {
                        Ok(value) => {
                            cleanup.key = None;
                            cleanup.slot.state.send_replace(State::Ready(value.clone()));
                            Ok(value)
                        }
                        // The slot is forgotten before anyone hears of the failure.
                        Err(e) => {
                            drop(cleanup);
                            Err(e)
                        }
                    };
                    let _ = tell.send(answer);
                });
                match told.await {
                    Ok(answer) => return answer,
                    // The start's task panicked; its slot is gone: start over.
                    Err(_) => continue,
                }
            }
            let mut state = slot.state.subscribe();
            let settled = state.wait_for(|s| !matches!(s, State::Starting)).await.map(|s| s.clone());
            if let Ok(State::Ready(value)) = settled {
                return Ok(value);
            }
        }
    }

    /// The started value of `key`, if any (never starts one).
    pub fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).and_then(|slot| slot.ready())
    }

    /// Forgets the value of `key` if `matches` says it is the one to forget.
    pub fn forget_if(&self, key: &K, matches: impl Fn(&V) -> bool) {
        self.map.remove_if(key, |_, slot| slot.ready().is_some_and(|v| matches(&v)));
    }

    /// Every started value.
    pub fn values(&self) -> Vec<V> {
        self.map.iter().filter_map(|e| e.value().ready()).collect()
    }

    /// How many values are started.
    pub fn started(&self) -> usize {
        self.map.iter().filter(|e| e.value().ready().is_some()).count()
    }

    /// How many keys have a slot, started or starting.
    pub fn len(&self) -> usize {
        self.map.len()
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

    /// Callers that give up while the start is under way (a client gone mid-request) do
    /// not cut it short: the value is set, and no slot is left starting forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_abandoned_by_every_caller_still_finishes() {
        let slots: Arc<Slots<u32, u32>> = Arc::new(Slots::default());
        let finished = Arc::new(AtomicUsize::new(0));
        for key in 0..100u32 {
            let finished = finished.clone();
            let start = move || {
                let finished = finished.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    if key % 2 == 0 { Ok(key) } else { Err(()) }
                }
            };
            let waiting = slots.get_or_start(&key, start);
            // Give up long before the start is done.
            assert!(tokio::time::timeout(Duration::from_millis(1), waiting).await.is_err());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 100, "every start ran to its end");
        assert_eq!(slots.started(), 50, "the successful starts are there");
        assert_eq!(slots.len(), 50, "the failed ones left no slot behind");
    }
}
