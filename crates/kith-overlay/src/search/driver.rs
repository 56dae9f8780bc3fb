//! The tokio driver: runs one [`SearchCore`] over any [`Transport`], mounted under
//! [`PROTOCOL`] (`kith/search/1`).
//!
//! # Neighbours
//!
//! Search has no membership of its own: queries travel over the neighbours the
//! application gives it with [`SearchHandle::set_neighbors`],
//! [`SearchHandle::add_neighbor`] and [`SearchHandle::remove_neighbor`]. Feed it from
//! whatever membership the application has, for example the active view of a gossip
//! topic ([`crate::gossip::Event::NeighborUp`] / `NeighborDown`), or a sample of its DHT
//! routing table. A neighbour that cannot be reached (dial or stream fails, or a send
//! takes longer than [`SEND_TIMEOUT`]) is dropped from the neighbour set and reported
//! in tracing (`info`); give it back with [`SearchHandle::add_neighbor`] once the
//! membership says it is up again.
//!
//! # Streams
//!
//! Every message travels on **a unidirectional stream of its own**: the sender dials (or
//! reuses the transport's connection), opens a stream, writes one length-delimited frame
//! ([`kith_core::frame`]) and finishes it. Search traffic is sparse and unordered, and
//! hits go to queriers that are not neighbours, so no long-lived stream per peer is
//! kept. The receiver checks the frame's announced length against
//! [`MAX_MESSAGE_LEN`] before allocating, reads it within [`READ_TIMEOUT`], decodes and
//! validates it ([`Message::decode`]) and stops the stream with
//! [`codes::PROTOCOL_ERROR`] on anything malformed (counted in
//! [`SearchStats::rejected`]). Queries from each neighbour are rate-limited by the core.
//!
//! # Bounds
//!
//! * commands from handles: a queue of [`COMMAND_QUEUE`] (callers wait when it is full);
//! * inbound messages: a queue of [`INBOUND_QUEUE`]; a message arriving while it is full
//!   is dropped (search is best effort) and counted;
//! * outbound messages: at most [`MAX_CONCURRENT_SENDS`] streams in flight and an outbox
//!   of [`OUTBOX`] messages behind them; a message that finds the outbox full is dropped
//!   and counted;
//! * hits per query: [`Config::max_results`] (clamped to [`MAX_RESULTS`]), buffered for
//!   the [`QueryResults`] reader, which can therefore never slow the driver.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kith_core::{mem::MemNetwork, SecretKey};
//! use kith_overlay::search::{Config, Item, Mode, Search};
//!
//! let net = MemNetwork::new();
//! let (ka, kb) = (SecretKey::from_bytes(&[1; 32]), SecretKey::from_bytes(&[2; 32]));
//! let mut config = Config::default();
//! config.query_timeout = Duration::from_millis(500);
//! let a = Search::spawn(Arc::new(net.node(ka.node_id())), config.clone(), Some(1))?;
//! let b = Search::spawn(Arc::new(net.node(kb.node_id())), config, Some(2))?;
//! a.add_neighbor(b.local_addr()).await?;
//! b.add_neighbor(a.local_addr()).await?;
//! b.share(Item::new("Holiday Photos 2026.zip", 1 << 20, [7; 32]).with_payload("ticket")).await?;
//!
//! let hits = a.query_all("holiday photos", Mode::Flood).await?;
//! assert_eq!(hits.len(), 1);
//! assert_eq!(hits[0].provider.node_id, b.local_id());
//! assert_eq!(&hits[0].item.payload[..], b"ticket");
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith_core::frame::{encode_frame, read_frame};
use kith_core::net::{BoxFuture, BoxRecvStream, Conn, ProtocolHandler, Transport, codes};
use kith_core::{NodeAddr, NodeId};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::PROTOCOL;
use super::core::{Config, Event, QueryError, QueryId, SearchCore, Stats};
use super::message::{Item, MAX_MESSAGE_LEN, Message, MessageError, Mode};

/// Capacity of the queue of commands from [`SearchHandle`]s to the driver.
pub const COMMAND_QUEUE: usize = 64;
/// Capacity of the queue from stream readers to the driver.
pub const INBOUND_QUEUE: usize = 1024;
/// Messages waiting for a free send slot; more are dropped.
pub const OUTBOX: usize = 1024;
/// Streams being sent at once.
pub const MAX_CONCURRENT_SENDS: usize = 64;
/// Time to dial, open a stream and write one message; a slower send fails.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a peer gets to deliver the one frame of a stream.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest [`Config::max_results`] the driver accepts (larger values are clamped).
pub const MAX_RESULTS: usize = 10_000;

