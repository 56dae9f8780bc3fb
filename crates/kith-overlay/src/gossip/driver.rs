//! The tokio driver: runs one [`TopicCore`] per joined topic over any [`Transport`],
//! mounted under [`PROTOCOL`] (`kith/gossip/1`).
//!
//! # Streams
//!
//! Each node keeps **one long-lived unidirectional stream per peer it sends to**, opened
//! on first use and carrying the messages of every topic as length-delimited frames
//! ([`kith_core::frame`], capped at [`Config::max_message_size`] plus
//! [`ENVELOPE_OVERHEAD`]). Messages to a peer therefore arrive in order. A writer task per
//! peer owns the stream; it closes it after [`WRITER_IDLE`] without traffic. A peer's
//! stream is read by the handler the transport runs; every frame is decoded and
//! validated ([`Message::decode`]) before it reaches the core, and a malformed frame
//! stops the stream.
//!
//! # Queues and backpressure
//!
//! Every queue is bounded:
//!
//! * **commands** (`command_queue`): [`TopicSender::broadcast`] waits while it is full,
//!   [`TopicSender::try_broadcast`] fails with [`SendError::QueueFull`];
//! * **per-peer send queues** (`peer_queue` frames): the driver takes a new command only
//!   while every peer queue is at most half full, so a broadcaster faster than its
//!   slowest neighbour is slowed down rather than losing messages; forwarded traffic may
//!   use the other half, and a neighbour whose queue overflows counts as failed (it
//!   leaves the active view and Plumtree repairs the tree around it);
//! * **events** (`event_queue`): when the application does not read its events, the
//!   driver waits, which stops it reading from peers, which (through QUIC flow control)
//!   slows the senders. So read events in a task of their own.
//!
//! A payload over [`Config::max_message_size`] is refused with
//! [`SendError::TooLarge`] before it is queued.
//!
//! # Example
//!
//! Two nodes on the in-memory transport join a topic and chat.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kith_core::{mem::MemNetwork, SecretKey, Transport};
//! use kith_overlay::gossip::{driver::Gossip, Config, Event, TopicId};
//!
//! let net = MemNetwork::new();
//! let (ka, kb) = (SecretKey::from_bytes(&[1; 32]), SecretKey::from_bytes(&[2; 32]));
//! let a = Gossip::spawn(Arc::new(net.node(ka.node_id())), ka, Config::default())?;
//! let b = Gossip::spawn(Arc::new(net.node(kb.node_id())), kb, Config::default())?;
//!
//! let topic = TopicId::from_name("chat");
//! let mut ta = a.join(topic, vec![]).await?;
//! let mut tb = b.join(topic, vec![a.local_addr()]).await?;
//! // Wait until b is a's neighbour, then say hello.
//! while !matches!(ta.next_event().await, Some(Event::NeighborUp(_))) {}
//! ta.broadcast("hello").await?;
//! loop {
//!     if let Some(Event::Received { author, payload, .. }) = tb.next_event().await {
//!         assert_eq!((author, &payload[..]), (a.local_id(), &b"hello"[..]));
//!         break;
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith_core::frame::{encode_frame, read_frame};
use kith_core::net::{BoxFuture, BoxRecvStream, Conn, ProtocolHandler, Transport, codes};
use kith_core::{NodeAddr, NodeId, SecretKey};
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc, oneshot};

use super::core::{BroadcastError, Event, TopicCore};
use super::message::{Message, MessageId, Scope, TopicId};
use super::{Config, PROTOCOL};

/// Bytes a frame may carry beyond [`Config::max_message_size`] (topic, ids, signature,
/// field tags).
pub const ENVELOPE_OVERHEAD: usize = 1024;
/// A per-peer writer closes its stream after this long without anything to send.
pub const WRITER_IDLE: Duration = Duration::from_secs(60);
/// Capacity of the queue from stream readers to the driver task.
const INBOUND_QUEUE: usize = 1024;

/// Error starting the driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The secret key is not the transport's identity.
    #[error("secret key does not match the transport's node id")]
    KeyMismatch,
    /// `kith/gossip/1` is already mounted on this transport.
    #[error("protocol kith/gossip/1 is already mounted")]
    AlreadyMounted,
}

/// Error joining a topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// This node already has a live [`Topic`] handle for the topic.
    #[error("topic already joined")]
    AlreadyJoined,
    /// The driver task has stopped.
    #[error("the gossip driver has stopped")]
    Stopped,
}

