//! The tokio driver: runs a [`DhtCore`] over any [`Transport`], mounted under
//! [`PROTOCOL`] (`kith/dht/1`), one request/response per bidirectional stream, framed
//! with [`kith_core::frame`] and capped at [`MAX_MESSAGE_LEN`].
//!
//! ```no_run
//! # async fn demo(transport: std::sync::Arc<dyn kith_core::net::Transport>,
//! #               secret: kith_core::SecretKey, bootstrap: kith_core::NodeAddr) -> Result<(), kith_overlay::dht::DhtError> {
//! use kith_overlay::dht::{Config, Dht};
//! let dht = Dht::spawn(transport, secret, Config::default(), vec![bootstrap])?;
//! dht.bootstrap().await?;
//! dht.publish_addr().await?;
//! let key = dht.put_immutable(bytes::Bytes::from_static(b"hello")).await?;
//! assert_eq!(&dht.get_immutable(key).await?[..], b"hello");
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kith_core::frame::{FrameError, read_message, write_frame};
use kith_core::net::{
    BoxFuture, BoxRecvStream, BoxSendStream, Conn, ProtocolHandler, Transport, codes,
};
use kith_core::{NodeAddr, NodeId, SecretKey};
use tokio::sync::{mpsc, oneshot};

use super::core::{DhtCore, Event, GetError, PutError, QueryId, QueryResult, Remote};
use super::key::Key;
use super::message::{Body, MAX_MESSAGE_LEN, Message, wire};
use super::record::{MutableRecord, Record, RecordKind, SignedNodeAddr};
use super::{Config, PROTOCOL};

/// Resolves a bare [`NodeId`] to addresses: kith-core's discovery hook, which a transport
/// uses to dial a node it knows only by id. [`DhtHandle`] implements it through
/// node-address records (plug it in with `kith_transport::Endpoint::set_discovery`).
pub use kith_core::net::Discovery as Resolve;

