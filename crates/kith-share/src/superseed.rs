//! Super-seeding, sans-IO: an origin that holds a whole share tells each watcher it has
//! only pieces that no watched peer has yet, so every piece leaves the origin about once
//! and the peers trade the rest among themselves.
//!
//! The origin watches its watchers back (the watch protocol, in the other direction), so
//! it knows what each holds. To each peer it reveals, in runs, up to
//! [`SuperSeedConfig::batch`] pieces that the peer lacks, that no watched peer holds and
//! that are not already revealed to a peer still fetching. A revealed piece is reserved
//! for that peer until some peer holds it. A peer whose holdings have not grown for
//! [`SuperSeedConfig::stall`] (nobody else can give it what it lacks: the others left, or
//! cannot reach it) releases its reservations and may be revealed any piece it lacks, so
//! super-seeding never stops a download that plain seeding would finish. Availability
//! only grows, so a reveal is never taken back.

use std::collections::HashMap;
use std::hash::Hash as StdHash;
use std::time::{Duration, Instant};

/// Tuning of [`SuperSeed`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SuperSeedConfig {
    /// Pieces revealed to a peer and not yet held by it, at most. Default 256 (4 MiB).
    pub(crate) batch: u64,
    /// A peer whose holdings have not grown for this long is stalled. Default 2 s.
    pub(crate) stall: Duration,
}

impl Default for SuperSeedConfig {
    fn default() -> Self {
        Self {
            batch: 256,
            stall: Duration::from_secs(2),
        }
    }
}

struct Peer {
    have: Vec<bool>,
    revealed: Vec<bool>,
    held: u64,
    /// Revealed and not yet held.
    outstanding: u64,
    last_growth: Instant,
}

/// The reveal policy of one share's origin.
pub(crate) struct SuperSeed<P> {
    cfg: SuperSeedConfig,
    pieces: u64,
    /// Watched peers holding each piece.
    copies: Vec<u32>,
    /// The peer a piece nobody holds is revealed to, while it fetches it.
    reserved: Vec<Option<P>>,
    peers: HashMap<P, Peer>,
    /// Where the next scan for unrevealed pieces starts: reveals come out as runs.
    cursor: u64,
}

impl<P: Copy + Eq + StdHash> SuperSeed<P> {
    /// A share of `pieces` pieces. A batch is at most an eighth of the share, so that a
    /// small share is spread over several peers too.
    pub(crate) fn new(pieces: u64, mut cfg: SuperSeedConfig) -> Self {
        cfg.batch = cfg.batch.min((pieces / 8).max(4));
        Self {
            cfg,
            pieces,
            copies: vec![0; pieces as usize],
            reserved: vec![None; pieces as usize],
            peers: HashMap::new(),
            cursor: 0,
        }
    }

    /// A peer started watching.
    pub(crate) fn add_peer(&mut self, now: Instant, peer: P) {
        let n = self.pieces as usize;
        self.peers.entry(peer).or_insert_with(|| Peer {
            have: vec![false; n],
            revealed: vec![false; n],
            held: 0,
            outstanding: 0,
            last_growth: now,
        });
    }

    /// A peer stopped watching: what it held no longer counts, its reservations lapse.
    pub(crate) fn remove_peer(&mut self, peer: &P) {
        let Some(p) = self.peers.remove(peer) else {
            return;
        };
        for (i, h) in p.have.iter().enumerate() {
            if *h {
                self.copies[i] = self.copies[i].saturating_sub(1);
            }
        }
        self.release(peer);
    }

    fn release(&mut self, peer: &P) {
        for r in &mut self.reserved {
            if r.as_ref() == Some(peer) {
                *r = None;
            }
        }
    }

