//! [`Share`]: the node-side service. It registers what this node shares, serves it to
//! peers over `kith/share/1` (the provider side), announces it in the DHT, and starts
//! downloads (see [`crate::download`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kith_core::frame::{encode_frame, read_frame};
use kith_core::net::{BoxFuture, BoxRecvStream, BoxSendStream, Conn, ProtocolHandler, codes};
use kith_core::{NodeId, Transport};
use kith_overlay::dht::{DhtHandle, Key};
use kith_store::collection::{self, CollectionError};
use kith_store::{BlobFormat, GROUP_SIZE, Hash, ImportMode, SizeProof, Store, Tag, group_count};
use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::bridge::{ChunkWriter, PacedWriter, Pacer};
use crate::layout::Layout;
use crate::ranges::RangeSet;
use crate::scheduler::SchedulerConfig;
use crate::superseed::{SuperSeed, SuperSeedConfig};
use crate::ticket::Ticket;
use crate::wire::{GetRequest, MAX_FRAME, Open, Refusal, Response, WireError};
use crate::{PROTOCOL, SharedStore};

/// Limits of the provider side. Every one is enforced with a typed refusal.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProviderLimits {
    /// Requests served at once, over all peers; beyond it a request is refused as busy.
    /// Default 32.
    pub upload_slots: usize,
    /// Requests (get and watch) one peer may have open at once. Default 24: what a
    /// downloader with the default
    /// [`max_requests_per_peer`](crate::SchedulerConfig::max_requests_per_peer) (16)
    /// opens and its watch, with room to spare (a refusal pauses a peer's requests; at
    /// 16 the single-source bench saw one in eight rounds of 1 GiB). A get stops counting
    /// before the end of its answer goes out, so a peer that reads it and asks again is
    /// not refused for it.
    pub requests_per_peer: usize,
    /// Ranges one get request may name, over all its blobs. Default 1024.
    pub max_ranges_per_request: usize,
    /// Bytes per second sent to one peer, over all its requests; `None` is unlimited.
    pub upload_rate_per_peer: Option<u64>,
    /// Bytes per second sent to all peers together (this node's upload capacity for
    /// sharing); `None` is unlimited.
    pub upload_rate_total: Option<u64>,
    /// Bytes buffered per response before they are handed to the connection (the
    /// connection's own send window comes on top). Default 256 KiB (1 MiB cost the
    /// provider 10 MiB more peak memory and bought no measurable speed).
    pub send_buffer: usize,
    /// Retry-after sent with a busy refusal. Default 250 ms: the refused peer leaves this
    /// provider alone that long, so a slot that frees sooner stays empty (a refusal costs
    /// only a stream and a frame). In `kith-sim share`'s flash crowd (200 downloaders,
    /// 32 slots) 500 ms left uploads idle and finished at 1.28× the fluid bound, 250 ms
    /// at 1.19×.
    pub busy_retry: Duration,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            upload_slots: 32,
            requests_per_peer: 24,
            max_ranges_per_request: 1024,
            upload_rate_per_peer: None,
            upload_rate_total: None,
            send_buffer: 256 * 1024,
            busy_retry: Duration::from_millis(250),
        }
    }
}

/// Configuration of a [`Share`] service.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShareConfig {
    /// Provider-side limits.
    pub limits: ProviderLimits,
    /// Download scheduler tuning.
    pub scheduler: SchedulerConfig,
    /// Announce shares (and finished downloads) as DHT provider records. Default true
    /// (only with a DHT).
    pub announce: bool,
    /// Keep serving a finished download (and announce it). Default true.
    pub provide_when_done: bool,
    /// Most providers one download talks to at once. Default 32.
    pub max_peers_per_download: usize,
    /// Time allowed to connect to a provider and hear its availability. Default 10 s.
    pub connect_timeout: Duration,
    /// Super-seed the shares this node holds whole: tell each watcher only of pieces no
    /// peer it watches back has yet (in runs of up to 4 MiB), so each piece leaves this
    /// node about once and the downloaders trade the rest. For an origin with many
    /// downloaders at once (a release channel's publisher); a downloader that gains
    /// nothing for 2 s is told of everything it lacks, so no download depends on it.
    /// Watchers that cannot be watched back are told everything. Default false.
    pub super_seed: bool,
}

impl Default for ShareConfig {
    fn default() -> Self {
        Self {
            limits: ProviderLimits::default(),
            // Pieces count once the store has made them durable, in batches: a window
            // of RTT + 25 ms starves between batches, so give it 100 ms.
            scheduler: SchedulerConfig {
                pipeline_slack: Duration::from_millis(100),
                ..SchedulerConfig::default()
            },
            announce: true,
            provide_when_done: true,
            max_peers_per_download: 32,
            connect_timeout: Duration::from_secs(10),
            super_seed: false,
        }
    }
}

