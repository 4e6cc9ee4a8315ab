//! Group commit for the hot path. One task owns the ledger's write side:
//! callers queue [`WriteOp`]s, the task takes whatever is queued and commits
//! it as one transaction, so concurrent callers share one commit (one fsync,
//! one round-trip sequence) instead of each paying for their own.
//!
//! A busy ledger batches naturally: requests pile up while the previous
//! batch commits. An idle one commits a lone write at once, unless a commit
//! interval is set ([`LedgerOptions::sqlite_commit_interval`]): then a
//! commit starts no sooner than that interval after the previous one began,
//! and takes whatever queued in between. A failing batch is retried request
//! by request, so one bad op only fails its own caller.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::sqlite_busy;
use crate::{Backend, Result, Store, StoreError, WriteOp, WriteResult};

/// Tuning of the group commit.
#[derive(Clone)]
pub struct LedgerOptions {
    /// Most ops committed in one transaction. A single `write_many` call
    /// larger than this still commits as one transaction of its own. The
    /// default, 1024, leaves busy ledgers room: at 256, 40% of the batches
    /// under load were full, and fanout-10 delivered about 10% more per
    /// second with 1024 (`make bench`, PostgreSQL).
    pub max_batch: usize,
    /// The same on SQLite, larger: its write-ahead log takes whole pages,
    /// so a commit writes every page it changed, and each delivery and
    /// attempt changes a page of an index keyed by a random id (deliveries'
    /// ids, attempts' keys). A larger commit shares more of those pages
    /// among its rows. The default, 8192, lets one commit take every event
    /// a fan-out of ten holds unacked (512 events of 11 ops each).
    pub sqlite_max_batch: usize,
    /// On SQLite, the least time from the start of one commit to the start
    /// of the next. Each commit writes every page it changed to the log
    /// whole and fsyncs it, so at a moderate, steady rate (1,000 events a
    /// second) committing each event alone wrote about 100 KB an event;
    /// waiting a few milliseconds lets several events share those pages
    /// and that fsync. Mostly acks wait for it: first attempts to quick
    /// endpoints are made before their commit; a delivery that goes by the
    /// deliveries queue (a slow endpoint, inline first attempts off) is
    /// published after it, so waits up to this long more. Zero commits
    /// every write at once.
    pub sqlite_commit_interval: Duration,
    /// Told the number of ops of every committed batch (for metrics; this
    /// crate knows nothing of Prometheus).
    pub on_batch: Option<Arc<dyn Fn(usize) + Send + Sync>>,
}

/// [`LedgerOptions::sqlite_commit_interval`]'s default.
pub const DEFAULT_SQLITE_COMMIT_INTERVAL: Duration = Duration::from_millis(5);

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            sqlite_max_batch: 8192,
            sqlite_commit_interval: DEFAULT_SQLITE_COMMIT_INTERVAL,
            on_batch: None,
        }
    }
}

impl std::fmt::Debug for LedgerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerOptions")
            .field("max_batch", &self.max_batch)
            .field("sqlite_max_batch", &self.sqlite_max_batch)
            .field("sqlite_commit_interval", &self.sqlite_commit_interval)
            .field("on_batch", &self.on_batch.is_some())
            .finish()
    }
}

/// Handle to the ledger writer task. Cheap to clone; every clone feeds the
/// same task.
#[derive(Clone, Debug)]
pub struct Ledger {
    requests: mpsc::Sender<Message>,
    /// The task holds the sending half and drops it when it exits (normally
    /// or by panic), which is how `shutdown` knows the flush is complete.
    exited: watch::Receiver<()>,
}

#[derive(Debug)]
enum Message {
    Write(Request),
    Shutdown,
}

/// The ops of one caller: they always land in the same transaction.
#[derive(Debug)]
struct Request {
    ops: Vec<WriteOp>,
    reply: Reply,
}

type Reply = oneshot::Sender<Result<Vec<WriteResult>>>;

impl Ledger {
    /// Spawns the writer task on the current tokio runtime (panics outside
    /// one, like `tokio::spawn`).
    pub fn start(store: Store, options: LedgerOptions) -> Ledger {
        let (max_batch, interval) = match store.backend() {
            Backend::Sqlite => (options.sqlite_max_batch, options.sqlite_commit_interval),
            Backend::Postgres => (options.max_batch, Duration::ZERO),
        };
        let max_batch = max_batch.max(1);
        let on_batch = options.on_batch;
        // Room for a few batches: enough that callers rarely wait to enqueue,
        // bounded so a stalled database pushes back on them.
        let (requests, queue) = mpsc::channel(max_batch.saturating_mul(4));
        let (exit_guard, exited) = watch::channel(());
        tokio::spawn(async move {
            let _exit_guard = exit_guard;
            run(store, queue, max_batch, interval, on_batch).await;
        });
        Ledger { requests, exited }
    }

    /// Commits one op (batched with whatever else is queued) and returns its
    /// result once durable.
    pub async fn write(&self, op: WriteOp) -> Result<WriteResult> {
        let mut results = self.write_many(vec![op]).await?;
        // The writer answers every request with one result per op.
        results.pop().ok_or(StoreError::LedgerClosed)
    }

    /// Commits `ops` in one transaction (possibly shared with other callers)
    /// and returns their results in order.
    pub async fn write_many(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        debug_assert!(
            ops.is_sorted_by_key(WriteOp::kind_rank),
            "the ops of one write must be in kind order (see WriteOp)"
        );
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Message::Write(Request { ops, reply }))
            .await
            .map_err(|_| StoreError::LedgerClosed)?;
        // A dropped reply means the writer stopped (or panicked) before
        // answering; the caller must not assume the write happened.
        answer.await.map_err(|_| StoreError::LedgerClosed)?
    }

    /// Stops accepting writes, commits everything already queued, and waits
    /// for the writer task to exit. Later writes, from any clone, fail with
    /// [`StoreError::LedgerClosed`].
    pub async fn shutdown(self) {
        // Fails only when the writer is already gone, which is what we wait for.
        let _ = self.requests.send(Message::Shutdown).await;
        let mut exited = self.exited;
        while exited.changed().await.is_ok() {}
    }
}