/// Error sending through a [`Topic`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The payload is larger than [`Config::max_message_size`]; nothing was sent.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// The command queue is full (only from the `try_` methods); nothing was sent.
    #[error("the gossip send queue is full")]
    QueueFull,
    /// The driver task has stopped, or the topic was left.
    #[error("the gossip driver has stopped")]
    Stopped,
}

impl From<BroadcastError> for SendError {
    fn from(e: BroadcastError) -> Self {
        match e {
            BroadcastError::TooLarge { size, max } => SendError::TooLarge { size, max },
        }
    }
}

enum Command {
    Join {
        topic: TopicId,
        peers: Vec<NodeAddr>,
        events: mpsc::Sender<Event>,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    AddPeers {
        topic: TopicId,
        peers: Vec<NodeAddr>,
    },
    Broadcast {
        topic: TopicId,
        payload: Bytes,
        scope: Scope,
        reply: Option<oneshot::Sender<Result<MessageId, SendError>>>,
    },
    Neighbors {
        topic: TopicId,
        reply: oneshot::Sender<Vec<NodeId>>,
    },
    Leave {
        topic: TopicId,
    },
}

/// A running gossip node: one per transport. Cheap to clone.
#[derive(Clone)]
pub struct Gossip {
    cmd: mpsc::Sender<Command>,
    local: NodeAddr,
    max_message_size: usize,
    event_queue: usize,
}

impl fmt::Debug for Gossip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gossip")
            .field("local", &self.local.node_id)
            .finish_non_exhaustive()
    }
}

impl Gossip {
    /// Mounts `kith/gossip/1` on `transport` and spawns the driver task on the current
    /// tokio runtime. `key` signs this node's broadcasts and must be the transport's
    /// identity. The task stops when every [`Gossip`] and [`Topic`] handle is dropped.
    pub fn spawn(
        transport: Arc<dyn Transport>,
        key: SecretKey,
        config: Config,
    ) -> Result<Self, SpawnError> {
        if key.node_id() != transport.local_id() {
            return Err(SpawnError::KeyMismatch);
        }
        let config = config.sanitized();
        let seed = config.seed;
        let max_frame = config.max_message_size + ENVELOPE_OVERHEAD;
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        transport
            .mount(
                PROTOCOL,
                Arc::new(Handler {
                    tx: in_tx,
                    max_frame,
                }),
            )
            .map_err(|_| SpawnError::AlreadyMounted)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_queue);
        let (fail_tx, fail_rx) = mpsc::unbounded_channel();
        let local = transport.local_addr();
        let span_id = local.node_id;
        let handle = Self {
            cmd: cmd_tx,
            local: local.clone(),
            max_message_size: config.max_message_size,
            event_queue: config.event_queue,
        };
        let driver = Driver {
            transport,
            key,
            local,
            max_frame,
            config,
            topics: HashMap::new(),
            writers: HashMap::new(),
            fail_tx,
            room: Arc::new(Notify::new()),
            rng: match seed {
                Some(s) => rand::rngs::StdRng::seed_from_u64(s),
                None => rand::rngs::StdRng::from_entropy(),
            },
        };
        let span = tracing::debug_span!("gossip", me = %span_id.fmt_short());
        tokio::spawn(tracing::Instrument::instrument(
            driver.run(cmd_rx, in_rx, fail_rx),
            span,
        ));
        Ok(handle)
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.local.node_id
    }

    /// How other nodes reach this one (give it to them as a bootstrap peer).
    pub fn local_addr(&self) -> NodeAddr {
        self.local.clone()
    }

    /// Joins `topic` through `bootstrap` peers (none for the first member; more can be
    /// added later with [`Topic::add_peers`], for example providers of
    /// [`TopicId::dht_key`] found in the DHT).
    pub async fn join(&self, topic: TopicId, bootstrap: Vec<NodeAddr>) -> Result<Topic, JoinError> {
        let (events_tx, events_rx) = mpsc::channel(self.event_queue);
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Join {
                topic,
                peers: bootstrap,
                events: events_tx,
                reply,
            })
            .await
            .map_err(|_| JoinError::Stopped)?;
        rx.await.map_err(|_| JoinError::Stopped)??;
        Ok(Topic {
            sender: TopicSender {
                topic,
                cmd: self.cmd.clone(),
                max_message_size: self.max_message_size,
            },
            events: TopicEvents {
                topic,
                cmd: self.cmd.clone(),
                events: events_rx,
            },
        })
    }
}

/// A joined topic: broadcast to it, and read its [`Event`]s. Dropping it leaves the
/// topic. [`Topic::split`] gives a cloneable sending half and the event half.
#[derive(Debug)]
pub struct Topic {
    sender: TopicSender,
    events: TopicEvents,
}