    /// `peer` holds `pieces` (out-of-range ones are ignored).
    pub(crate) fn peer_has(
        &mut self,
        now: Instant,
        peer: &P,
        pieces: impl IntoIterator<Item = u64>,
    ) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let mut grew = false;
        for i in pieces {
            let Some(h) = p.have.get_mut(i as usize) else {
                continue;
            };
            if *h {
                continue;
            }
            *h = true;
            grew = true;
            p.held += 1;
            if p.revealed[i as usize] {
                p.outstanding = p.outstanding.saturating_sub(1);
            }
            self.copies[i as usize] += 1;
            self.reserved[i as usize] = None;
        }
        if grew {
            p.last_growth = now;
        }
    }

    /// Pieces to reveal to `peer` now (in increasing order), and marks them revealed.
    pub(crate) fn reveal(&mut self, now: Instant, peer: &P) -> Vec<u64> {
        let Some(p) = self.peers.get(peer) else {
            return Vec::new();
        };
        if p.held == self.pieces {
            return Vec::new();
        }
        let stalled = now.duration_since(p.last_growth) >= self.cfg.stall;
        let want = self.cfg.batch.saturating_sub(p.outstanding);
        if want == 0 {
            return Vec::new();
        }
        if stalled {
            // Its reservations did not help it: let others have them.
            self.release(peer);
        }
        let mut out = Vec::new();
        let n = self.pieces;
        let Some(p) = self.peers.get(peer) else {
            return out;
        };
        for k in 0..n {
            if out.len() as u64 >= want {
                break;
            }
            let i = ((self.cursor + k) % n) as usize;
            if p.have[i] || p.revealed[i] {
                continue;
            }
            let fresh = self.copies[i] == 0 && self.reserved[i].is_none();
            if fresh || stalled {
                out.push(i as u64);
            }
        }
        if let Some(&last) = out.last() {
            self.cursor = (last + 1) % n.max(1);
        }
        let stalled_grant = stalled && !out.is_empty();
        let Some(p) = self.peers.get_mut(peer) else {
            return out;
        };
        for &i in &out {
            p.revealed[i as usize] = true;
            p.outstanding += 1;
            if self.copies[i as usize] == 0 && self.reserved[i as usize].is_none() {
                self.reserved[i as usize] = Some(*peer);
            }
        }
        if stalled_grant {
            // One grant per stall period: it must fetch before it is judged again.
            p.last_growth = now;
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(batch: u64) -> SuperSeedConfig {
        SuperSeedConfig {
            batch,
            stall: Duration::from_secs(2),
        }
    }

    #[test]
    fn each_piece_is_revealed_to_one_peer_until_someone_holds_it() {
        let t = Instant::now();
        let mut s = SuperSeed::new(10, cfg(4));
        s.add_peer(t, 1u8);
        s.add_peer(t, 2u8);
        let a = s.reveal(t, &1);
        let b = s.reveal(t, &2);
        assert_eq!(a, vec![0, 1, 2, 3]);
        assert_eq!(b, vec![4, 5, 6, 7]);
        // Nothing more while both still fetch.
        assert!(s.reveal(t, &1).is_empty());
        // Peer 1 got two of its pieces: two more for it, the last two unrevealed ones.
        s.peer_has(t, &1, [0, 1]);
        assert_eq!(s.reveal(t, &1), vec![8, 9]);
        // Every piece is out; peer 2 learns of nothing new from the origin (it gets
        // 0..4 and 8..10 from peer 1).
        s.peer_has(t, &2, [4]);
        assert!(s.reveal(t, &2).is_empty());
    }

    #[test]
    fn a_stalled_peer_is_revealed_what_it_lacks() {
        let t = Instant::now();
        let mut s = SuperSeed::new(6, cfg(3));
        s.add_peer(t, 1u8);
        s.add_peer(t, 2u8);
        assert_eq!(s.reveal(t, &1), vec![0, 1, 2]);
        s.peer_has(t, &1, [0, 1, 2]);
        assert_eq!(s.reveal(t, &1), vec![3, 4, 5]);
        s.peer_has(t, &1, [3, 4, 5]);
        // Peer 2 gets nothing new: peer 1 holds everything...
        assert!(s.reveal(t, &2).is_empty());
        // ...until it has gained nothing for the stall time (it cannot reach peer 1).
        let later = t + Duration::from_secs(3);
        assert_eq!(s.reveal(later, &2), vec![0, 1, 2]);
        // One grant per stall period.
        assert!(s.reveal(later, &2).is_empty());
        s.peer_has(later, &2, [0, 1, 2]);
        assert!(s.reveal(later, &2).is_empty());
        assert_eq!(s.reveal(later + Duration::from_secs(3), &2), vec![3, 4, 5]);
    }

    #[test]
    fn a_peer_that_leaves_gives_its_pieces_back() {
        let t = Instant::now();
        let mut s = SuperSeed::new(4, cfg(2));
        s.add_peer(t, 1u8);
        s.add_peer(t, 2u8);
        assert_eq!(s.reveal(t, &1), vec![0, 1]);
        s.peer_has(t, &1, [0]);
        assert_eq!(s.reveal(t, &2), vec![2, 3]);
        // Peer 1 leaves: piece 0 has no copy, piece 1 no reservation.
        s.remove_peer(&1);
        s.peer_has(t, &2, [2, 3]);
        assert_eq!(s.reveal(t, &2), vec![0, 1]);
    }

    #[test]
    fn a_complete_peer_is_revealed_nothing() {
        let t = Instant::now();
        let mut s = SuperSeed::new(3, cfg(8));
        s.add_peer(t, 1u8);
        s.peer_has(t, &1, 0..3);
        assert!(s.reveal(t + Duration::from_secs(10), &1).is_empty());
    }
}