/// Errors of the share operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// `kith/share/1` is already mounted on the transport.
    #[error("the share protocol is already mounted on this transport")]
    AlreadyMounted,
    /// Importing into the store failed.
    #[error("import failed: {0}")]
    Import(#[from] kith_store::ImportError),
    /// Importing or reading a collection failed.
    #[error("collection: {0}")]
    Collection(#[from] CollectionError),
    /// The store does not hold the content complete.
    #[error("the store does not hold {0} complete")]
    Incomplete(Hash),
    /// Writing a tag failed.
    #[error("tag: {0}")]
    Tag(#[from] kith_store::TagError),
    /// A store operation failed.
    #[error("store: {0}")]
    Store(String),
}

/// Newly verified groups of one blob of a share, for watchers.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    pub(crate) root: Hash,
    pub(crate) index: u32,
    pub(crate) size: u64,
    pub(crate) groups: RangeSet,
    /// The share is now complete here.
    pub(crate) complete: bool,
}

/// What the provider knows of one share it serves.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) collection: bool,
    /// Blob index → hash: 0 is the root, `i + 1` the collection's entry `i`.
    pub(crate) blobs: Arc<Vec<Hash>>,
    pub(crate) complete: bool,
}

pub(crate) struct Inner {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) store: SharedStore,
    pub(crate) dht: Option<DhtHandle>,
    pub(crate) config: ShareConfig,
    pub(crate) registry: Mutex<HashMap<Hash, Entry>>,
    pub(crate) updates: broadcast::Sender<Update>,
    slots: Arc<Semaphore>,
    per_peer: Mutex<HashMap<NodeId, PeerRequests>>,
    pacers: Mutex<HashMap<NodeId, Arc<Pacer>>>,
    total_pacer: Option<Arc<Pacer>>,
    uploaded: Arc<AtomicU64>,
    gets_served: AtomicU64,
    gets_waiting: AtomicU64,
    refused: AtomicU64,
    /// Counts gets as they arrive, to order their streams (see `next_get_priority`).
    get_seq: AtomicU32,
    pub(crate) lan_peers: Mutex<Option<LanPeers>>,
    /// Per share held whole, when super-seeding: what each watcher holds and was told.
    superseed: Mutex<HashMap<Hash, Arc<Mutex<SuperSeed<u64>>>>>,
}

/// The send priority of the get numbered `seq` (see `Inner::next_get_priority`).
fn get_priority(seq: u32) -> i32 {
    -1 - (seq & 0x3FFF_FFFF) as i32
}

/// Lists the peers on the local network (for example `MdnsDiscovery::peers`).
pub(crate) type LanPeers = Arc<dyn Fn() -> Vec<kith_core::NodeAddr> + Send + Sync>;