/// Error of a DHT operation through the driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The secret key given to [`Dht::spawn`] is not the transport's identity.
    #[error("secret key does not match the transport's node id")]
    KeyMismatch,
    /// The protocol is already mounted on this transport.
    #[error("protocol kith/dht/1 is already mounted")]
    AlreadyMounted,
    /// The driver task has stopped.
    #[error("the DHT driver has stopped")]
    Stopped,
    /// A get found nothing.
    #[error(transparent)]
    Get(#[from] GetError),
    /// A put or announcement stored nothing.
    #[error(transparent)]
    Put(#[from] PutError),
}

enum Command {
    Bootstrap(Vec<NodeAddr>),
    FindNode(Key),
    Get(Key, RecordKind),
    Put(Record, Option<u64>),
    AddProvider(Key),
    GetProviders(Key),
    TableSize(oneshot::Sender<usize>),
    SetLocalAddr(NodeAddr),
}

type Reply = oneshot::Sender<Result<QueryResult, DhtError>>;

struct Inbound {
    from: Remote,
    msg: Message,
    reply: oneshot::Sender<Message>,
}

enum Outcome {
    Response(Remote, Box<Message>),
    Failed(u64),
}

/// Spawns DHT drivers.
#[derive(Debug)]
pub struct Dht;

/// A cheap, cloneable handle to a running DHT. The driver stops when every handle
/// is dropped.
#[derive(Clone)]
pub struct DhtHandle {
    cmd: mpsc::Sender<(Command, Option<Reply>)>,
    secret: SecretKey,
    node_id: NodeId,
    /// The advertised address, shared by all handles.
    local: Arc<std::sync::Mutex<NodeAddr>>,
    limits: super::record::Limits,
}

impl fmt::Debug for DhtHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhtHandle")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Most requests from peers queued for the core; beyond it, streams are refused.
const INBOUND_QUEUE: usize = 1024;

impl Dht {
    /// Mounts the DHT on `transport` and starts its driver on the current tokio
    /// runtime. `secret` must be the transport's identity (it signs node-address
    /// records and mutable values). The node starts joining through `bootstrap` at
    /// once; [`DhtHandle::bootstrap`] joins again and waits for the result.
    pub fn spawn(
        transport: Arc<dyn Transport>,
        secret: SecretKey,
        config: Config,
        bootstrap: Vec<NodeAddr>,
    ) -> Result<DhtHandle, DhtError> {
        if secret.node_id() != transport.local_id() {
            return Err(DhtError::KeyMismatch);
        }
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        transport
            .mount(
                PROTOCOL,
                Arc::new(Handler {
                    tx: in_tx,
                    timeout: config.request_timeout,
                }),
            )
            .map_err(|_| DhtError::AlreadyMounted)?;
        let local = transport.local_addr();
        let limits = config.limits;
        let seed = config.seed.unwrap_or_else(rand::random);
        let mut core = DhtCore::new(local.clone(), config, seed);
        if !bootstrap.is_empty() {
            // Join at once; `DhtHandle::bootstrap` runs (and awaits) another join.
            core.start_bootstrap(Instant::now(), bootstrap.clone());
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            core,
            transport,
            waiters: HashMap::new(),
            inbound: HashMap::new(),
            out_tx,
            bootstrap,
        };
        tokio::spawn(driver.run(cmd_rx, in_rx, out_rx));
        Ok(DhtHandle {
            cmd: cmd_tx,
            secret,
            node_id: local.node_id,
            local: Arc::new(std::sync::Mutex::new(local)),
            limits,
        })
    }
}

impl DhtHandle {
    async fn query(&self, cmd: Command) -> Result<QueryResult, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send((cmd, Some(tx)))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)?
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Joins through the bootstrap nodes given to [`Dht::spawn`]; returns the number of
    /// nodes found close to us.
    pub async fn bootstrap(&self) -> Result<usize, DhtError> {
        self.bootstrap_with(Vec::new()).await
    }

    /// Joins through `seeds` (plus the ones given to [`Dht::spawn`]).
    pub async fn bootstrap_with(&self, seeds: Vec<NodeAddr>) -> Result<usize, DhtError> {
        match self.query(Command::Bootstrap(seeds)).await? {
            QueryResult::FindNode(v) => Ok(v.len()),
            _ => Err(DhtError::Stopped),
        }
    }

    /// The k nodes closest to `target` that answered.
    pub async fn find_node(&self, target: Key) -> Result<Vec<NodeAddr>, DhtError> {
        match self.query(Command::FindNode(target)).await? {
            QueryResult::FindNode(v) => Ok(v),
            _ => Err(DhtError::Stopped),
        }
    }

    /// Gets a record of `kind` under `key` (validated).
    pub async fn get(&self, key: Key, kind: RecordKind) -> Result<Record, DhtError> {
        match self.query(Command::Get(key, kind)).await? {
            QueryResult::Get(r) => Ok(r?),
            _ => Err(DhtError::Stopped),
        }
    }

    /// Stores `record` (republished while the driver runs); returns how many nodes
    /// stored it.
    pub async fn put(&self, record: Record, cas: Option<u64>) -> Result<usize, DhtError> {
        match self.query(Command::Put(record, cas)).await? {
            QueryResult::Put(r) => Ok(r?),
            _ => Err(DhtError::Stopped),
        }
    }

    /// Stores an immutable value; returns its key (its BLAKE3 hash).
    pub async fn put_immutable(&self, value: Bytes) -> Result<Key, DhtError> {
        let key = Key::for_immutable(&value);
        self.put(Record::Immutable(value), None).await?;
        Ok(key)
    }

    /// Gets an immutable value by its hash.
    pub async fn get_immutable(&self, key: Key) -> Result<Bytes, DhtError> {
        match self.get(key, RecordKind::Immutable).await? {
            Record::Immutable(v) => Ok(v),
            _ => Err(GetError::NotFound.into()),
        }
    }

    /// Signs and stores a mutable value under this node's key and `salt`. With `cas`,
    /// nodes store it only over sequence `cas`.
    pub async fn put_mutable(
        &self,
        salt: Bytes,
        seq: u64,
        value: Bytes,
        cas: Option<u64>,
    ) -> Result<usize, DhtError> {
        let rec = MutableRecord::sign(&self.secret, salt, seq, value, &self.limits)
            .map_err(PutError::from)?;
        self.put(Record::Mutable(rec), cas).await
    }

    /// Gets the newest mutable value of `public_key` and `salt`.
    pub async fn get_mutable(
        &self,
        public_key: NodeId,
        salt: &[u8],
    ) -> Result<MutableRecord, DhtError> {
        match self
            .get(Key::for_mutable(&public_key, salt), RecordKind::Mutable)
            .await?
        {
            Record::Mutable(m) => Ok(m),
            _ => Err(GetError::NotFound.into()),
        }
    }

    /// Announces this node as a provider of `hash`.
    pub async fn announce_provider(&self, hash: Key) -> Result<usize, DhtError> {
        match self.query(Command::AddProvider(hash)).await? {
            QueryResult::AddProvider(r) => Ok(r?),
            _ => Err(DhtError::Stopped),
        }
    }

    /// Finds providers of `hash`, with their addresses.
    pub async fn find_providers(&self, hash: Key) -> Result<Vec<NodeAddr>, DhtError> {
        match self.query(Command::GetProviders(hash)).await? {
            QueryResult::GetProviders(v) => Ok(v),
            _ => Err(DhtError::Stopped),
        }
    }

    /// Signs this node's address (sequence: microseconds since the Unix epoch) and
    /// stores it at the node's own key, so others can [`resolve`](Self::resolve) it.
    pub async fn publish_addr(&self) -> Result<usize, DhtError> {
        let addr = self.local.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.publish_addr_of(addr).await
    }

    /// Like [`publish_addr`](Self::publish_addr) with explicit addresses (for example
    /// after the transport learned its public address).
    pub async fn publish_addr_of(&self, addr: NodeAddr) -> Result<usize, DhtError> {
        let seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let rec = SignedNodeAddr::sign(&self.secret, addr, seq).map_err(PutError::from)?;
        self.put(Record::NodeAddr(rec), None).await
    }

    /// Resolves a node id to the addresses it published.
    pub async fn resolve_addr(&self, id: NodeId) -> Result<NodeAddr, DhtError> {
        match self.get(Key::from_node(&id), RecordKind::NodeAddr).await? {
            Record::NodeAddr(n) => Ok(n.addr),
            _ => Err(GetError::NotFound.into()),
        }
    }

    /// Changes the address this node advertises in its messages (for example once the
    /// transport has learned its public address). Call
    /// [`publish_addr_of`](Self::publish_addr_of) to update the node-address record.
    pub async fn set_local_addr(&self, addr: NodeAddr) -> Result<(), DhtError> {
        if addr.node_id != self.node_id {
            return Err(PutError::from(super::record::RecordError::WrongSigner).into());
        }
        *self.local.lock().unwrap_or_else(|e| e.into_inner()) = addr.clone();
        self.cmd
            .send((Command::SetLocalAddr(addr), None))
            .await
            .map_err(|_| DhtError::Stopped)
    }

    /// Number of peers in the routing table.
    pub async fn routing_table_len(&self) -> Result<usize, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send((Command::TableSize(tx), None))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)
    }
}

