//! Publishing releases to a channel and following it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kith_core::{NodeAddr, SecretKey, Signature};
use kith_overlay::dht::{DhtError, DhtHandle, GetError, Limits, MutableRecord, Record};
use kith_overlay::gossip::Event;
use kith_overlay::gossip::driver::{Gossip, Topic};
use kith_share::{DownloadOptions, Share, ShareError, Ticket};
use kith_store::collection;
use kith_store::{BlobFormat, Hash};
use prost::Message;
use tokio::sync::{broadcast, mpsc};

use crate::install::{InstallError, Installer};
use crate::keys::ChannelKeys;
use crate::metadata::{
    Bundle, ChannelId, FileEntry, MAX_BUNDLE_LEN, MetadataError, Release, ReleaseBody, Verified,
};

/// The salt of a channel's announcement record.
pub const SALT: &[u8] = b"kith/update/1";

pub use crate::wire::{AnnounceMsg, Announcement};

/// Settings of [`Updates`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpdateConfig {
    /// How long a published release stays valid (default 7 days). Followers refuse it
    /// after that: a channel nobody re-signs is detected as frozen.
    pub release_ttl: Duration,
    /// How often a follower re-reads the channel's DHT record (default 60 s).
    pub refresh: Duration,
    /// How long fetching one release (bundle and files) may take (default 10 min).
    pub fetch_timeout: Duration,
    /// How long a health check may run (default 60 s).
    pub health_timeout: Duration,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            release_ttl: Duration::from_secs(7 * 24 * 3600),
            refresh: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(600),
            health_timeout: Duration::from_secs(60),
        }
    }
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Importing the release failed.
    #[error("importing the release: {0}")]
    Import(#[from] ShareError),
    /// The keys cannot sign this (too few release keys).
    #[error("{0}")]
    Keys(String),
    /// The DHT refused the announcement (size caps).
    #[error("announcing: {0}")]
    Announce(String),
}

/// Why an update check failed. Nothing installed changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// No announcement of the channel was found.
    #[error("no release of the channel was found")]
    NotFound,
    /// The announcement is not signed by the channel's announce key, or malformed.
    #[error("bad announcement: {0}")]
    BadAnnouncement(String),
    /// The metadata failed a check (signatures, thresholds, expiry, rollback,
    /// mix-and-match, sizes).
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The release failed its health check and was rolled back.
    #[error("release {version} failed its health check ({reason}); rolled back to {restored}")]
    HealthCheck {
        /// The release that failed.
        version: u64,
        /// What the check said.
        reason: String,
        /// The release running again.
        restored: u64,
    },
    /// This version failed its health check before and is not installed again.
    #[error("release {0} failed its health check before; skipped")]
    Rejected(u64),
    /// Fetching failed.
    #[error("fetching: {0}")]
    Fetch(String),
    /// Installing failed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The DHT failed.
    #[error("DHT: {0}")]
    Dht(String),
}

/// What a successful check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new release is installed and current.
    Installed {
        /// Its version.
        version: u64,
        /// Its label.
        label: String,
    },
    /// The installed release is the newest.
    UpToDate(u64),
}

/// What [`Updates::publish`] did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The release version.
    pub version: u64,
    /// The collection of the release.
    pub collection: Hash,
    /// The bundle blob's hash.
    pub bundle: Hash,
    /// DHT nodes that stored the announcement.
    pub stored_on: usize,
}

/// A program run in the new release's directory after it became current; a non-zero
/// exit (or a timeout) rolls back.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The program (a path relative to the release is resolved in it).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Publishes releases to channels and follows channels.
#[derive(Debug, Clone)]
pub struct Updates {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    share: Share,
    dht: DhtHandle,
    gossip: Option<Gossip>,
    config: UpdateConfig,
    topics: tokio::sync::Mutex<std::collections::HashMap<ChannelId, Topic>>,
}