impl Inner {
    /// The send priority of the next get's stream: below every other stream (the
    /// default is 0), so availability updates and other protocols' messages never
    /// wait behind bulk data; and first come, first served among gets, so a peer's
    /// requests go out one after the other, each at the full rate, rather than all
    /// interleaved. Interleaved, every request in flight advances at once: each keeps
    /// its own reader, writer and hand-offs busy at both ends, for no earlier finish.
    /// (After 2^30 gets the order starts over once: a reordering, nothing lost.)
    fn next_get_priority(&self) -> i32 {
        get_priority(self.get_seq.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn entry(&self, root: &Hash) -> Option<Entry> {
        lock(&self.registry).get(root).cloned()
    }

    pub(crate) fn register(&self, root: Hash, entry: Entry) {
        lock(&self.registry).insert(root, entry);
    }

    /// Announces this node as a provider of `root` in the DHT (republished by the DHT
    /// while it runs). Returns how many nodes stored the record; 0 without a DHT or with
    /// announcing turned off.
    pub(crate) async fn announce(&self, root: Hash) -> Result<usize, kith_overlay::dht::DhtError> {
        if !self.config.announce {
            return Ok(0);
        }
        match &self.dht {
            Some(dht) => dht.announce_provider(Key(*root.as_bytes())).await,
            None => Ok(0),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The share service of one node: serves what it shares and downloads from others.
/// Cheap to clone.
#[derive(Clone)]
pub struct Share {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("node", &self.inner.transport.local_id())
            .finish_non_exhaustive()
    }
}

/// What a [`Share`] service has served since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Bytes of answers to get requests written to peers' streams (verified encodings
    /// and their headers; transport overhead not counted).
    pub uploaded_bytes: u64,
    /// Get requests accepted (not refused) whose answer has started.
    pub gets_served: u64,
    /// Get requests accepted and waiting for their turn now: a peer's gets are read
    /// from the store two at a time, first come, first served (their answers go out one
    /// after the other in any case).
    pub gets_waiting: u64,
    /// Requests (gets and watches) refused, for any reason (see
    /// [`Refusal`](crate::wire::Refusal)).
    pub refused: u64,
}

/// Tag name that pins a share in the store.
pub fn tag_name(root: &Hash) -> String {
    format!("kith-share-{root}")
}

impl Share {
    /// Mounts `kith/share/1` on `transport` and serves from `store`. With `dht`, shares
    /// are announced as provider records and downloads find providers through it.
    pub fn spawn(
        transport: Arc<dyn Transport>,
        store: SharedStore,
        dht: Option<DhtHandle>,
        config: ShareConfig,
    ) -> Result<Self, ShareError> {
        let (updates, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            transport: transport.clone(),
            store,
            dht,
            slots: Arc::new(Semaphore::new(config.limits.upload_slots.max(1))),
            registry: Mutex::new(HashMap::new()),
            updates,
            per_peer: Mutex::new(HashMap::new()),
            pacers: Mutex::new(HashMap::new()),
            superseed: Mutex::new(HashMap::new()),
            total_pacer: config
                .limits
                .upload_rate_total
                .map(|r| Arc::new(Pacer::new(r))),
            uploaded: Arc::new(AtomicU64::new(0)),
            gets_served: AtomicU64::new(0),
            gets_waiting: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            get_seq: AtomicU32::new(0),
            lan_peers: Mutex::new(None),
            config,
        });
        transport
            .mount(
                PROTOCOL,
                Arc::new(Handler {
                    inner: Arc::downgrade(&inner),
                }),
            )
            .map_err(|_| ShareError::AlreadyMounted)?;
        Ok(Self { inner })
    }

    /// Asks the peers `source` lists (peers on the local network, such as kith-transport's
    /// `MdnsDiscovery::peers`) first when downloading: they are tried before the ticket's
    /// providers and the DHT's. A LAN peer that lacks the content is not reported as a
    /// failure.
    pub fn set_lan_peers(
        &self,
        source: impl Fn() -> Vec<kith_core::NodeAddr> + Send + Sync + 'static,
    ) {
        *lock(&self.inner.lan_peers) = Some(Arc::new(source));
    }

    /// The store this service serves from.
    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.transport.local_id()
    }

    /// A ticket for `root` naming this node as provider.
    pub fn ticket(&self, root: Hash, format: BlobFormat) -> Ticket {
        Ticket::new(root, format, vec![self.inner.transport.local_addr()])
    }

    /// Shares content already complete in the store: pins it with a tag, serves it and
    /// announces it. Returns a ticket naming this node.
    pub async fn add(&self, root: Hash, format: BlobFormat) -> Result<Ticket, ShareError> {
        let store = self.inner.store.clone();
        let blobs = tokio::task::spawn_blocking(move || blob_list(&*store, root, format, true))
            .await
            .map_err(|e| ShareError::Store(e.to_string()))??;
        let tag = Tag { hash: root, format };
        self.inner.store.set_tag(&tag_name(&root), tag)?;
        self.inner.register(
            root,
            Entry {
                collection: format == BlobFormat::Collection,
                blobs: Arc::new(blobs),
                complete: true,
            },
        );
        let _ = self.inner.updates.send(Update {
            root,
            index: 0,
            size: 0,
            groups: RangeSet::new(),
            complete: true,
        });
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = inner.announce(root).await {
                tracing::debug!(%root, "provider announcement failed: {e}");
            }
        });
        Ok(self.ticket(root, format))
    }

    /// Announces this node as a provider of `root` in the DHT and waits for the result:
    /// how many nodes stored the record (0 without a DHT). [`add`](Self::add) does this in
    /// the background; the DHT republishes it while the node runs.
    pub async fn announce(&self, root: Hash) -> Result<usize, kith_overlay::dht::DhtError> {
        self.inner.announce(root).await
    }

    /// Imports bytes as a raw blob and shares it.
    pub async fn add_bytes(&self, data: Bytes) -> Result<Ticket, ShareError> {
        let store = self.inner.store.clone();
        let hash = tokio::task::spawn_blocking(move || store.import_bytes(&data))
            .await
            .map_err(|e| ShareError::Store(e.to_string()))??;
        self.add(hash, BlobFormat::Raw).await
    }

    /// Imports a file (referenced in place by a filesystem store, copied by others) and
    /// shares it as a raw blob.
    pub async fn add_file(&self, path: &Path) -> Result<Ticket, ShareError> {
        let store = self.inner.store.clone();
        let path = path.to_owned();
        let hash = tokio::task::spawn_blocking(move || {
            store.import_file_with(&path, ImportMode::Reference)
        })
        .await
        .map_err(|e| ShareError::Store(e.to_string()))??;
        self.add(hash, BlobFormat::Raw).await
    }

    /// Imports a directory as a collection (files referenced in place by a filesystem
    /// store) and shares it.
    pub async fn add_dir(&self, dir: &Path) -> Result<Ticket, ShareError> {
        let store = self.inner.store.clone();
        let dir = dir.to_owned();
        let hash = tokio::task::spawn_blocking(move || {
            collection::import_dir_with(&*store, &dir, ImportMode::Reference)
        })
        .await
        .map_err(|e| ShareError::Store(e.to_string()))??;
        self.add(hash, BlobFormat::Collection).await
    }

    /// Stops serving `root` and removes its pin (the blobs stay until garbage collection).
    pub fn remove(&self, root: &Hash) -> Result<bool, ShareError> {
        let was = lock(&self.inner.registry).remove(root).is_some();
        self.inner.store.remove_tag(&tag_name(root))?;
        Ok(was)
    }

    /// This node's address as its transport knows it (for provider hints).
    pub fn local_addr(&self) -> kith_core::NodeAddr {
        self.inner.transport.local_addr()
    }

    /// Waits until chunk groups `groups` of blob `hash` are verified in the store, whether
    /// they were there from the start or arrive through a download of this service: a
    /// reader streams a blob while it downloads (the site gateway does). `groups` is
    /// clamped to the blob's groups once its size is known, so asking past the end
    /// returns at once. It waits as long as it takes: wrap it in a timeout.
    pub async fn wait_for_groups(
        &self,
        hash: Hash,
        groups: std::ops::Range<u64>,
    ) -> Result<kith_store::BlobStatus, ShareError> {
        // Subscribe before looking, so a batch verified in between is not missed.
        let mut updates = self.inner.updates.subscribe();
        loop {
            let status =
                (self.inner.store.status(hash)).map_err(|e| ShareError::Store(e.to_string()))?;
            if let Some(status) = status {
                let end = groups.end.min(status.bitfield.len());
                if groups.start >= end || status.bitfield.contains_all(groups.start, end) {
                    return Ok(status);
                }
            }
            match updates.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                // The sender lives in `inner`, which `self` holds: never closed here.
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(ShareError::Store("share service stopped".into()));
                }
            }
        }
    }

    /// What this service has uploaded to peers so far.
    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            uploaded_bytes: self.inner.uploaded.load(Ordering::Relaxed),
            gets_served: self.inner.gets_served.load(Ordering::Relaxed),
            gets_waiting: self.inner.gets_waiting.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
        }
    }

    /// Roots this node serves.
    pub fn shared(&self) -> Vec<(Hash, bool)> {
        lock(&self.inner.registry)
            .iter()
            .map(|(h, e)| (*h, e.complete))
            .collect()
    }
}