impl Resolve for DhtHandle {
    fn resolve(&self, id: NodeId) -> BoxFuture<'_, Option<NodeAddr>> {
        Box::pin(async move { self.resolve_addr(id).await.ok() })
    }
}

/// The protocol handler: reads one request per stream and hands it to the driver.
struct Handler {
    tx: mpsc::Sender<Inbound>,
    timeout: Duration,
}

impl ProtocolHandler for Handler {
    fn accept_bi(
        &self,
        conn: Conn,
        mut send: BoxSendStream,
        mut recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        let tx = self.tx.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let from = Remote {
                id: conn.remote_id(),
                addr: conn.remote_addr(),
            };
            let read = tokio::time::timeout(timeout, read_request(&mut recv)).await;
            let Ok(Ok(msg)) = read else {
                send.reset(codes::PROTOCOL_ERROR);
                recv.stop(codes::PROTOCOL_ERROR);
                return;
            };
            let (reply, rx) = oneshot::channel();
            if tx.try_send(Inbound { from, msg, reply }).is_err() {
                send.reset(codes::CLOSE_LIMIT);
                return;
            }
            if let Ok(Ok(resp)) = tokio::time::timeout(timeout, rx).await {
                if write_frame(&mut send, &resp.to_wire(), MAX_MESSAGE_LEN)
                    .await
                    .is_ok()
                {
                    let _ = send.finish();
                    return;
                }
            }
            send.reset(codes::PROTOCOL_ERROR);
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Message(#[from] super::message::MessageError),
    #[error("stream ended without a message")]
    Empty,
    #[error("expected a request")]
    NotARequest,
}

async fn read_request(recv: &mut BoxRecvStream) -> Result<Message, StreamReadError> {
    let m: wire::DhtMessage = read_message(recv, MAX_MESSAGE_LEN)
        .await?
        .ok_or(StreamReadError::Empty)?;
    let msg = Message::from_wire(&m)?;
    if !msg.is_request() {
        return Err(StreamReadError::NotARequest);
    }
    Ok(msg)
}

async fn request(
    transport: Arc<dyn Transport>,
    to: NodeAddr,
    msg: Message,
    timeout: Duration,
) -> Option<(Remote, Message)> {
    let fut = async {
        let conn = transport.connect(to).await.ok()?;
        let (mut send, mut recv) = conn.open_bi(&PROTOCOL).await.ok()?;
        write_frame(&mut send, &msg.to_wire(), MAX_MESSAGE_LEN)
            .await
            .ok()?;
        send.finish().ok()?;
        let m: wire::DhtMessage = read_message(&mut recv, MAX_MESSAGE_LEN).await.ok()??;
        let resp = Message::from_wire(&m).ok()?;
        (resp.txid == msg.txid && !resp.is_request()).then(|| {
            (
                Remote {
                    id: conn.remote_id(),
                    addr: conn.remote_addr(),
                },
                resp,
            )
        })
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

struct Driver {
    core: DhtCore,
    transport: Arc<dyn Transport>,
    waiters: HashMap<QueryId, Reply>,
    inbound: HashMap<(NodeId, u64), oneshot::Sender<Message>>,
    out_tx: mpsc::UnboundedSender<Outcome>,
    bootstrap: Vec<NodeAddr>,
}

impl Driver {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<(Command, Option<Reply>)>,
        mut in_rx: mpsc::Receiver<Inbound>,
        mut out_rx: mpsc::UnboundedReceiver<Outcome>,
    ) {
        loop {
            self.flush();
            let deadline = self.core.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some((cmd, reply)) => self.command(cmd, reply),
                    None => return,
                },
                Some(inb) = in_rx.recv() => {
                    if let Body::Request(_) = inb.msg.body {
                        self.inbound.insert((inb.from.id, inb.msg.txid), inb.reply);
                        self.core.handle_message(Instant::now(), inb.from, inb.msg);
                    }
                },
                Some(out) = out_rx.recv() => match out {
                    Outcome::Response(from, msg) => self.core.handle_message(Instant::now(), from, *msg),
                    Outcome::Failed(txid) => self.core.request_failed(Instant::now(), txid),
                },
                () = sleep => self.core.handle_timeout(Instant::now()),
            }
        }
    }

    fn command(&mut self, cmd: Command, reply: Option<Reply>) {
        let now = Instant::now();
        let id = match cmd {
            Command::Bootstrap(mut seeds) => {
                seeds.extend(self.bootstrap.iter().cloned());
                Some(self.core.start_bootstrap(now, seeds))
            }
            Command::FindNode(t) => Some(self.core.start_find_node(now, t)),
            Command::Get(k, kind) => Some(self.core.start_get(now, k, kind)),
            Command::Put(r, cas) => match self.core.start_put(now, r, cas) {
                Ok(id) => Some(id),
                Err(e) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e.into()));
                    }
                    return;
                }
            },
            Command::AddProvider(k) => Some(self.core.start_add_provider(now, k)),
            Command::GetProviders(k) => Some(self.core.start_get_providers(now, k)),
            Command::TableSize(tx) => {
                let _ = tx.send(self.core.routing_table().len());
                None
            }
            Command::SetLocalAddr(addr) => {
                self.core.set_local_addr(addr);
                None
            }
        };
        if let (Some(id), Some(reply)) = (id, reply) {
            self.waiters.insert(id, reply);
        }
    }

    fn flush(&mut self) {
        let timeout = self.core.config().request_timeout;
        while let Some(t) = self.core.poll_transmit() {
            if t.msg.is_request() {
                let (transport, out) = (self.transport.clone(), self.out_tx.clone());
                let txid = t.msg.txid;
                tokio::spawn(async move {
                    let o = match request(transport, t.to, t.msg, timeout).await {
                        Some((from, msg)) => Outcome::Response(from, Box::new(msg)),
                        None => Outcome::Failed(txid),
                    };
                    let _ = out.send(o);
                });
            } else if let Some(reply) = self.inbound.remove(&(t.to.node_id, t.msg.txid)) {
                let _ = reply.send(t.msg);
            }
        }
        while let Some(Event::QueryDone { id, result, .. }) = self.core.poll_event() {
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.send(Ok(result));
            }
        }
        // Streams whose handler gave up (timeout) leave closed senders behind.
        if self.inbound.len() > INBOUND_QUEUE {
            self.inbound.retain(|_, s| !s.is_closed());
        }
    }
}