impl Topic {
    /// The topic id.
    pub fn id(&self) -> TopicId {
        self.sender.topic
    }

    /// Splits into the sending half (cloneable) and the event half. Dropping the event
    /// half leaves the topic.
    pub fn split(self) -> (TopicSender, TopicEvents) {
        (self.sender, self.events)
    }

    /// See [`TopicSender::broadcast`].
    pub async fn broadcast(&self, payload: impl Into<Bytes>) -> Result<MessageId, SendError> {
        self.sender.broadcast(payload).await
    }

    /// See [`TopicSender::broadcast_neighbors`].
    pub async fn broadcast_neighbors(
        &self,
        payload: impl Into<Bytes>,
    ) -> Result<MessageId, SendError> {
        self.sender.broadcast_neighbors(payload).await
    }

    /// See [`TopicSender::try_broadcast`].
    pub fn try_broadcast(&self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        self.sender.try_broadcast(payload)
    }

    /// See [`TopicSender::add_peers`].
    pub async fn add_peers(&self, peers: Vec<NodeAddr>) -> Result<(), SendError> {
        self.sender.add_peers(peers).await
    }

    /// See [`TopicSender::neighbors`].
    pub async fn neighbors(&self) -> Result<Vec<NodeId>, SendError> {
        self.sender.neighbors().await
    }

    /// See [`TopicEvents::next_event`].
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.next_event().await
    }

    /// Leaves the topic, telling the neighbours.
    pub async fn leave(self) {
        let _ = self
            .sender
            .cmd
            .send(Command::Leave {
                topic: self.sender.topic,
            })
            .await;
    }
}

/// The sending half of a [`Topic`]. Cheap to clone.
#[derive(Clone)]
pub struct TopicSender {
    topic: TopicId,
    cmd: mpsc::Sender<Command>,
    max_message_size: usize,
}

impl fmt::Debug for TopicSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicSender")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TopicSender {
    fn check(&self, payload: &Bytes) -> Result<(), SendError> {
        if payload.len() > self.max_message_size {
            return Err(SendError::TooLarge {
                size: payload.len(),
                max: self.max_message_size,
            });
        }
        Ok(())
    }

    async fn send(&self, payload: Bytes, scope: Scope) -> Result<MessageId, SendError> {
        self.check(&payload)?;
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Broadcast {
                topic: self.topic,
                payload,
                scope,
                reply: Some(reply),
            })
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)?
    }

    /// Broadcasts `payload` to every member, signed with this node's key. Waits while the
    /// send queues are full (backpressure); refuses a payload over the size limit.
    pub async fn broadcast(&self, payload: impl Into<Bytes>) -> Result<MessageId, SendError> {
        self.send(payload.into(), Scope::Swarm).await
    }

    /// Sends `payload` to the current neighbours only; they do not forward it.
    pub async fn broadcast_neighbors(
        &self,
        payload: impl Into<Bytes>,
    ) -> Result<MessageId, SendError> {
        self.send(payload.into(), Scope::Neighbors).await
    }

    /// Like [`TopicSender::broadcast`], but fails with [`SendError::QueueFull`] instead
    /// of waiting.
    pub fn try_broadcast(&self, payload: impl Into<Bytes>) -> Result<(), SendError> {
        let payload = payload.into();
        self.check(&payload)?;
        self.cmd
            .try_send(Command::Broadcast {
                topic: self.topic,
                payload,
                scope: Scope::Swarm,
                reply: None,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => SendError::Stopped,
            })
    }

    /// Adds bootstrap peers (for example found later in the DHT).
    pub async fn add_peers(&self, peers: Vec<NodeAddr>) -> Result<(), SendError> {
        self.cmd
            .send(Command::AddPeers {
                topic: self.topic,
                peers,
            })
            .await
            .map_err(|_| SendError::Stopped)
    }

    /// The current neighbours (active view).
    pub async fn neighbors(&self) -> Result<Vec<NodeId>, SendError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Neighbors {
                topic: self.topic,
                reply,
            })
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)
    }
}

/// The event half of a [`Topic`]. Dropping it leaves the topic.
pub struct TopicEvents {
    topic: TopicId,
    cmd: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
}

impl fmt::Debug for TopicEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicEvents")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TopicEvents {
    /// The next event: a message (with its verified author) or a neighbour change.
    /// `None` once the driver has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for TopicEvents {
    fn drop(&mut self) {
        // Best effort; if the queue is full, the driver notices the closed event
        // channel at the next event instead.
        let _ = self.cmd.try_send(Command::Leave { topic: self.topic });
    }
}