/// The blob list of a share: `[root]` for a raw blob, `[manifest, entries…]` for a
/// collection (whose manifest must be complete). With `need_complete`, every blob must
/// be complete in the store.
pub(crate) fn blob_list(
    store: &(dyn Store + Send + Sync),
    root: Hash,
    format: BlobFormat,
    need_complete: bool,
) -> Result<Vec<Hash>, ShareError> {
    let mut blobs = vec![root];
    if format == BlobFormat::Collection {
        let m = collection::read_manifest(store, root)?;
        for e in &m.entries {
            blobs.push(e.hash().map_err(CollectionError::from)?);
        }
    }
    if need_complete {
        for h in &blobs {
            let complete = store
                .status(*h)
                .map_err(|e| ShareError::Store(e.to_string()))?
                .is_some_and(|s| s.bitfield.is_complete());
            if !complete {
                return Err(ShareError::Incomplete(*h));
            }
        }
    }
    Ok(blobs)
}

struct Handler {
    inner: std::sync::Weak<Inner>,
}

/// Gets of one peer read from the store at once: one whose answer is being sent and
/// the next, so it is ready when the first ends. The answers go out one after the other
/// anyway (see `Inner::next_get_priority`); reading further ahead only kept more
/// threads and buffers busy (a single-source download took 5-8 % more CPU per byte
/// with all 16 of a peer's requests reading at once).
const GETS_READING_PER_PEER: usize = 2;

/// Counts one get in `ServiceStats::gets_waiting` while it lives (also when the get is
/// dropped while waiting).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one peer has open with us.
struct PeerRequests {
    open: usize,
    /// Admits its gets to read from the store, first come, first served.
    reading: Arc<Semaphore>,
}

