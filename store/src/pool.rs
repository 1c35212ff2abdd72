//! The pull-pool primitive: keyed in-flight work that runs once per key and wakes every
//! waiter when done (a watch channel, never polling). Across processes the blob ingest's
//! file lock plays the same role.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Why a waiter got no value.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PoolError<E> {
    #[error("{0}")]
    Failed(E),
    #[error("in-flight work was abandoned (its task panicked or was cancelled)")]
    Abandoned,
}

/// Whether a caller ran the work or joined someone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

type Slot<V, E> = watch::Receiver<Option<Result<V, E>>>;

/// A map of in-flight work keyed by `K` (a blob digest, a chain ID).
pub struct InFlight<K, V, E> {
    map: Arc<Mutex<HashMap<K, Slot<V, E>>>>,
}

impl<K, V, E> std::fmt::Debug for InFlight<K, V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

impl<K, V, E> Default for InFlight<K, V, E> {
    fn default() -> Self {
        InFlight { map: Arc::default() }
    }
}

/// Removes the key when the work ends, however it ends (success, error, panic).
struct Unregister<K: Eq + Hash, V, E> {
    map: Arc<Mutex<HashMap<K, Slot<V, E>>>>,
    key: Option<K>,
}

impl<K: Eq + Hash, V, E> Drop for Unregister<K, V, E> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&key);
        }
    }
}

impl<K, V, E> InFlight<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys in flight.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `make()` for `key` unless that key is already in flight, in which case waits
    /// for the running work. The work runs on its own task, so it finishes (and its result
    /// reaches the other waiters) even if the caller that started it goes away.
    pub async fn run<F, Fut>(&self, key: K, make: F) -> (Result<V, PoolError<E>>, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let (mut rx, role) = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(rx) => (rx.clone(), Role::Follower),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let fut = make();
                    let guard = Unregister {
                        map: self.map.clone(),
                        key: Some(key),
                    };
                    tokio::spawn(async move {
                        let out = fut.await;
                        // Unregister first: a caller arriving after this point starts
                        // afresh (and finds the blob already committed).
                        drop(guard);
                        let _ = tx.send(Some(out));
                    });
                    (rx, Role::Leader)
                }
            }
        };
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => match v.as_ref() {
                Some(Ok(v)) => Ok(v.clone()),
                Some(Err(e)) => Err(PoolError::Failed(e.clone())),
                None => Err(PoolError::Abandoned),
            },
            Err(_) => Err(PoolError::Abandoned),
        };
        (result, role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_once_per_key_and_wakes_all_waiters() {
        let pool: Arc<InFlight<String, u64, String>> = Arc::new(InFlight::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = watch::channel(false);
        let mut handles = Vec::new();
        for _ in 0..50 {
            let pool = pool.clone();
            let runs = runs.clone();
            let mut release = release_rx.clone();
            handles.push(tokio::spawn(async move {
                pool.run("sha256:abc".to_string(), move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = release.wait_for(|r| *r).await;
                    Ok::<_, String>(42)
                })
                .await
            }));
        }
        // Every caller has registered (one leader, the rest waiting) before release.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.len(), 1);
        release_tx.send(true).unwrap();
        let mut leaders = 0;
        for h in handles {
            let (res, role) = h.await.unwrap();
            assert_eq!(res, Ok(42));
            leaders += (role == Role::Leader) as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn errors_reach_every_waiter_and_key_is_released() {
        let pool: InFlight<u8, u8, String> = InFlight::new();
        let (res, _) = pool
            .run(1, || async { Err::<u8, _>("digest mismatch".to_string()) })
            .await;
        assert_eq!(res, Err(PoolError::Failed("digest mismatch".into())));
        assert!(pool.is_empty());
        let (res, role) = pool.run(1, || async { Ok::<_, String>(7) }).await;
        assert_eq!((res, role), (Ok(7), Role::Leader));
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_not_hung() {
        let pool: InFlight<u8, u8, String> = InFlight::new();
        let (res, _) = pool
            .run(1, || async {
                if true {
                    panic!("boom");
                }
                Ok::<u8, String>(0)
            })
            .await;
        assert_eq!(res, Err(PoolError::Abandoned));
        assert!(pool.is_empty());
    }
}
