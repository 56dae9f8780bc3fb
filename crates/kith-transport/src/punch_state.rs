//! Per-connection hole-punching state ([`PunchState`], [`HolePunch`]) and the peer's
//! `kith/paths/1` message it keeps ([`PathsMsg`], its codec).
//!
//! A leaf module: [`QuicConnection`](crate::QuicConnection) holds the state and `punch`
//! drives it, so neither `conn` nor this module depends on `punch`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;

use kith_core::{NodeAddr, NodeId};
use tokio::sync::watch;

use crate::paths::is_synthetic;
use crate::stun::NatKind;

/// Most candidate addresses sent to a peer.
pub(crate) const MAX_ADVERTISED: usize = 8;

/// What hole punching is doing for a relayed connection, or why it stays relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolePunch {
    /// A connection to a real address (nothing to punch), or nothing known yet.
    Idle,
    /// Probing the peer's candidates (the usual case; it ends on a direct path or keeps
    /// probing slowly while relayed).
    Probing,
    /// Birthday-paradox probing: one side's NAT maps endpoint-dependently.
    Birthday,
    /// Both sides' NATs map endpoint-dependently: no direct address can be predicted, so
    /// the connection stays relayed (it still probes slowly, in case a NAT changes).
    BothEndpointDependent,
}

/// The peer's `kith/paths/1` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathsMsg {
    /// Key our probes to the peer are authenticated with.
    pub(crate) key: [u8; 32],
    /// Addresses the peer may be reached at.
    pub(crate) candidates: Vec<SocketAddr>,
    /// How many of `candidates` (the first ones) are reflexive: addresses observers
    /// outside its NAT saw, rather than addresses bound on the peer's host.
    pub(crate) reflexive: usize,
    /// The peer's view of its own NAT.
    pub(crate) nat: NatKind,
}

fn nat_to_byte(n: NatKind) -> u8 {
    match n {
        NatKind::Unknown => 0,
        NatKind::Public => 1,
        NatKind::EndpointIndependent => 2,
        NatKind::EndpointDependent => 3,
    }
}

fn nat_from_byte(b: u8) -> NatKind {
    match b {
        1 => NatKind::Public,
        2 => NatKind::EndpointIndependent,
        3 => NatKind::EndpointDependent,
        // Unknown values (a newer peer) carry no information.
        _ => NatKind::Unknown,
    }
}

impl PathsMsg {
    /// `key | count | (len | NodeAddr naming `sender`)* | nat | reflexive`.
    pub(crate) fn encode(&self, sender: NodeId) -> Vec<u8> {
        let cands = &self.candidates[..self.candidates.len().min(MAX_ADVERTISED)];
        let mut msg = Vec::with_capacity(32 + 1 + cands.len() * 24 + 2);
        msg.extend_from_slice(&self.key);
        msg.push(cands.len() as u8);
        for c in cands {
            let enc = NodeAddr::new(sender).with_direct([*c]).encode();
            msg.push(enc.len() as u8);
            msg.extend_from_slice(&enc);
        }
        msg.push(nat_to_byte(self.nat));
        msg.push(self.reflexive.min(cands.len()) as u8);
        msg
    }
}

/// Parses a `kith/paths/1` message (see [`PathsMsg::encode`]); the two trailing bytes
/// may be missing (an older peer), then the NAT kind is unknown and every candidate is
/// taken as possibly reflexive.
pub(crate) fn parse_paths(buf: &[u8]) -> Option<PathsMsg> {
    let key: [u8; 32] = buf.get(..32)?.try_into().ok()?;
    let count = *buf.get(32)? as usize;
    if count > MAX_ADVERTISED {
        return None;
    }
    let mut rest = buf.get(33..)?;
    let mut candidates = Vec::with_capacity(count);
    for _ in 0..count {
        let len = *rest.first()? as usize;
        let enc = rest.get(1..1 + len)?;
        // Candidates are carried as NodeAddrs only to reuse one bounded decoder; the id
        // is not otherwise used.
        let addr = NodeAddr::decode(enc).ok()?;
        candidates.extend(addr.direct.into_iter().filter(|a| !is_synthetic(a)).take(1));
        rest = &rest[1 + len..];
    }
    let (nat, reflexive) = match rest {
        [] => (NatKind::Unknown, candidates.len()),
        [n, r] => (nat_from_byte(*n), (*r as usize).min(candidates.len())),
        _ => return None,
    };
    Some(PathsMsg {
        key,
        candidates,
        reflexive,
        nat,
    })
}

/// Per-connection hole-punching state shared by the prober and the message handler.
#[derive(Debug)]
pub(crate) struct PunchState {
    pub(crate) status: watch::Sender<HolePunch>,
    /// The peer's message, once it arrived.
    pub(crate) peer: std::sync::Mutex<Option<PathsMsg>>,
    /// Birthday attempts started.
    pub(crate) attempts: std::sync::atomic::AtomicU32,
    /// Set with a `path_kick`: go back to fast probe rounds.
    pub(crate) fast: AtomicBool,
    /// Set with a `path_kick`: send our `kith/paths/1` message again (our network
    /// changed).
    pub(crate) reannounce: AtomicBool,
    /// Stream index + 1 of the newest `kith/paths/1` message applied (0: none), so a
    /// stale message that completes after a newer one is ignored.
    pub(crate) applied: std::sync::atomic::AtomicU64,
    /// The peer's "mappings open" signal came before its `kith/paths/1` message (the
    /// two travel on separate streams): act on it once the message is in.
    pub(crate) signal_early: AtomicBool,
}

impl PunchState {
    pub(crate) fn new() -> Self {
        Self {
            status: watch::channel(HolePunch::Idle).0,
            peer: std::sync::Mutex::new(None),
            attempts: std::sync::atomic::AtomicU32::new(0),
            fast: AtomicBool::new(false),
            reannounce: AtomicBool::new(false),
            applied: std::sync::atomic::AtomicU64::new(0),
            signal_early: AtomicBool::new(false),
        }
    }

    pub(crate) fn set(&self, s: HolePunch) {
        self.status.send_if_modified(|cur| {
            let changed = *cur != s;
            *cur = s;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn message_round_trips_with_nat_and_reflexive_count() {
        let id = kith_core::SecretKey::from_bytes(&[3; 32]).node_id();
        let m = PathsMsg {
            key: [9; 32],
            candidates: vec![sa("203.0.113.17:4000"), sa("192.0.2.10:5000")],
            reflexive: 1,
            nat: NatKind::EndpointDependent,
        };
        assert_eq!(parse_paths(&m.encode(id)), Some(m.clone()));
        // An older peer's message (no trailer) parses with an unknown NAT.
        let enc = m.encode(id);
        let old = parse_paths(&enc[..enc.len() - 2]).unwrap_or_else(|| panic!("parse"));
        assert_eq!(old.nat, NatKind::Unknown);
        assert_eq!(old.reflexive, 2);
        // One stray byte is malformed.
        assert_eq!(parse_paths(&enc[..enc.len() - 1]), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Some(m) = parse_paths(&data) {
                prop_assert!(m.candidates.len() <= MAX_ADVERTISED);
                prop_assert!(m.reflexive <= m.candidates.len());
            }
        }
    }
}