/// Counts one open request of a peer; released on drop.
struct PeerSlot {
    inner: Arc<Inner>,
    peer: NodeId,
    reading: Arc<Semaphore>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = lock(&self.inner.per_peer);
        if let Some(r) = m.get_mut(&self.peer) {
            r.open = r.open.saturating_sub(1);
            if r.open == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

fn peer_slot(inner: &Arc<Inner>, peer: NodeId) -> Option<PeerSlot> {
    let mut m = lock(&inner.per_peer);
    let r = m.entry(peer).or_insert_with(|| PeerRequests {
        open: 0,
        reading: Arc::new(Semaphore::new(GETS_READING_PER_PEER)),
    });
    if r.open >= inner.config.limits.requests_per_peer {
        return None;
    }
    r.open += 1;
    Some(PeerSlot {
        inner: inner.clone(),
        peer,
        reading: r.reading.clone(),
    })
}

impl ProtocolHandler for Handler {
    fn accept_bi(
        &self,
        conn: Conn,
        send: BoxSendStream,
        recv: BoxRecvStream,
    ) -> BoxFuture<'static, ()> {
        let inner = self.inner.upgrade();
        Box::pin(async move {
            let Some(inner) = inner else { return };
            if let Err(e) = serve(inner, conn, send, recv).await {
                tracing::debug!("share stream ended: {e}");
            }
        })
    }
}

async fn write_response(send: &mut BoxSendStream, r: &Response) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let frame = encode_frame(&r.to_msg(), MAX_FRAME).map_err(std::io::Error::other)?;
    send.write_all(&frame).await
}

async fn refuse(inner: &Inner, mut send: BoxSendStream, r: Refusal) -> std::io::Result<()> {
    inner.refused.fetch_add(1, Ordering::Relaxed);
    write_response(&mut send, &Response::Refused(r)).await?;
    let _ = send.finish();
    Ok(())
}

async fn serve(
    inner: Arc<Inner>,
    conn: Conn,
    send: BoxSendStream,
    mut recv: BoxRecvStream,
) -> std::io::Result<()> {
    let peer = conn.remote_id();
    let frame = match read_frame(&mut recv, MAX_FRAME).await {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(()),
        Err(e) => {
            recv.stop(codes::PROTOCOL_ERROR);
            return Err(std::io::Error::other(e));
        }
    };
    let open = match Open::decode(&frame, inner.config.limits.max_ranges_per_request) {
        Ok(o) => o,
        Err(WireError::Ranges(_) | WireError::TooManyBlobs(_)) => {
            return refuse(&inner, send, Refusal::TooLarge).await;
        }
        Err(_) => return refuse(&inner, send, Refusal::BadRequest).await,
    };
    let Some(slot) = peer_slot(&inner, peer) else {
        return refuse(&inner, send, Refusal::TooManyRequests).await;
    };
    match open {
        Open::Get(req) => serve_get(inner, peer, send, req, slot).await,
        Open::Watch { root, collection } => {
            let entry = inner.entry(&root).filter(|e| e.collection == collection);
            match entry {
                Some(e) if e.complete && inner.config.super_seed => {
                    serve_super_seed(inner, conn, send, recv, root, e).await
                }
                _ => serve_watch(inner, send, recv, root, collection).await,
            }
        }
    }
}

async fn serve_get(
    inner: Arc<Inner>,
    peer: NodeId,
    mut send: BoxSendStream,
    req: GetRequest,
    slot: PeerSlot,
) -> std::io::Result<()> {
    send.set_priority(inner.next_get_priority());
    let Some(entry) = inner
        .entry(&req.root)
        .filter(|e| e.collection == req.collection)
    else {
        // The peer's request slot is free before it reads the refusal, so a request it
        // sends next is not refused for this one.
        drop(slot);
        return refuse(&inner, send, Refusal::NotFound).await;
    };
    let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
        drop(slot);
        let ms = inner
            .config
            .limits
            .busy_retry
            .as_millis()
            .min(u32::MAX as u128) as u32;
        return refuse(&inner, send, Refusal::Busy { retry_after_ms: ms }).await;
    };
    let mut pacers: Vec<Arc<Pacer>> = inner.total_pacer.iter().cloned().collect();
    if let Some(rate) = inner.config.limits.upload_rate_per_peer {
        pacers.push(
            lock(&inner.pacers)
                .entry(peer)
                .or_insert_with(|| Arc::new(Pacer::new(rate)))
                .clone(),
        );
    }
    let turn = {
        let _waiting = Waiting::new(&inner.gets_waiting);
        slot.reading.clone().acquire_owned().await
    };
    // The semaphore is never closed, so this is a turn, never an error.
    let Ok(reading) = turn else {
        return Ok(());
    };
    inner.gets_served.fetch_add(1, Ordering::Relaxed);
    tracing::trace!(peer = %peer.fmt_short(), blobs = req.blobs.len(), "get: serving");
    // The request's slot, upload slot and turn are let go of before the end of the
    // answer goes out, so a peer that reads it and asks again is never refused for this
    // request (on an error they go when the answer is abandoned).
    let held: Box<dyn Send> = Box::new((slot, permit, reading));
    if pacers.is_empty() {
        serve_unpaced(&inner, send, entry, req, held).await
    } else {
        serve_paced(&inner, send, entry, req, pacers, held).await
    }
}