/// Error from the search driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// `kith/search/1` is already mounted on this transport.
    #[error("protocol kith/search/1 is already mounted")]
    AlreadyMounted,
    /// The driver task has stopped.
    #[error("the search driver has stopped")]
    Stopped,
    /// The item would be refused by every searcher (empty or overlong name, payload over
    /// [`super::MAX_PAYLOAD_LEN`]); it was not shared.
    #[error("invalid item: {0}")]
    InvalidItem(#[source] MessageError),
    /// The query could not start (bad keywords, no neighbours, too many in flight).
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// One search result: an item and how to reach the node that shares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The item (name, size, content hash, payload as the provider announced them).
    pub item: Item,
    /// The node that has it, with the addresses it reported for itself.
    pub provider: NodeAddr,
}

/// Counters of a running driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchStats {
    /// The core's counters.
    pub core: Stats,
    /// Inbound streams refused: oversize or malformed frame, invalid message, timeout.
    pub rejected: u64,
    /// Valid inbound messages dropped because the inbound queue was full.
    pub inbound_dropped: u64,
    /// Outbound messages dropped because the outbox was full (or did not encode).
    pub outbound_dropped: u64,
    /// Outbound messages whose send failed.
    pub send_failures: u64,
}

enum Command {
    /// A change to the neighbours or the shared items; the sender is told once it is
    /// applied.
    Apply(Change, oneshot::Sender<()>),
    Neighbors(oneshot::Sender<Vec<NodeAddr>>),
    Query {
        keywords: Vec<String>,
        mode: Mode,
        results: mpsc::Sender<Update>,
        reply: oneshot::Sender<Result<QueryId, QueryError>>,
    },
    Stats(oneshot::Sender<SearchStats>),
}

enum Change {
    SetNeighbors(Vec<NodeAddr>),
    AddNeighbor(NodeAddr),
    RemoveNeighbor(NodeId),
    Share(Item),
    Unshare([u8; 32]),
}

enum Update {
    Hit(Hit),
    Done,
}

/// Starts search drivers.
#[derive(Debug)]
pub struct Search;

impl Search {
    /// Mounts `kith/search/1` on `transport` and spawns the driver task on the current
    /// tokio runtime. `seed` seeds the core's random choices (query ids, walkers' next
    /// hops); `None` draws it from entropy. The task stops when every [`SearchHandle`]
    /// is dropped.
    pub fn spawn(
        transport: Arc<dyn Transport>,
        config: Config,
        seed: Option<u64>,
    ) -> Result<SearchHandle, SearchError> {
        let mut config = config;
        config.max_results = config.max_results.clamp(1, MAX_RESULTS);
        let counters = Arc::new(Counters::default());
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        transport
            .mount(
                PROTOCOL,
                Arc::new(Handler {
                    tx: in_tx,
                    counters: counters.clone(),
                }),
            )
            .map_err(|_| SearchError::AlreadyMounted)?;
        let local = transport.local_addr();
        let seed = seed.unwrap_or_else(rand::random);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (done_tx, done_rx) = mpsc::channel(MAX_CONCURRENT_SENDS);
        let handle = SearchHandle {
            cmd: cmd_tx,
            local: local.clone(),
            max_results: config.max_results,
        };
        let driver = Driver {
            core: SearchCore::new(local.clone(), config, seed),
            transport,
            queries: HashMap::new(),
            outbox: VecDeque::new(),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_SENDS)),
            done_tx,
            counters,
            outbound_dropped: 0,
            send_failures: 0,
        };
        let span = tracing::debug_span!("search", me = %local.node_id.fmt_short());
        tokio::spawn(tracing::Instrument::instrument(
            driver.run(cmd_rx, in_rx, done_rx),
            span,
        ));
        Ok(handle)
    }
}

/// A running search node. Cheap to clone; the driver stops when every clone is dropped.
#[derive(Clone)]
pub struct SearchHandle {
    cmd: mpsc::Sender<Command>,
    local: NodeAddr,
    max_results: usize,
}