/// Reads peers' streams and hands validated messages to the driver.
struct Handler {
    tx: mpsc::Sender<(NodeId, Message)>,
    max_frame: usize,
}

impl ProtocolHandler for Handler {
    fn accept_uni(&self, conn: Conn, mut recv: BoxRecvStream) -> BoxFuture<'static, ()> {
        let tx = self.tx.clone();
        let max = self.max_frame;
        Box::pin(async move {
            let from = conn.remote_id();
            loop {
                match read_frame(&mut recv, max).await {
                    Ok(Some(body)) => match Message::decode(&body) {
                        Ok(msg) => {
                            if tx.send((from, msg)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(peer = %from.fmt_short(), "bad gossip message: {e}");
                            recv.stop(codes::PROTOCOL_ERROR);
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(peer = %from.fmt_short(), "bad gossip frame: {e}");
                        recv.stop(codes::PROTOCOL_ERROR);
                        return;
                    }
                }
            }
        })
    }
}

struct TopicState {
    core: TopicCore,
    events: mpsc::Sender<Event>,
}

struct Driver {
    transport: Arc<dyn Transport>,
    key: SecretKey,
    local: NodeAddr,
    max_frame: usize,
    config: Config,
    topics: HashMap<TopicId, TopicState>,
    writers: HashMap<NodeId, mpsc::Sender<Bytes>>,
    fail_tx: mpsc::UnboundedSender<NodeId>,
    room: Arc<Notify>,
    rng: rand::rngs::StdRng,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<(NodeId, Message)>,
        mut fails: mpsc::UnboundedReceiver<NodeId>,
    ) {
        loop {
            let deadline = self
                .topics
                .values()
                .filter_map(|t| t.core.poll_timeout())
                .min();
            let has_room = self.has_room();
            let room = self.room.clone();
            tokio::select! {
                cmd = cmds.recv(), if has_room => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => {
                        // Every handle is gone: leave politely and stop.
                        let topics: Vec<TopicId> = self.topics.keys().copied().collect();
                        for topic in topics {
                            self.command(Command::Leave { topic }).await;
                        }
                        return;
                    }
                },
                _ = room.notified(), if !has_room => {}
                Some((from, msg)) = inbound.recv() => {
                    tracing::trace!(from = %from.fmt_short(), body = ?msg.body, "gossip in");
                    let topic = msg.topic;
                    if let Some(t) = self.topics.get_mut(&topic) {
                        t.core.handle_message(Instant::now(), from, msg);
                        self.pump(topic).await;
                    }
                }
                Some(peer) = fails.recv() => {
                    if self.writers.get(&peer).is_some_and(|w| w.is_closed()) {
                        self.writers.remove(&peer);
                    }
                    self.peer_failed(peer).await;
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    let due: Vec<TopicId> = self
                        .topics
                        .iter()
                        .filter(|(_, t)| t.core.poll_timeout().is_some_and(|d| d <= now))
                        .map(|(id, _)| *id)
                        .collect();
                    for topic in due {
                        if let Some(t) = self.topics.get_mut(&topic) {
                            t.core.handle_timeout(now);
                        }
                        self.pump(topic).await;
                    }
                }
            }
        }
    }

    /// Whether every peer queue is at most half full (new broadcasts may be taken).
    fn has_room(&self) -> bool {
        let half = self.config.peer_queue.div_ceil(2);
        self.writers
            .values()
            .all(|w| w.is_closed() || w.capacity() >= half)
    }

    async fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Join {
                topic,
                peers,
                events,
                reply,
            } => {
                if self
                    .topics
                    .get(&topic)
                    .is_some_and(|t| !t.events.is_closed())
                {
                    let _ = reply.send(Err(JoinError::AlreadyJoined));
                    return;
                }
                let seed = self.rng.r#gen();
                let mut core = TopicCore::new(
                    topic,
                    self.key.clone(),
                    self.local.clone(),
                    self.config.clone(),
                    seed,
                );
                core.join(now, peers);
                self.topics.insert(topic, TopicState { core, events });
                let _ = reply.send(Ok(()));
                self.pump(topic).await;
            }
            Command::AddPeers { topic, peers } => {
                if let Some(t) = self.topics.get_mut(&topic) {
                    t.core.join(now, peers);
                    self.pump(topic).await;
                }
            }
            Command::Broadcast {
                topic,
                payload,
                scope,
                reply,
            } => {
                let r = match self.topics.get_mut(&topic) {
                    Some(t) => t
                        .core
                        .broadcast(now, payload, scope)
                        .map_err(SendError::from),
                    None => Err(SendError::Stopped),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
                self.pump(topic).await;
            }
            Command::Neighbors { topic, reply } => {
                let n = self
                    .topics
                    .get(&topic)
                    .map(|t| t.core.active_view().iter().map(|a| a.node_id).collect())
                    .unwrap_or_default();
                let _ = reply.send(n);
            }
            Command::Leave { topic } => {
                if let Some(t) = self.topics.get_mut(&topic) {
                    t.core.leave(now);
                    self.pump(topic).await;
                    self.topics.remove(&topic);
                }
            }
        }
    }

    async fn peer_failed(&mut self, peer: NodeId) {
        let now = Instant::now();
        let topics: Vec<TopicId> = self.topics.keys().copied().collect();
        for topic in topics {
            if let Some(t) = self.topics.get_mut(&topic) {
                t.core.peer_failed(now, peer);
            }
            self.pump(topic).await;
        }
    }

    /// Sends a topic's output and hands its events to the application.
    async fn pump(&mut self, topic: TopicId) {
        let mut slow = Vec::new();
        let mut events = Vec::new();
        let Some(t) = self.topics.get_mut(&topic) else {
            return;
        };
        while let Some(tx) = t.core.poll_transmit() {
            let frame = match encode_frame(&tx.msg.to_wire(), self.max_frame) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("gossip message not sent: {e}");
                    continue;
                }
            };
            let id = tx.to.node_id;
            tracing::trace!(to = %id.fmt_short(), body = ?tx.msg.body, "gossip out");
            let mut frame = Some(frame);
            for _ in 0..2 {
                let Some(f) = frame.take() else { break };
                let w = self.writers.entry(id).or_insert_with(|| {
                    spawn_writer(
                        self.transport.clone(),
                        tx.to.clone(),
                        self.config.peer_queue,
                        self.fail_tx.clone(),
                        self.room.clone(),
                    )
                });
                match w.try_send(f) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!(peer = %id.fmt_short(), "gossip peer too slow; dropping it");
                        self.writers.remove(&id);
                        slow.push(id);
                    }
                    Err(mpsc::error::TrySendError::Closed(f)) => {
                        // The writer went idle or failed: start a fresh one, once.
                        self.writers.remove(&id);
                        frame = Some(f);
                    }
                }
            }
        }
        while let Some(e) = t.core.poll_event() {
            events.push(e);
        }
        let tx = t.events.clone();
        for e in events {
            if tx.send(e).await.is_err() {
                // The application dropped its handle: leave.
                if let Some(t) = self.topics.get_mut(&topic) {
                    t.core.leave(Instant::now());
                    while let Some(x) = t.core.poll_transmit() {
                        if let Some(w) = self.writers.get(&x.to.node_id) {
                            if let Ok(f) = encode_frame(&x.msg.to_wire(), self.max_frame) {
                                let _ = w.try_send(f);
                            }
                        }
                    }
                }
                self.topics.remove(&topic);
                break;
            }
        }
        for id in slow {
            Box::pin(self.peer_failed(id)).await;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

fn spawn_writer(
    transport: Arc<dyn Transport>,
    to: NodeAddr,
    queue: usize,
    fail: mpsc::UnboundedSender<NodeId>,
    room: Arc<Notify>,
) -> mpsc::Sender<Bytes> {
    let (tx, rx) = mpsc::channel(queue);
    tokio::spawn(async move {
        let id = to.node_id;
        if let Err(e) = write_loop(transport, to, rx, &room).await {
            tracing::debug!(peer = %id.fmt_short(), "gossip stream ended: {e}");
            let _ = fail.send(id);
        }
        room.notify_one();
    });
    tx
}

async fn write_loop(
    transport: Arc<dyn Transport>,
    to: NodeAddr,
    mut rx: mpsc::Receiver<Bytes>,
    room: &Notify,
) -> Result<(), String> {
    let conn = transport.connect(to).await.map_err(|e| e.to_string())?;
    let mut send = conn.open_uni(&PROTOCOL).await.map_err(|e| e.to_string())?;
    let closed = conn.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            f = rx.recv() => match f {
                Some(f) => {
                    send.write_all(&f).await.map_err(|e| e.to_string())?;
                    room.notify_one();
                }
                None => break,
            },
            e = &mut closed => return Err(e.to_string()),
            _ = tokio::time::sleep(WRITER_IDLE) => {
                rx.close();
                while let Some(f) = rx.recv().await {
                    send.write_all(&f).await.map_err(|e| e.to_string())?;
                }
                break;
            }
        }
    }
    let _ = send.finish();
    Ok(())
}