impl Updates {
    /// The service over a node's share service, DHT and (for pushes) gossip.
    pub fn new(share: Share, dht: DhtHandle, gossip: Option<Gossip>, config: UpdateConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                share,
                dht,
                gossip,
                config,
                topics: tokio::sync::Mutex::new(Default::default()),
            }),
        }
    }

    /// The share service releases travel through.
    pub fn share(&self) -> &Share {
        &self.inner.share
    }

    /// Publishes folder `dir` as release `version` (labelled `label`) of the channel of
    /// `keys`: imports it, signs its metadata with a threshold of release keys, serves
    /// the release and its metadata, stores the announcement in the DHT and pushes it
    /// to followers.
    pub async fn publish(
        &self,
        keys: &ChannelKeys,
        dir: &Path,
        version: u64,
        label: &str,
    ) -> Result<Published, PublishError> {
        let ticket = self.inner.share.add_dir(dir).await?;
        let store = self.inner.share.store().clone();
        let root = ticket.root;
        let manifest =
            tokio::task::spawn_blocking(move || collection::read_manifest(&*store, root))
                .await
                .map_err(|e| PublishError::Keys(e.to_string()))?
                .map_err(|e| PublishError::Import(e.into()))?;
        let body = ReleaseBody {
            channel: keys.channel().root.as_bytes().to_vec(),
            version,
            expires_ms: now_ms() + self.inner.config.release_ttl.as_millis() as u64,
            collection: root.as_bytes().to_vec(),
            files: manifest
                .entries
                .iter()
                .map(|e| FileEntry {
                    path: e.path.clone(),
                    size: e.size,
                    hash: e.hash.clone(),
                    executable: e.executable,
                })
                .collect(),
            label: label.to_owned(),
        };
        let signers = keys.release_signers().map_err(PublishError::Keys)?;
        let bundle = Bundle {
            roots: keys.roots.clone(),
            release: Some(Release::sign(&body, &signers)),
        }
        .encode_to_vec();
        self.publish_bundle(keys.channel(), &keys.announce, version, bundle, root)
            .await
    }

    /// Serves and announces an already-signed bundle (release keys kept offline sign
    /// the bundle elsewhere; the announce key is the only online one).
    pub async fn publish_bundle(
        &self,
        channel: ChannelId,
        announce: &SecretKey,
        version: u64,
        bundle: Vec<u8>,
        collection: Hash,
    ) -> Result<Published, PublishError> {
        let size = bundle.len() as u64;
        let bt = self.inner.share.add_bytes(Bytes::from(bundle)).await?;
        let value = Announcement {
            bundle: bt.root.as_bytes().to_vec(),
            bundle_size: size,
            providers: vec![self.inner.share.local_addr().encode()],
        }
        .encode_to_vec();
        let limits = Limits::default();
        let record =
            MutableRecord::sign(announce, Bytes::from_static(SALT), version, value, &limits)
                .map_err(|e| PublishError::Announce(e.to_string()))?;
        let stored_on = self
            .inner
            .dht
            .put(Record::Mutable(record.clone()), None)
            .await
            .unwrap_or(0);
        if let Some(t) = self.topic(channel, &[]).await {
            let _ = t.broadcast(encode_msg(&record)).await;
        }
        Ok(Published {
            version,
            collection,
            bundle: bt.root,
            stored_on,
        })
    }

    /// The channel's topic handle, joining it (through `peers`) on first use.
    async fn topic(
        &self,
        channel: ChannelId,
        peers: &[NodeAddr],
    ) -> Option<tokio::sync::MappedMutexGuard<'_, Topic>> {
        let gossip = self.inner.gossip.as_ref()?;
        let mut topics = self.inner.topics.lock().await;
        match topics.entry(channel) {
            std::collections::hash_map::Entry::Vacant(v) => {
                let t = gossip.join(channel.topic(), peers.to_vec()).await.ok()?;
                v.insert(t);
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                if !peers.is_empty() {
                    let _ = o.get().add_peers(peers.to_vec()).await;
                }
            }
        }
        tokio::sync::MutexGuard::try_map(topics, |m| m.get_mut(&channel)).ok()
    }

    /// Reads the channel's newest announcement from the DHT.
    pub async fn resolve(&self, channel: ChannelId) -> Result<MutableRecord, UpdateError> {
        match self.inner.dht.get_mutable(channel.announce, SALT).await {
            Ok(m) => Ok(m),
            Err(DhtError::Get(GetError::NotFound)) => Err(UpdateError::NotFound),
            Err(e) => Err(UpdateError::Dht(e.to_string())),
        }
    }

    /// One update check: finds the newest announcement (or takes `record`), fetches and
    /// verifies its bundle, fetches the release from every peer that has it, installs
    /// it atomically, runs `health` (rolling back if it fails), and keeps serving it.
    pub async fn update_once(
        &self,
        channel: ChannelId,
        installer: &Installer,
        record: Option<MutableRecord>,
        health: Option<&HealthCheck>,
    ) -> Result<Outcome, UpdateError> {
        let record = match record {
            Some(r) => r,
            None => self.resolve(channel).await?,
        };
        let installed = installer.current();
        let (ann, providers) = check_announcement(&channel, &record)?;
        if installed.is_some_and(|v| record.seq <= v) {
            return Ok(Outcome::UpToDate(installed.unwrap_or_default()));
        }
        if installer.rejected().contains(&record.seq) {
            return Err(UpdateError::Rejected(record.seq));
        }
        if ann.bundle_size > MAX_BUNDLE_LEN as u64 {
            return Err(
                MetadataError::TooLarge(format!("bundle of {} bytes", ann.bundle_size)).into(),
            );
        }
        let bundle_hash: [u8; 32] = ann
            .bundle
            .as_slice()
            .try_into()
            .map_err(|_| UpdateError::BadAnnouncement("bundle hash is not 32 bytes".into()))?;
        let bundle_hash = Hash::from(bundle_hash);
        // The metadata first: nothing else is fetched unless it checks out.
        let ticket = Ticket::new(bundle_hash, BlobFormat::Raw, providers.clone());
        self.fetch(&ticket).await?;
        let store = self.inner.share.store().clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let size = store
                .status(bundle_hash)
                .ok()
                .flatten()
                .map(|s| s.size)
                .unwrap_or(0);
            if size > MAX_BUNDLE_LEN as u64 {
                return Err(format!("bundle of {size} bytes"));
            }
            store
                .read_range(bundle_hash, 0..size)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| UpdateError::Fetch(e.to_string()))?
        .map_err(UpdateError::Fetch)?;
        let Verified { release, .. } =
            Bundle::decode_checked(&bytes)?.verify(&channel, now_ms(), installed)?;
        if release.body.version != record.seq {
            return Err(UpdateError::BadAnnouncement(format!(
                "announced version {} but the release is {}",
                record.seq, release.body.version
            )));
        }
        let ticket = Ticket::new(release.collection, BlobFormat::Collection, providers);
        self.fetch(&ticket).await?;
        let store = self.inner.share.store().clone();
        let inst = installer.clone();
        let rel = release.clone();
        tokio::task::spawn_blocking(move || inst.install(&*store, &rel, &bytes))
            .await
            .map_err(|e| UpdateError::Fetch(e.to_string()))??;
        let version = release.body.version;
        if let Some(h) = health {
            if let Err(reason) = self.health_check(installer, h).await {
                let inst = installer.clone();
                let restored = tokio::task::spawn_blocking(move || inst.rollback())
                    .await
                    .map_err(|e| UpdateError::Fetch(e.to_string()))??;
                return Err(UpdateError::HealthCheck {
                    version,
                    reason,
                    restored,
                });
            }
        }
        Ok(Outcome::Installed {
            version,
            label: release.body.label,
        })
    }

    async fn fetch(&self, ticket: &Ticket) -> Result<(), UpdateError> {
        let download = self
            .inner
            .share
            .download(ticket, DownloadOptions::default());
        tokio::time::timeout(self.inner.config.fetch_timeout, download.finish())
            .await
            .map_err(|_| UpdateError::Fetch("timed out".into()))?
            .map_err(|e| UpdateError::Fetch(e.to_string()))?;
        Ok(())
    }

    async fn health_check(&self, installer: &Installer, h: &HealthCheck) -> Result<(), String> {
        let cwd = installer.current_path();
        let program = if h.program.is_relative() && cwd.join(&h.program).exists() {
            cwd.join(&h.program)
        } else {
            h.program.clone()
        };
        let run = tokio::process::Command::new(&program)
            .args(&h.args)
            .current_dir(&cwd)
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(self.inner.config.health_timeout, run).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(format!("exited with {s}")),
            Ok(Err(e)) => Err(format!("could not run {}: {e}", program.display())),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Follows `channel` into `installer`'s directory: checks now, then whenever a new
    /// release is pushed on the channel's topic or found in the DHT (every
    /// [`UpdateConfig::refresh`]). Returns a handle whose events say what happened;
    /// dropping it stops following. Installed releases keep being served.
    pub fn follow(
        &self,
        channel: ChannelId,
        installer: Installer,
        health: Option<HealthCheck>,
    ) -> Following {
        let (events, rx) = broadcast::channel(64);
        let this = self.clone();
        let tx = events.clone();
        let task = tokio::spawn(async move {
            this.follow_loop(channel, installer, health, tx).await;
        });
        Following {
            events: rx,
            task,
            sender: events,
        }
    }

    async fn follow_loop(
        &self,
        channel: ChannelId,
        installer: Installer,
        health: Option<HealthCheck>,
        events: broadcast::Sender<FollowEvent>,
    ) {
        let (push_tx, mut push_rx) = mpsc::unbounded_channel::<MutableRecord>();
        let mut joined = false;
        let mut refresh = tokio::time::interval(self.inner.config.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next: Option<MutableRecord> = None;
        loop {
            let record = match next.take() {
                Some(r) => Some(r),
                None => {
                    tokio::select! {
                        _ = refresh.tick() => None,
                        Some(r) = push_rx.recv() => Some(r),
                    }
                }
            };
            let result = match record {
                Some(r) => {
                    self.update_once(channel, &installer, Some(r), health.as_ref())
                        .await
                }
                None => {
                    self.update_once(channel, &installer, None, health.as_ref())
                        .await
                }
            };
            let event = match result {
                Ok(Outcome::Installed { version, label }) => {
                    FollowEvent::Installed { version, label }
                }
                Ok(Outcome::UpToDate(v)) => FollowEvent::UpToDate(v),
                Err(UpdateError::NotFound) => FollowEvent::NotFound,
                Err(e) => FollowEvent::Refused(e.to_string()),
            };
            let _ = events.send(event);
            // Join the topic once a release is known: its providers are the way in.
            if !joined {
                if let Ok(r) = self.resolve(channel).await {
                    let peers = check_announcement(&channel, &r)
                        .map(|(_, p)| p)
                        .unwrap_or_default();
                    if let Some(gossip) = &self.inner.gossip {
                        if let Ok(mut topic) = gossip.join(channel.topic(), peers).await {
                            joined = true;
                            let tx = push_tx.clone();
                            tokio::spawn(async move {
                                while let Some(ev) = topic.next_event().await {
                                    if let Event::Received { payload, .. } = ev {
                                        if let Some(r) = decode_msg(&channel, &payload) {
                                            if tx.send(r).is_err() {
                                                return;
                                            }
                                        }
                                    }
                                }
                            });
                        }
                    }
                }
            }
            // Drain pushes that arrived meanwhile: only the newest matters.
            while let Ok(r) = push_rx.try_recv() {
                if next.as_ref().is_none_or(|n| r.seq > n.seq) {
                    next = Some(r);
                }
            }
        }
    }
}

/// A running follower; drop it to stop.
#[derive(Debug)]
pub struct Following {
    events: broadcast::Receiver<FollowEvent>,
    sender: broadcast::Sender<FollowEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Following {
    /// The next event.
    pub async fn next_event(&mut self) -> Option<FollowEvent> {
        loop {
            match self.events.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Another receiver of the events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FollowEvent> {
        self.sender.subscribe()
    }
}

/// What a follower did on one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    /// A release was installed and is current.
    Installed {
        /// Its version.
        version: u64,
        /// Its label.
        label: String,
    },
    /// Nothing newer than the installed release.
    UpToDate(u64),
    /// No release of the channel was found yet.
    NotFound,
    /// A release was refused (the error says why); nothing installed changed.
    Refused(String),
}

/// Checks an announcement record against the channel: key, salt, signature; returns
/// its value and provider hints.
fn check_announcement(
    channel: &ChannelId,
    record: &MutableRecord,
) -> Result<(Announcement, Vec<NodeAddr>), UpdateError> {
    if record.public_key != channel.announce || record.salt.as_ref() != SALT {
        return Err(UpdateError::BadAnnouncement(
            "not this channel's announce key".into(),
        ));
    }
    record
        .verify(&Limits::default())
        .map_err(|e| UpdateError::BadAnnouncement(e.to_string()))?;
    let ann = Announcement::decode(record.value.as_ref())
        .map_err(|e| UpdateError::BadAnnouncement(e.to_string()))?;
    let providers = ann
        .providers
        .iter()
        .take(8)
        .filter_map(|b| NodeAddr::decode(b).ok())
        .collect();
    Ok((ann, providers))
}

fn encode_msg(r: &MutableRecord) -> Vec<u8> {
    AnnounceMsg {
        seq: r.seq,
        value: r.value.to_vec(),
        signature: r.signature.0.to_vec(),
    }
    .encode_to_vec()
}

fn decode_msg(channel: &ChannelId, payload: &[u8]) -> Option<MutableRecord> {
    if payload.len() > 2048 {
        return None;
    }
    let m = AnnounceMsg::decode(payload).ok()?;
    let sig: [u8; 64] = m.signature.as_slice().try_into().ok()?;
    let r = MutableRecord {
        public_key: channel.announce,
        salt: Bytes::from_static(SALT),
        seq: m.seq,
        value: m.value.into(),
        signature: Signature(sig),
    };
    r.verify(&Limits::default()).ok()?;
    Some(r)
}