async fn run(
    store: Store,
    mut queue: mpsc::Receiver<Message>,
    max_batch: usize,
    interval: Duration,
    on_batch: Option<Arc<dyn Fn(usize) + Send + Sync>>,
) {
    // A request that did not fit in the previous batch opens the next one.
    let mut carried: Option<Request> = None;
    // When the next commit may start at the soonest.
    let mut not_before = Instant::now();
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match queue.recv().await {
                Some(Message::Write(request)) => request,
                Some(Message::Shutdown) => {
                    // Refuses new sends; what is buffered is still received.
                    queue.close();
                    continue;
                }
                None => break,
            },
        };
        let mut batch = Batch::new(first, max_batch);
        loop {
            batch.take_queued(&mut queue, &mut carried);
            if batch.is_full() || carried.is_some() || Instant::now() >= not_before {
                break;
            }
            // Until the interval is over, wait for more to share the commit.
            tokio::select! {
                _ = tokio::time::sleep_until(not_before) => {}
                message = queue.recv() => match message {
                    Some(Message::Write(request)) => batch.add(request, &mut carried),
                    // Stopping: commit what is here without waiting.
                    Some(Message::Shutdown) | None => {
                        queue.close();
                        not_before = Instant::now();
                    }
                },
            }
        }
        if let Some(observe) = &on_batch {
            observe(batch.ops);
        }
        not_before = Instant::now() + interval;
        commit(&store, batch.requests).await;
    }
    tracing::debug!("ledger writer stopped");
}

/// The requests of one commit, up to `max_batch` ops.
struct Batch {
    requests: Vec<Request>,
    ops: usize,
    max_batch: usize,
}

impl Batch {
    fn new(first: Request, max_batch: usize) -> Self {
        let ops = first.ops.len();
        Self {
            requests: vec![first],
            ops,
            max_batch,
        }
    }

    fn is_full(&self) -> bool {
        self.ops >= self.max_batch
    }

    /// Adds `request`, or carries it to the next batch when it would not fit.
    fn add(&mut self, request: Request, carried: &mut Option<Request>) {
        if self.ops + request.ops.len() > self.max_batch {
            *carried = Some(request);
            return;
        }
        self.ops += request.ops.len();
        self.requests.push(request);
    }

    /// Adds what is queued now, until full or a request does not fit.
    fn take_queued(&mut self, queue: &mut mpsc::Receiver<Message>, carried: &mut Option<Request>) {
        while !self.is_full() && carried.is_none() {
            match queue.try_recv() {
                Ok(Message::Write(request)) => self.add(request, carried),
                Ok(Message::Shutdown) => queue.close(),
                Err(_) => break,
            }
        }
    }
}

async fn commit(store: &Store, batch: Vec<Request>) {
    let requests = batch.len();
    let mut ops = Vec::with_capacity(batch.iter().map(|r| r.ops.len()).sum());
    let mut replies: Vec<(Range<usize>, Reply)> = Vec::with_capacity(requests);
    for request in batch {
        let start = ops.len();
        ops.extend(request.ops);
        replies.push((start..ops.len(), request.reply));
    }

    let err = match store.apply(&ops).await {
        Ok(results) if results.len() == ops.len() => {
            tracing::debug!(ops = ops.len(), requests, "ledger batch committed");
            let mut results = results.into_iter();
            for (range, reply) in replies {
                // A caller that gave up waiting still had its write committed.
                let _ = reply.send(Ok(results.by_ref().take(range.len()).collect()));
            }
            return;
        }
        Ok(results) => StoreError::Corrupt(format!(
            "ledger batch of {} ops returned {} results",
            ops.len(),
            results.len()
        )),
        Err(err) => err,
    };

    if requests == 1 {
        if let Some((_, reply)) = replies.pop() {
            let _ = reply.send(Err(err));
        }
        return;
    }
    if !caused_by_an_op(&err) {
        // Retrying one by one would only repeat the same wait per request.
        tracing::warn!(error = %chain(&err), ops = ops.len(), requests, "ledger batch failed");
        let shared = Arc::new(err);
        for (_, reply) in replies {
            let _ = reply.send(Err(StoreError::Batch(Arc::clone(&shared))));
        }
        return;
    }

    // The batch rolled back as a whole, so each request can be retried alone
    // and the one that broke it fails on its own. Every op is idempotent,
    // which also covers a commit that failed after all.
    tracing::debug!(
        error = %chain(&err),
        ops = ops.len(),
        requests,
        "ledger batch failed; retrying requests alone"
    );
    for (range, reply) in replies {
        let result = store.apply(&ops[range]).await;
        let _ = reply.send(result);
    }
}

/// Whether the database refused something in the batch (a constraint, a
/// value), as opposed to being unreachable, overloaded or locked, which
/// would fail every request alike.
fn caused_by_an_op(err: &StoreError) -> bool {
    match err {
        StoreError::Corrupt(_) | StoreError::UnknownDelivery(_) => true,
        StoreError::Database(sqlx::Error::Database(db)) => !sqlite_busy(db.as_ref()),
        _ => false,
    }
}

/// `outer: inner: innermost`, since `StoreError`'s own message leaves the
/// database's words to its source.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