/// Answers a get through a [`ChunkWriter`]: the store's encoding is written by a
/// blocking thread into chunks that a task writes to the stream.
async fn serve_unpaced(
    inner: &Inner,
    send: BoxSendStream,
    entry: Entry,
    req: GetRequest,
    held: Box<dyn Send>,
) -> std::io::Result<()> {
    // `send_buffer` bounds what waits between the store and the connection: four
    // chunks (see `ChunkWriter`).
    let chunk = (inner.config.limits.send_buffer / 4).max(4096);
    let (rt, store) = (tokio::runtime::Handle::current(), inner.store.clone());
    let (mut w, pump) = ChunkWriter::spawn(
        &rt,
        send,
        chunk,
        inner.uploaded.clone(),
        codes::PROTOCOL_ERROR,
    );
    let result = tokio::task::spawn_blocking(move || {
        let r = write_get(&*store, &entry, &req, &mut w);
        let ended = match &r {
            Ok(()) => w.finish_releasing(held),
            Err(_) => {
                w.reset(codes::PROTOCOL_ERROR);
                Ok(())
            }
        };
        tracing::trace!(ok = r.is_ok() && ended.is_ok(), "get: served");
        r.and(ended)
    })
    .await;
    // The slots (`held`) go when the last byte is handed to the connection.
    let written = pump.await.map_err(std::io::Error::other);
    result.map_err(std::io::Error::other)??;
    written?
}

/// Answers a get under upload pacing (see [`PacedWriter`]).
async fn serve_paced(
    inner: &Inner,
    send: BoxSendStream,
    entry: Entry,
    req: GetRequest,
    pacers: Vec<Arc<Pacer>>,
    held: Box<dyn Send>,
) -> std::io::Result<()> {
    let buffer = inner.config.limits.send_buffer.max(4096);
    let counter = inner.uploaded.clone();
    let (rt, store) = (tokio::runtime::Handle::current(), inner.store.clone());
    let result = tokio::task::spawn_blocking(move || {
        let mut w =
            std::io::BufWriter::with_capacity(buffer, PacedWriter::new(send, rt, pacers, counter));
        let r = write_get(&*store, &entry, &req, &mut w);
        let flushed = w.flush();
        let mut send = match w.into_inner() {
            Ok(bw) => bw.inner,
            Err(e) => e.into_inner().into_parts().0.inner,
        };
        match (&r, &flushed) {
            (Ok(()), Ok(())) => {
                drop(held);
                let _ = send.finish();
            }
            _ => send.reset(codes::PROTOCOL_ERROR),
        }
        tracing::trace!(ok = r.is_ok() && flushed.is_ok(), "get: served");
        r.and(flushed)
    })
    .await;
    result.map_err(std::io::Error::other)?
}

/// Writes the answer to a get: per blob a header, then its encodings.
fn write_get(
    store: &(dyn Store + Send + Sync),
    entry: &Entry,
    req: &GetRequest,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    let frame = |r: &Response| encode_frame(&r.to_msg(), MAX_FRAME).map_err(std::io::Error::other);
    for (index, groups, held) in &req.blobs {
        let Some(hash) = entry.blobs.get(*index as usize).copied() else {
            w.write_all(&frame(&Response::Blob {
                index: *index,
                missing: true,
            })?)?;
            return Ok(());
        };
        let status = store.status(hash).map_err(std::io::Error::other)?;
        // A requester that holds the size verified needs no size proof (nor do we need
        // the last group to send one); one whose size differs from ours gets "missing".
        let proof = if *held == 0 {
            SizeProof::Included
        } else {
            SizeProof::Omitted
        };
        let ok = status.as_ref().is_some_and(|s| {
            let n = group_count(s.size);
            (*held == 0 || *held == s.size)
                && groups.ranges().iter().all(|r| {
                    r.end <= n
                        && s.bitfield.contains_all(r.start, r.end)
                        && (r.end == n || proof == SizeProof::Omitted || s.bitfield.get(n - 1))
                })
        });
        let Some(status) = status.filter(|_| ok && !groups.is_empty()) else {
            w.write_all(&frame(&Response::Blob {
                index: *index,
                missing: true,
            })?)?;
            return Ok(());
        };
        w.write_all(&frame(&Response::Blob {
            index: *index,
            missing: false,
        })?)?;
        for r in groups.ranges() {
            let bytes = r.start * GROUP_SIZE..(r.end * GROUP_SIZE).min(status.size);
            store
                .encode_range_with(hash, bytes, proof, w)
                .map_err(std::io::Error::other)?;
        }
    }
    Ok(())
}