impl fmt::Debug for SearchHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchHandle")
            .field("local", &self.local.node_id)
            .finish_non_exhaustive()
    }
}

impl SearchHandle {
    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.local.node_id
    }

    /// How other nodes reach this one (as of the spawn).
    pub fn local_addr(&self) -> NodeAddr {
        self.local.clone()
    }

    async fn send(&self, cmd: Command) -> Result<(), SearchError> {
        self.cmd.send(cmd).await.map_err(|_| SearchError::Stopped)
    }

    /// Hands `change` to the driver and waits until it is applied.
    async fn apply(&self, change: Change) -> Result<(), SearchError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Apply(change, done)).await?;
        rx.await.map_err(|_| SearchError::Stopped)
    }

    /// Replaces the neighbour set, for example with a gossip topic's active view.
    /// Returns once the driver uses the new set: a message handled afterwards is
    /// forwarded to it.
    pub async fn set_neighbors(&self, neighbors: Vec<NodeAddr>) -> Result<(), SearchError> {
        self.apply(Change::SetNeighbors(neighbors)).await
    }

    /// Adds a neighbour (nothing happens if it is one already). Returns once it is
    /// applied.
    pub async fn add_neighbor(&self, neighbor: NodeAddr) -> Result<(), SearchError> {
        self.apply(Change::AddNeighbor(neighbor)).await
    }

    /// Removes a neighbour. Returns once it is applied.
    pub async fn remove_neighbor(&self, id: NodeId) -> Result<(), SearchError> {
        self.apply(Change::RemoveNeighbor(id)).await
    }

    /// The current neighbours (without those dropped as unreachable).
    pub async fn neighbors(&self) -> Result<Vec<NodeAddr>, SearchError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Neighbors(reply)).await?;
        rx.await.map_err(|_| SearchError::Stopped)
    }

    /// Announces an item to searchers, replacing any shared item with the same content
    /// hash. Refuses an item no searcher would accept ([`SearchError::InvalidItem`]).
    /// Returns once the item is shared: a query that reaches this node afterwards finds
    /// it.
    pub async fn share(&self, item: Item) -> Result<(), SearchError> {
        item.check().map_err(SearchError::InvalidItem)?;
        self.apply(Change::Share(item)).await
    }

    /// Stops announcing the items with this content hash. Returns once a query that
    /// reaches this node no longer finds them.
    pub async fn unshare(&self, hash: [u8; 32]) -> Result<(), SearchError> {
        self.apply(Change::Unshare(hash)).await
    }

    /// Counters.
    pub async fn stats(&self) -> Result<SearchStats, SearchError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats(reply)).await?;
        rx.await.map_err(|_| SearchError::Stopped)
    }

    /// Starts a query for items whose names contain every whitespace-separated word of
    /// `words` (case ignored; a 64-character hex word matches a content hash). Hits
    /// arrive on the returned [`QueryResults`] until the query's time
    /// ([`Config::query_timeout`]) is up or [`Config::max_results`] items arrived.
    pub async fn query(&self, words: &str, mode: Mode) -> Result<QueryResults, SearchError> {
        let keywords: Vec<String> = words.split_whitespace().map(str::to_owned).collect();
        // Room for every hit the core may report and the end marker: never full.
        let (results, rx) = mpsc::channel(self.max_results + 1);
        let (reply, reply_rx) = oneshot::channel();
        self.send(Command::Query {
            keywords,
            mode,
            results,
            reply,
        })
        .await?;
        let id = reply_rx.await.map_err(|_| SearchError::Stopped)??;
        Ok(QueryResults {
            id,
            rx,
            done: false,
        })
    }

    /// Runs a query and collects its hits until it is done.
    pub async fn query_all(&self, words: &str, mode: Mode) -> Result<Vec<Hit>, SearchError> {
        let mut results = self.query(words, mode).await?;
        let mut hits = Vec::new();
        while let Some(h) = results.next().await {
            hits.push(h);
        }
        if results.is_done() {
            Ok(hits)
        } else {
            Err(SearchError::Stopped)
        }
    }
}

/// The hits of one query, as they arrive; ends when the query is done. Also a
/// [`futures_util::Stream`] of [`Hit`]s.
pub struct QueryResults {
    id: QueryId,
    rx: mpsc::Receiver<Update>,
    done: bool,
}

