//! Positions in the 256-bit XOR key space, distances, and network subnets.

use std::fmt;
use std::net::IpAddr;

use kith_core::NodeId;
use rand::Rng;

/// Length of a [`Key`] in bytes.
pub const KEY_LEN: usize = 32;

/// A position in the DHT's 256-bit key space.
///
/// A node sits at the bytes of its [`NodeId`] ([`Key::from_node`]); records sit at a
/// key derived from their content ([`Key::for_immutable`], [`Key::for_mutable`]) or, for
/// provider records, at the content hash itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; KEY_LEN]);

/// The XOR distance between two keys; compares as a big-endian 256-bit integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; KEY_LEN]);

impl Key {
    /// The position of a node: the raw bytes of its public key.
    pub fn from_node(id: &NodeId) -> Self {
        Self(*id.as_bytes())
    }

    /// The key of an immutable value: the standard BLAKE3 hash of the value.
    pub fn for_immutable(value: &[u8]) -> Self {
        Self(*blake3::hash(value).as_bytes())
    }

    /// The key of a mutable value: BLAKE3 of the public key followed by the salt.
    ///
    /// The public key has a fixed length, so the concatenation is unambiguous.
    pub fn for_mutable(public_key: &NodeId, salt: &[u8]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(public_key.as_bytes());
        h.update(salt);
        Self(*h.finalize().as_bytes())
    }

    /// A key from a slice that must be exactly [`KEY_LEN`] bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }

    /// XOR distance to `other`.
    pub fn distance(&self, other: &Key) -> Distance {
        // A plain indexed loop: this is the hottest function of a simulation, and stays
        // fast even in unoptimised test builds.
        let mut d = [0u8; KEY_LEN];
        let mut i = 0;
        while i < KEY_LEN {
            d[i] = self.0[i] ^ other.0[i];
            i += 1;
        }
        Distance(d)
    }

    /// Number of leading bits `self` and `other` share (256 if equal).
    pub fn common_prefix_len(&self, other: &Key) -> usize {
        for i in 0..KEY_LEN {
            let x = self.0[i] ^ other.0[i];
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        KEY_LEN * 8
    }

    /// A random key sharing exactly `cpl` leading bits with `self` (`cpl` < 256).
    pub fn random_with_prefix<R: Rng + ?Sized>(&self, cpl: usize, rng: &mut R) -> Key {
        let cpl = cpl.min(KEY_LEN * 8 - 1);
        let mut out: [u8; KEY_LEN] = rng.r#gen();
        for bit in 0..=cpl {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            let own = self.0[byte] & mask;
            // Copy the shared prefix, then flip the next bit.
            let want = if bit == cpl { own ^ mask } else { own };
            out[byte] = (out[byte] & !mask) | want;
        }
        Key(out)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl From<blake3::Hash> for Key {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

/// The network a peer's address belongs to, for IP diversity limits: an IPv4 /24 or an
/// IPv6 /48.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Subnet {
    /// The first three octets of an IPv4 address.
    V4([u8; 3]),
    /// The first six octets of an IPv6 address.
    V6([u8; 6]),
}

impl Subnet {
    /// The subnet of `ip`, or `None` if it is exempt from diversity limits
    /// (loopback when `exempt_loopback`, and the unspecified address).
    pub fn of(ip: IpAddr, exempt_loopback: bool) -> Option<Subnet> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if ip.is_unspecified() || (exempt_loopback && ip.is_loopback()) {
            return None;
        }
        Some(match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Subnet::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Subnet::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn prefix_and_distance() {
        let a = Key([0u8; 32]);
        let mut b = [0u8; 32];
        b[1] = 0x10;
        let b = Key(b);
        assert_eq!(a.common_prefix_len(&b), 11);
        assert_eq!(a.common_prefix_len(&a), 256);
        assert!(a.distance(&b) > a.distance(&a));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for cpl in [0, 1, 7, 8, 9, 100, 255] {
            let r = b.random_with_prefix(cpl, &mut rng);
            assert_eq!(b.common_prefix_len(&r), cpl);
        }
    }

    #[test]
    fn subnets() {
        let s = |t: &str| Subnet::of(t.parse().unwrap_or_else(|_| unreachable!()), true);
        assert_eq!(s("192.0.2.7"), s("192.0.2.200"));
        assert_ne!(s("192.0.2.7"), s("192.0.3.7"));
        assert_eq!(s("127.0.0.1"), None);
        assert_eq!(s("::ffff:192.0.2.1"), s("192.0.2.9"));
        assert_eq!(s("2001:db8:1::1"), s("2001:db8:1:ffff::2"));
        assert_ne!(s("2001:db8:1::1"), s("2001:db8:2::1"));
    }
}
