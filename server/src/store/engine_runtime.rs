//! The threads an embedded database runs on.

use super::StoreError;

/// Threads of their own for an embedded database. The engine's background work (the
/// full-text index's compaction) runs on the runtime it was started on, and SurrealDB runs a
/// query's filter in tasks it spawns on the runtime the query runs on; searches run here
/// too (see [`Store::on_engine`](super::Store::on_engine)). So that work competes with the streams only as threads
/// do, for the cores, and never holds a worker of the runtime that serves requests and
/// streams replies (BENCHMARKS.md, "Streams beside searches"). One worker per core, so a
/// search keeps its parallelism. The threads end when the last handle to them is gone.
pub(super) struct EngineRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl EngineRuntime {
    /// How long the database's tasks get to finish (its own shutdown, once the last
    /// handle is dropped) before its threads end.
    const WIND_DOWN: std::time::Duration = std::time::Duration::from_secs(5);

    pub(super) async fn start() -> std::io::Result<EngineRuntime> {
        let (started, handle) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The runtime is made and dropped on the keeper thread only: a runtime dropped
        // where async code runs panics.
        std::thread::Builder::new().name("relay-db-keeper".into()).spawn(move || {
            let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("relay-db")
                .on_thread_park(crate::idle_memory::thread_going_idle)
                .enable_all()
                .build();
            let runtime = match built {
                Ok(runtime) => runtime,
                Err(error) => return drop(started.send(Err(error))),
            };
            if started.send(Ok(runtime.handle().clone())).is_err() {
                return;
            }
            runtime.block_on(async {
                let _ = stopped.await;
                // The database shuts itself down in a task once its last handle is gone.
                let deadline = tokio::time::Instant::now() + Self::WIND_DOWN;
                let metrics = tokio::runtime::Handle::current().metrics();
                while metrics.num_alive_tasks() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            });
        })?;
        let handle = handle.await.map_err(std::io::Error::other)??;
        Ok(EngineRuntime { handle, _stop: stop })
    }

    /// Runs `work` on these threads; dropped before it ends, the work is aborted.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let task = tokio_util::task::AbortOnDropHandle::new(self.handle.spawn(work));
        task.await.map_err(|e| StoreError::Engine(std::io::Error::other(e)))?
    }
}