impl fmt::Debug for QueryResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryResults")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl QueryResults {
    /// The query's id.
    pub fn id(&self) -> QueryId {
        self.id
    }

    /// The next hit; `None` once the query is done (or the driver stopped: see
    /// [`QueryResults::is_done`]).
    pub async fn next(&mut self) -> Option<Hit> {
        std::future::poll_fn(|cx| self.poll_hit(cx)).await
    }

    /// Whether the query ended normally (its time was up); false while it runs, and
    /// after an end caused by the driver stopping.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn poll_hit(&mut self, cx: &mut Context<'_>) -> Poll<Option<Hit>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Update::Hit(h))) => Poll::Ready(Some(h)),
            Poll::Ready(Some(Update::Done)) => {
                self.done = true;
                self.rx.close();
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_util::Stream for QueryResults {
    type Item = Hit;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Hit>> {
        self.get_mut().poll_hit(cx)
    }
}

#[derive(Default)]
struct Counters {
    rejected: AtomicU64,
    inbound_dropped: AtomicU64,
}

/// Reads one message per stream and hands it, validated, to the driver.
struct Handler {
    tx: mpsc::Sender<(NodeId, Message)>,
    counters: Arc<Counters>,
}

impl ProtocolHandler for Handler {
    fn accept_uni(&self, conn: Conn, mut recv: BoxRecvStream) -> BoxFuture<'static, ()> {
        let tx = self.tx.clone();
        let counters = self.counters.clone();
        Box::pin(async move {
            let from = conn.remote_id();
            let reason = match tokio::time::timeout(
                READ_TIMEOUT,
                read_frame(&mut recv, MAX_MESSAGE_LEN),
            )
            .await
            {
                Ok(Ok(Some(body))) => match Message::decode(&body) {
                    Ok(msg) => {
                        if tx.try_send((from, msg)).is_err() {
                            counters.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(peer = %from.fmt_short(), "search inbound queue full; message dropped");
                        }
                        // One message per stream: read on to its end (so the sender's
                        // finish never races with a stop), refusing a second frame.
                        match tokio::time::timeout(READ_TIMEOUT, read_frame(&mut recv, 0)).await {
                            Ok(Ok(None)) => return,
                            _ => "more than one search message on a stream".to_owned(),
                        }
                    }
                    Err(e) => format!("bad search message: {e}"),
                },
                Ok(Ok(None)) => return,
                Ok(Err(e)) => format!("bad search frame: {e}"),
                Err(_) => "search stream timed out".to_owned(),
            };
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %from.fmt_short(), "{reason}");
            recv.stop(codes::PROTOCOL_ERROR);
        })
    }
}