async fn serve_watch(
    inner: Arc<Inner>,
    mut send: BoxSendStream,
    mut recv: BoxRecvStream,
    root: Hash,
    collection: bool,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut updates = inner.updates.subscribe();
    let Some(entry) = inner.entry(&root).filter(|e| e.collection == collection) else {
        return refuse(&inner, send, Refusal::NotFound).await;
    };
    let snapshot = |entry: &Entry| -> std::io::Result<Response> {
        if entry.complete {
            return Ok(Response::Availability {
                complete: true,
                blobs: Vec::new(),
            });
        }
        let mut blobs = Vec::new();
        for (i, h) in entry.blobs.iter().enumerate() {
            if let Some(s) = inner.store.status(*h).map_err(std::io::Error::other)? {
                let set = RangeSet::from(&s.bitfield);
                if !set.is_empty() {
                    blobs.push((i as u32, set, s.size));
                }
            }
        }
        Ok(Response::Availability {
            complete: false,
            blobs,
        })
    };
    let first = snapshot(&entry)?;
    let complete = matches!(first, Response::Availability { complete: true, .. });
    write_response(&mut send, &first).await?;
    if complete {
        let _ = send.finish();
        return Ok(());
    }
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            r = recv.read(&mut scratch) => {
                // The watcher closed (or sent something it should not): stop.
                let _ = r;
                let _ = send.finish();
                return Ok(());
            }
            u = updates.recv() => match u {
                Ok(u) if u.root == root => {
                    if u.complete {
                        write_response(&mut send, &Response::Availability { complete: true, blobs: Vec::new() }).await?;
                        let _ = send.finish();
                        return Ok(());
                    }
                    let msg = Response::Availability { complete: false, blobs: vec![(u.index, u.groups, u.size)] };
                    write_response(&mut send, &msg).await?;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let Some(entry) = inner.entry(&root) else { return Ok(()) };
                    let snap = snapshot(&entry)?;
                    write_response(&mut send, &snap).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// What the watch back to a super-seeded watcher reports.
enum Back {
    /// It holds these groups (per blob index).
    Has(Vec<(u32, RangeSet, u64)>),
    /// It holds everything.
    Complete,
    /// It cannot be watched (it does not serve the share, or the stream failed).
    Failed,
}

/// Takes a watcher out of a super-seed state when its watch ends.
struct Watcher {
    state: Arc<Mutex<SuperSeed<u64>>>,
    id: u64,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        lock(&self.state).remove_peer(&self.id);
    }
}

/// Watches `root` on `conn`'s peer (the direction opposite to its watch of us), retrying
/// while it has not registered the share yet, and reports what it holds.
async fn watch_back(conn: Conn, root: Hash, collection: bool, tx: mpsc::UnboundedSender<Back>) {
    use tokio::io::AsyncWriteExt;
    let max_ranges = crate::ranges::MAX_WIRE_RANGES;
    // A downloader registers the share once it knows the layout: give it 5 s.
    for _ in 0..20 {
        let Ok((mut send, recv)) = conn.open_bi(&PROTOCOL).await else {
            break;
        };
        let open = Open::Watch { root, collection };
        let Ok(frame) = encode_frame(&open.to_msg(), MAX_FRAME) else {
            break;
        };
        if send.write_all(&frame).await.is_err() {
            break;
        }
        let mut recv = tokio::io::BufReader::new(recv);
        let mut answered = false;
        while let Ok(Some(f)) = read_frame(&mut recv, MAX_FRAME).await {
            match Response::decode(&f, max_ranges) {
                Ok(Response::Availability { complete: true, .. }) => {
                    let _ = tx.send(Back::Complete);
                    return;
                }
                Ok(Response::Availability { blobs, .. }) => {
                    answered = true;
                    if tx.send(Back::Has(blobs)).is_err() {
                        return;
                    }
                }
                _ => break,
            }
        }
        if answered {
            // It answered and then stopped: it is gone or broke the protocol.
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = tx.send(Back::Failed);
}

/// Serves a watch of a share held whole while super-seeding (see [`crate::superseed`]):
/// tells the watcher of pieces as the policy reveals them, learning what it holds from a
/// watch in the other direction. A watcher that cannot be watched back is told
/// everything, as without super-seeding.
async fn serve_super_seed(
    inner: Arc<Inner>,
    conn: Conn,
    mut send: BoxSendStream,
    mut recv: BoxRecvStream,
    root: Hash,
    entry: Entry,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    static WATCH_IDS: AtomicU64 = AtomicU64::new(0);
    let mut sizes = Vec::with_capacity(entry.blobs.len());
    for h in entry.blobs.iter() {
        let status = inner.store.status(*h).map_err(std::io::Error::other)?;
        let Some(s) = status else {
            return refuse(&inner, send, Refusal::NotFound).await;
        };
        sizes.push(s.size);
    }
    let layout = Layout::new(sizes);
    let state = lock(&inner.superseed)
        .entry(root)
        .or_insert_with(|| {
            Arc::new(Mutex::new(SuperSeed::new(
                layout.pieces(),
                SuperSeedConfig::default(),
            )))
        })
        .clone();
    let id = WATCH_IDS.fetch_add(1, Ordering::Relaxed);
    lock(&state).add_peer(Instant::now(), id);
    let _watcher = Watcher {
        state: state.clone(),
        id,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let back = tokio::spawn(watch_back(conn, root, entry.collection, tx)).abort_handle();
    struct Abort(tokio::task::AbortHandle);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _back = Abort(back);
    let frame_of = |pieces: &[u64], first: bool| -> Response {
        let mut per_blob: std::collections::BTreeMap<u32, RangeSet> = Default::default();
        if first {
            // A watcher must lay the share out before it can use anything: it is told at
            // once of a collection's manifest, or of a raw blob's last group (one group
            // proves the size).
            let n = layout.blob_pieces(0);
            let groups = n.end - n.start;
            let told = if entry.collection {
                0
            } else {
                groups.saturating_sub(1)
            };
            per_blob.insert(0, RangeSet::from_range(told..groups));
        }
        for &p in pieces {
            if let Some((blob, group)) = layout.locate(p) {
                per_blob.entry(blob as u32).or_default().insert(group);
            }
        }
        Response::Availability {
            complete: false,
            blobs: per_blob
                .into_iter()
                .map(|(i, set)| (i, set, layout.blob_size(i as usize)))
                .collect(),
        }
    };
    let first = lock(&state).reveal(Instant::now(), &id);
    write_response(&mut send, &frame_of(&first, true)).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scratch = [0u8; 64];
    let mut back_open = true;
    loop {
        tokio::select! {
            r = recv.read(&mut scratch) => {
                // The watcher closed (or sent something it should not): stop.
                let _ = r;
                let _ = send.finish();
                return Ok(());
            }
            m = rx.recv(), if back_open => match m {
                Some(Back::Has(blobs)) => {
                    let mut pieces = Vec::new();
                    for (index, set, _) in blobs {
                        if (index as usize) >= layout.blobs() {
                            continue;
                        }
                        let base = layout.blob_pieces(index as usize);
                        for r in set.ranges() {
                            let s = base.start.saturating_add(r.start).min(base.end);
                            let e = base.start.saturating_add(r.end).min(base.end);
                            pieces.extend(s..e);
                        }
                    }
                    lock(&state).peer_has(Instant::now(), &id, pieces);
                }
                Some(Back::Complete) => {
                    lock(&state).peer_has(Instant::now(), &id, 0..layout.pieces());
                }
                // It holds everything and said so: nothing more to learn.
                None => back_open = false,
                Some(Back::Failed) => {
                    let all = Response::Availability { complete: true, blobs: Vec::new() };
                    write_response(&mut send, &all).await?;
                    let _ = send.finish();
                    return Ok(());
                }
            },
            _ = tick.tick() => {}
        }
        let pieces = lock(&state).reveal(Instant::now(), &id);
        if !pieces.is_empty() {
            write_response(&mut send, &frame_of(&pieces, false)).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ProviderLimits, get_priority};
    use crate::SchedulerConfig;

    #[test]
    fn a_default_downloader_is_never_at_a_default_providers_request_limit() {
        // Its gets and its watch, with room to spare.
        let opens = SchedulerConfig::default().max_requests_per_peer + 1;
        assert!(ProviderLimits::default().requests_per_peer >= opens + 4);
    }

    #[test]
    fn gets_rank_below_other_streams_and_first_come_first_served() {
        assert_eq!(get_priority(0), -1);
        let mut last = 0;
        for seq in (0..1u32 << 30).step_by(65_521).chain([(1 << 30) - 1]) {
            let p = get_priority(seq);
            assert!(p < last, "get {seq} ranks below every earlier one");
            last = p;
        }
        // The order starts over once the counter passes 2^30 (and when it wraps).
        assert_eq!(get_priority(1 << 30), -1);
        assert_eq!(get_priority(u32::MAX), get_priority((1 << 30) - 1));
    }
}
