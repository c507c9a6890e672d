//! Group commit: writes that arrive while the database is busy with earlier ones are
//! applied together, in one transaction, instead of one transaction each.
//!
//! A lane is a task that takes the first waiting item, adds every other item already
//! waiting (up to a limit), hands the lot to the batch function and answers each caller
//! with its own result. A lone item goes through at once: batching adds no delay, it only
//! gathers what piled up behind a transaction in flight. Items that must not run in two
//! transactions at once (two webhooks of one call) share a lane by their key.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc};

use futures_util::FutureExt as _;

use tokio::sync::{mpsc, oneshot};

use super::DbError;

/// Waiting room of one lane; a full lane makes callers wait (back-pressure).
const LANE_CAPACITY: usize = 1024;

struct Job<I, O> {
    item: I,
    reply: oneshot::Sender<O>,
}

/// Handle to the lanes; cheap to clone. The lanes stop once every handle is gone and
/// what was waiting has been applied.
pub struct Batcher<I, O> {
    lanes: Arc<Vec<mpsc::Sender<Job<I, O>>>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            lanes: self.lanes.clone(),
        }
    }
}

/// The batch function panicked or its lane is gone: the caller cannot know whether its
/// item was written.
#[derive(Debug, thiserror::Error)]
#[error("the write batch was lost")]
pub struct BatchLost;

impl<I, O> Batcher<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// Starts `lanes` lanes on the current Tokio runtime. `apply` gets at most
    /// `max_batch` items, in arrival order, and returns one result per item, in order.
    /// `kind` names the writes in the metrics.
    pub fn start<F, Fut>(kind: &'static str, lanes: usize, max_batch: usize, apply: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let apply = Arc::new(apply);
        let senders = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_CAPACITY);
                tokio::spawn(run_lane(kind, rx, max_batch.max(1), apply.clone()));
                tx
            })
            .collect();
        Self {
            lanes: Arc::new(senders),
        }
    }

    /// Applies `item` with whatever else is waiting in the lane `key` picks.
    pub async fn submit(&self, key: u64, item: I) -> Result<O, BatchLost> {
        let lane = &self.lanes[(key % self.lanes.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        lane.send(Job { item, reply })
            .await
            .map_err(|_| BatchLost)?;
        answer.await.map_err(|_| BatchLost)
    }
}

async fn run_lane<I, O, F, Fut>(
    kind: &'static str,
    mut rx: mpsc::Receiver<Job<I, O>>,
    max_batch: usize,
    apply: Arc<F>,
) where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<O>> + Send + 'static,
{
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
            jobs.drain(..).map(|job| (job.item, job.reply)).unzip();
        crate::metrics::write_batch(kind, items.len());
        // A panic loses this batch (its callers hear BatchLost), not the lane.
        let outputs = match AssertUnwindSafe(apply(items)).catch_unwind().await {
            Ok(outputs) => outputs,
            Err(_) => {
                tracing::error!("a write batch panicked");
                continue;
            }
        };
        debug_assert_eq!(outputs.len(), replies.len());
        for (reply, output) in replies.into_iter().zip(outputs) {
            // The caller may have gone (a client hung up): its write stands all the same.
            let _ = reply.send(output);
        }
    }
}

/// Writes `items` with `together` (one statement or transaction for all of them); should
/// that fail, writes each with `each`, so one item's trouble (a row the database refuses, a
/// deadlock) is never another's. A lone item goes straight to `each`. When the database is
/// out of reach, every item fails at once instead: one by one would only make each caller
/// wait for its own time-out in turn. `kind` names the writes in the log.
pub async fn together_or_each<'a, I, T, Together, Each>(
    kind: &str,
    items: &'a [I],
    together: impl FnOnce(&'a [I]) -> Together,
    each: impl Fn(&'a I) -> Each,
) -> Vec<Result<T, DbError>>
where
    Together: Future<Output = Result<Vec<Result<T, DbError>>, DbError>>,
    Each: Future<Output = Result<T, DbError>>,
{
    if items.len() > 1 {
        match together(items).await {
            Ok(outputs) => return outputs,
            Err(err) if err.is_unavailable() => {
                tracing::warn!(error = %err, kind, items = items.len(), "a write batch failed: the database is out of reach");
                return items.iter().map(|_| Err(DbError::unavailable())).collect();
            }
            Err(err) => {
                tracing::warn!(error = %err, kind, items = items.len(), "a write batch failed; writing its items one by one");
            }
        }
    }
    let mut outputs = Vec::with_capacity(items.len());
    for item in items {
        outputs.push(each(item).await);
    }
    outputs
}

/// A stable lane key for a string.
pub fn key_of(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_each_caller_with_its_own_result_and_gathers_waiting_items() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::start("test", 1, 8, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(items.len());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 10).collect()
            }
        });
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.submit(0, i).await.unwrap()) })
            })
            .collect();
        for handle in handles {
            let (i, out) = handle.await.unwrap();
            assert_eq!(out, i * 10);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|n| *n <= 8), "{sizes:?}");
        assert!(
            sizes.len() < 20,
            "items waiting behind a batch were gathered: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_is_written_item_by_item_unless_the_database_is_out_of_reach() {
        let each_calls = std::sync::atomic::AtomicUsize::new(0);
        let each = |item: &u32| {
            each_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let item = *item;
            async move {
                if item == 2 {
                    Err(DbError::NotFound)
                } else {
                    Ok(item)
                }
            }
        };
        let refused = together_or_each(
            "test",
            &[1, 2, 3],
            |_| async { Err(DbError::Other(sqlx::Error::RowNotFound)) },
            each,
        )
        .await;
        assert_eq!(each_calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(matches!(
            refused[..],
            [Ok(1), Err(DbError::NotFound), Ok(3)]
        ));

        each_calls.store(0, std::sync::atomic::Ordering::SeqCst);
        let unreachable = together_or_each(
            "test",
            &[1, 2, 3],
            |_| async { Err(DbError::Other(sqlx::Error::PoolTimedOut)) },
            each,
        )
        .await;
        assert_eq!(each_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(unreachable.len(), 3);
        assert!(
            unreachable
                .iter()
                .all(|r| matches!(r, Err(e) if e.is_unavailable()))
        );
    }

    #[tokio::test]
    async fn a_panicking_batch_loses_only_its_items() {
        let batcher = Batcher::start("test", 1, 4, |items: Vec<u32>| async move {
            assert!(!items.contains(&13), "unlucky");
            items
        });
        assert!(batcher.submit(0, 13).await.is_err());
        assert_eq!(batcher.submit(0, 7).await.unwrap(), 7);
    }
}