struct Driver {
    core: SearchCore,
    transport: Arc<dyn Transport>,
    queries: HashMap<QueryId, mpsc::Sender<Update>>,
    outbox: VecDeque<(NodeAddr, Bytes)>,
    slots: Arc<Semaphore>,
    done_tx: mpsc::Sender<(NodeId, Result<(), String>)>,
    counters: Arc<Counters>,
    outbound_dropped: u64,
    send_failures: u64,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<(NodeId, Message)>,
        mut sent: mpsc::Receiver<(NodeId, Result<(), String>)>,
    ) {
        loop {
            let deadline = self.core.poll_timeout();
            let waiting = !self.outbox.is_empty();
            let slots = self.slots.clone();
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    // Every handle is gone.
                    None => return,
                },
                Some((from, msg)) = inbound.recv() => {
                    tracing::trace!(from = %from.fmt_short(), ?msg, "search in");
                    if matches!(msg, Message::Query(_)) {
                        // Our hits carry our address: keep it current.
                        self.core.set_local_addr(self.transport.local_addr());
                    }
                    self.core.handle_message(Instant::now(), from, msg);
                }
                Some((to, result)) = sent.recv() => self.sent(to, result),
                Ok(permit) = slots.acquire_owned(), if waiting => self.dispatch(Some(permit)),
                _ = sleep_until(deadline) => self.core.handle_timeout(Instant::now()),
            }
            self.pump();
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Apply(change, done) => {
                match change {
                    Change::SetNeighbors(n) => self.core.set_neighbors(n),
                    Change::AddNeighbor(n) => self.core.neighbor_up(n),
                    Change::RemoveNeighbor(id) => self.core.neighbor_down(&id),
                    Change::Share(item) => {
                        self.core.unshare(&item.hash);
                        self.core.share(item);
                    }
                    Change::Unshare(hash) => self.core.unshare(&hash),
                }
                // The caller may have stopped waiting: fine.
                let _ = done.send(());
            }
            Command::Neighbors(reply) => {
                let _ = reply.send(self.core.neighbors().to_vec());
            }
            Command::Query {
                keywords,
                mode,
                results,
                reply,
            } => {
                self.core.set_local_addr(self.transport.local_addr());
                let words: Vec<&str> = keywords.iter().map(String::as_str).collect();
                let r = self.core.query(Instant::now(), &words, mode);
                if let Ok(id) = r {
                    self.queries.insert(id, results);
                }
                let _ = reply.send(r);
            }
            Command::Stats(reply) => {
                let _ = reply.send(SearchStats {
                    core: self.core.stats(),
                    rejected: self.counters.rejected.load(Ordering::Relaxed),
                    inbound_dropped: self.counters.inbound_dropped.load(Ordering::Relaxed),
                    outbound_dropped: self.outbound_dropped,
                    send_failures: self.send_failures,
                });
            }
        }
    }

    /// A send finished.
    fn sent(&mut self, to: NodeId, result: Result<(), String>) {
        let Err(e) = result else { return };
        self.send_failures += 1;
        if self.core.neighbors().iter().any(|n| n.node_id == to) {
            tracing::info!(peer = %to.fmt_short(), "search neighbour unreachable, dropped: {e}");
            self.core.neighbor_down(&to);
        } else {
            tracing::debug!(peer = %to.fmt_short(), "search message not delivered: {e}");
        }
    }

    /// Moves the core's output to the network and its events to the queries' readers.
    fn pump(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            tracing::trace!(to = %t.to.node_id.fmt_short(), msg = ?t.msg, "search out");
            let frame = match encode_frame(&t.msg.to_wire(), MAX_MESSAGE_LEN) {
                Ok(f) => f,
                Err(e) => {
                    self.outbound_dropped += 1;
                    tracing::warn!("search message not sent: {e}");
                    continue;
                }
            };
            if self.outbox.len() >= OUTBOX {
                self.outbound_dropped += 1;
                tracing::debug!(to = %t.to.node_id.fmt_short(), "search outbox full; message dropped");
                continue;
            }
            self.outbox.push_back((t.to, frame));
        }
        self.dispatch(None);
        while let Some(e) = self.core.poll_event() {
            match e {
                Event::Hits {
                    query,
                    provider,
                    items,
                    ..
                } => {
                    if let Some(tx) = self.queries.get(&query) {
                        for item in items {
                            // Never full (sized for max_results); closed if the reader
                            // is gone, which is fine.
                            let _ = tx.try_send(Update::Hit(Hit {
                                item,
                                provider: provider.clone(),
                            }));
                        }
                    }
                }
                Event::Done { query, .. } => {
                    if let Some(tx) = self.queries.remove(&query) {
                        let _ = tx.try_send(Update::Done);
                    }
                }
            }
        }
    }

    /// Starts sends from the outbox while send slots are free.
    fn dispatch(&mut self, mut permit: Option<OwnedSemaphorePermit>) {
        while !self.outbox.is_empty() {
            let Some(p) = permit
                .take()
                .or_else(|| self.slots.clone().try_acquire_owned().ok())
            else {
                return;
            };
            let Some((to, frame)) = self.outbox.pop_front() else {
                return;
            };
            let transport = self.transport.clone();
            let done = self.done_tx.clone();
            tokio::spawn(async move {
                let id = to.node_id;
                let r = match tokio::time::timeout(SEND_TIMEOUT, send_one(&*transport, to, frame))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err("timed out".to_owned()),
                };
                // Holds the slot until the driver has room for the result: bounded.
                let _ = done.send((id, r)).await;
                drop(p);
            });
        }
    }
}

async fn send_one(transport: &dyn Transport, to: NodeAddr, frame: Bytes) -> Result<(), String> {
    let conn = transport.connect(to).await.map_err(|e| e.to_string())?;
    let mut send = conn.open_uni(&PROTOCOL).await.map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
