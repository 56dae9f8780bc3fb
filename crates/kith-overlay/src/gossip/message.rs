//! Gossip messages: the domain types the [`TopicCore`](super::TopicCore) handles, their
//! protobuf wire form (schema: `docs/proto/gossip.proto`), and the checked conversion.
//!
//! Every message names its 32-byte [`TopicId`]; one stream per peer carries the messages
//! of all topics. Decoding never trusts the peer: lengths are capped before allocation,
//! lists are bounded, ids and signatures are checked for shape (signatures are verified
//! by the core, which knows the topic it expects).

use bytes::Bytes;
use kith_core::{NodeAddr, NodeId, SecretKey, Signature, SignatureError};
use prost::Message as _;

/// Largest application payload the wire format carries (the configured
/// [`Config::max_message_size`](super::Config::max_message_size) applies below it).
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// Largest encoded gossip message: the payload cap plus room for the envelope.
pub const MAX_MESSAGE_LEN: usize = MAX_PAYLOAD_LEN + 4096;
/// Most node addresses in one shuffle or shuffle reply.
pub const MAX_SHUFFLE_NODES: usize = 32;
/// Most announcements in one `IHave`.
pub const MAX_IHAVE: usize = 512;
/// Longest random walk a peer may ask for (join and shuffle TTLs are clamped to it).
pub const MAX_WALK_TTL: u8 = 16;

/// Domain-separation prefix of the bytes an author signs (and that are hashed into the
/// [`MessageId`]).
pub const SIGNING_DOMAIN: &[u8] = b"kith-gossip-v1/broadcast\0";

/// A 32-byte topic identifier. Peers in one topic form one overlay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub [u8; 32]);

impl TopicId {
    /// The topic id for a human-readable name: BLAKE3 of a domain prefix and the name.
    pub fn from_name(name: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"kith-gossip-v1/topic\0");
        h.update(name.as_bytes());
        Self(*h.finalize().as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The DHT key under which members of this topic announce themselves as providers
    /// (so a newcomer can find bootstrap peers with a get-providers lookup).
    pub fn dht_key(&self) -> crate::dht::Key {
        let mut h = blake3::Hasher::new();
        h.update(b"kith-gossip-v1/dht-provider\0");
        h.update(&self.0);
        crate::dht::Key(*h.finalize().as_bytes())
    }
}

impl std::fmt::Debug for TopicId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TopicId({})", short_hex(&self.0))
    }
}

/// Identifier of a broadcast: BLAKE3 of the bytes its author signed, so it is computed
/// by every receiver and never taken from the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 32]);

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", short_hex(&self.0))
    }
}

fn short_hex(b: &[u8; 32]) -> String {
    b[..5].iter().map(|x| format!("{x:02x}")).collect()
}

/// How far a broadcast travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// To every member of the topic (forwarded along the broadcast tree).
    Swarm,
    /// To the sender's direct neighbours only; receivers do not forward it.
    Neighbors,
}

/// One gossip message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic the message belongs to.
    pub topic: TopicId,
    /// What it says.
    pub body: Body,
}

/// Membership (HyParView) and broadcast (Plumtree) messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A newcomer asks a contact to admit it (the contact starts a forward-join walk).
    Join {
        /// The newcomer; its id must be the authenticated sender.
        sender: NodeAddr,
    },
    /// A random walk that lets the newcomer into active and passive views on its way.
    ForwardJoin {
        /// The newcomer.
        joiner: NodeAddr,
        /// Remaining hops.
        ttl: u8,
    },
    /// Asks the receiver to make the sender an active neighbour.
    Neighbor {
        /// The sender; its id must be the authenticated sender.
        sender: NodeAddr,
        /// High priority (the sender has few neighbours left, or was admitted by a
        /// join): the receiver must accept.
        high_priority: bool,
        /// The sender's number for this request, echoed in the reply (0: the sender
        /// does not wait for the reply).
        request: u64,
    },
    /// Answer to [`Body::Neighbor`].
    NeighborReply {
        /// Whether the receiver made the sender an active neighbour.
        accepted: bool,
        /// The `request` number of the [`Body::Neighbor`] answered.
        request: u64,
    },
    /// The sender removed the receiver from its active view.
    Disconnect {
        /// The sender stays online (the receiver may keep it as a passive peer).
        alive: bool,
    },
    /// A random walk exchanging samples of the views.
    Shuffle {
        /// The node that started the shuffle (the reply goes straight to it).
        origin: NodeAddr,
        /// Remaining hops.
        ttl: u8,
        /// Sample of the origin's views, the origin included.
        nodes: Vec<NodeAddr>,
    },
    /// The sample sent back to the origin of a shuffle.
    ShuffleReply {
        /// Sample of the replier's passive view.
        nodes: Vec<NodeAddr>,
    },
    /// A broadcast payload, pushed eagerly (or in answer to a graft).
    Gossip(Gossip),
    /// Lazy announcements of broadcasts the sender has.
    IHave(Vec<IHaveEntry>),
    /// Asks the receiver to push eagerly to the sender again (and, if `id` is set, to
    /// send that message now).
    Graft {
        /// The missing message, if any.
        id: Option<MessageId>,
        /// Hop count at which the sender learned of it.
        round: u32,
    },
    /// Asks the receiver to stop pushing eagerly to the sender (announce lazily instead).
    Prune,
}

/// A signed broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gossip {
    /// The node that wrote the payload and signed it.
    pub author: NodeId,
    /// Chosen by the author so that equal payloads get distinct ids.
    pub nonce: u64,
    /// How far the broadcast travels.
    pub scope: Scope,
    /// The application's bytes.
    pub payload: Bytes,
    /// The author's Ed25519 signature over [`Gossip::signed_bytes`].
    pub signature: Signature,
    /// Hops from the author (0 when the author sends it). Not signed.
    pub round: u32,
}

impl Gossip {
    /// Writes and signs a new broadcast.
    pub fn sign(
        key: &SecretKey,
        topic: &TopicId,
        nonce: u64,
        scope: Scope,
        payload: Bytes,
    ) -> Self {
        let author = key.node_id();
        let signature = key.sign(&signed_bytes(topic, &author, nonce, scope, &payload));
        Self {
            author,
            nonce,
            scope,
            payload,
            signature,
            round: 0,
        }
    }

    /// The bytes the author signs: a domain prefix, the topic, the author, the nonce,
    /// the scope and the payload.
    pub fn signed_bytes(&self, topic: &TopicId) -> Vec<u8> {
        signed_bytes(topic, &self.author, self.nonce, self.scope, &self.payload)
    }

    /// Checks the author's signature.
    pub fn verify(&self, topic: &TopicId) -> Result<(), SignatureError> {
        self.author
            .verify(&self.signed_bytes(topic), &self.signature)
    }

    /// The message id: BLAKE3 of [`Gossip::signed_bytes`].
    pub fn id(&self, topic: &TopicId) -> MessageId {
        MessageId(*blake3::hash(&self.signed_bytes(topic)).as_bytes())
    }
}

fn signed_bytes(
    topic: &TopicId,
    author: &NodeId,
    nonce: u64,
    scope: Scope,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + 32 + 32 + 8 + 1 + payload.len());
    out.extend_from_slice(SIGNING_DOMAIN);
    out.extend_from_slice(&topic.0);
    out.extend_from_slice(author.as_bytes());
    out.extend_from_slice(&nonce.to_le_bytes());
    out.push(match scope {
        Scope::Swarm => 0,
        Scope::Neighbors => 1,
    });
    out.extend_from_slice(payload);
    out
}

/// One lazy announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IHaveEntry {
    /// The broadcast.
    pub id: MessageId,
    /// Hop count at which the announcer received it.
    pub round: u32,
}

/// Error converting wire bytes into a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The encoded message is longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes exceeds {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// The bytes are not valid protobuf for this schema.
    #[error("message does not decode: {0}")]
    Decode(String),
    /// The message has no body, or a required field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A topic id, message id or signature has the wrong length.
    #[error("invalid length of {0}")]
    BadLength(&'static str),
    /// A node id or node address is malformed.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A list has more entries than allowed.
    #[error("too many entries in {0}")]
    TooMany(&'static str),
    /// The payload exceeds [`MAX_PAYLOAD_LEN`].
    #[error("payload of {0} bytes exceeds {MAX_PAYLOAD_LEN}")]
    PayloadTooLarge(usize),
    /// A walk TTL exceeds [`MAX_WALK_TTL`].
    #[error("walk ttl {0} exceeds {MAX_WALK_TTL}")]
    TtlTooLarge(u32),
    /// An enum field has an unknown value.
    #[error("unknown enum value in {0}")]
    UnknownEnum(&'static str),
}

/// The protobuf messages, generated by `cargo xtask codegen` from `docs/proto/gossip.proto`
/// (package `kith.gossip`).
///
/// Use [`Message::decode`] / [`Message::from_wire`] to turn them into validated domain
/// types; the raw structs trust nothing.
#[path = "../gen/kith.gossip.rs"]
#[rustfmt::skip]
pub mod wire;

use wire::gossip_message::Body as W;

fn addr_to(a: &NodeAddr) -> Bytes {
    a.encode().into()
}

fn addr_from(b: &[u8]) -> Result<NodeAddr, MessageError> {
    NodeAddr::decode(b).map_err(|_| MessageError::Invalid("node address"))
}

fn addrs_from(v: &[Bytes], what: &'static str) -> Result<Vec<NodeAddr>, MessageError> {
    if v.len() > MAX_SHUFFLE_NODES {
        return Err(MessageError::TooMany(what));
    }
    v.iter().map(|b| addr_from(b)).collect()
}

fn ttl_from(t: u32) -> Result<u8, MessageError> {
    if t > u32::from(MAX_WALK_TTL) {
        return Err(MessageError::TtlTooLarge(t));
    }
    Ok(t as u8)
}

fn bytes32(b: &[u8], what: &'static str) -> Result<[u8; 32], MessageError> {
    b.try_into().map_err(|_| MessageError::BadLength(what))
}

impl Message {
    /// The protobuf form.
    pub fn to_wire(&self) -> wire::GossipMessage {
        let body = match &self.body {
            Body::Join { sender } => W::Join(wire::JoinMsg {
                sender: addr_to(sender),
            }),
            Body::ForwardJoin { joiner, ttl } => W::ForwardJoin(wire::ForwardJoinMsg {
                joiner: addr_to(joiner),
                ttl: u32::from(*ttl),
            }),
            Body::Neighbor {
                sender,
                high_priority,
                request,
            } => W::Neighbor(wire::NeighborMsg {
                sender: addr_to(sender),
                high_priority: *high_priority,
                request: *request,
            }),
            Body::NeighborReply { accepted, request } => W::NeighborReply(wire::NeighborReplyMsg {
                accepted: *accepted,
                request: *request,
            }),
            Body::Disconnect { alive } => W::Disconnect(wire::DisconnectMsg { alive: *alive }),
            Body::Shuffle { origin, ttl, nodes } => W::Shuffle(wire::ShuffleMsg {
                origin: addr_to(origin),
                ttl: u32::from(*ttl),
                nodes: nodes.iter().map(addr_to).collect(),
            }),
            Body::ShuffleReply { nodes } => W::ShuffleReply(wire::ShuffleReplyMsg {
                nodes: nodes.iter().map(addr_to).collect(),
            }),
            Body::Gossip(g) => W::Gossip(wire::GossipMsg {
                author: Bytes::copy_from_slice(g.author.as_bytes()),
                nonce: g.nonce,
                scope: match g.scope {
                    Scope::Swarm => 0,
                    Scope::Neighbors => 1,
                },
                payload: g.payload.clone(),
                signature: Bytes::copy_from_slice(&g.signature.0),
                round: g.round,
            }),
            Body::IHave(entries) => W::Ihave(wire::IHaveMsg {
                entries: entries
                    .iter()
                    .map(|e| wire::IHaveEntryMsg {
                        id: Bytes::copy_from_slice(&e.id.0),
                        round: e.round,
                    })
                    .collect(),
            }),
            Body::Graft { id, round } => W::Graft(wire::GraftMsg {
                id: id.map(|i| Bytes::copy_from_slice(&i.0)).unwrap_or_default(),
                round: *round,
            }),
            Body::Prune => W::Prune(wire::Empty {}),
        };
        wire::GossipMessage {
            topic: Bytes::copy_from_slice(&self.topic.0),
            body: Some(body),
        }
    }

    /// Validates a protobuf message and converts it to the domain type.
    pub fn from_wire(m: &wire::GossipMessage) -> Result<Self, MessageError> {
        let topic = TopicId(bytes32(&m.topic, "topic")?);
        let body = match m.body.as_ref().ok_or(MessageError::Missing("body"))? {
            W::Join(j) => Body::Join {
                sender: addr_from(&j.sender)?,
            },
            W::ForwardJoin(f) => Body::ForwardJoin {
                joiner: addr_from(&f.joiner)?,
                ttl: ttl_from(f.ttl)?,
            },
            W::Neighbor(n) => Body::Neighbor {
                sender: addr_from(&n.sender)?,
                high_priority: n.high_priority,
                request: n.request,
            },
            W::NeighborReply(r) => Body::NeighborReply {
                accepted: r.accepted,
                request: r.request,
            },
            W::Disconnect(d) => Body::Disconnect { alive: d.alive },
            W::Shuffle(s) => Body::Shuffle {
                origin: addr_from(&s.origin)?,
                ttl: ttl_from(s.ttl)?,
                nodes: addrs_from(&s.nodes, "shuffle")?,
            },
            W::ShuffleReply(s) => Body::ShuffleReply {
                nodes: addrs_from(&s.nodes, "shuffle reply")?,
            },
            W::Gossip(g) => {
                if g.payload.len() > MAX_PAYLOAD_LEN {
                    return Err(MessageError::PayloadTooLarge(g.payload.len()));
                }
                let author = NodeId::try_from_slice(&g.author)
                    .map_err(|_| MessageError::Invalid("author"))?;
                let sig: [u8; 64] = g.signature[..]
                    .try_into()
                    .map_err(|_| MessageError::BadLength("signature"))?;
                let scope = match g.scope {
                    0 => Scope::Swarm,
                    1 => Scope::Neighbors,
                    _ => return Err(MessageError::UnknownEnum("scope")),
                };
                Body::Gossip(Gossip {
                    author,
                    nonce: g.nonce,
                    scope,
                    payload: g.payload.clone(),
                    signature: Signature(sig),
                    round: g.round,
                })
            }
            W::Ihave(h) => {
                if h.entries.len() > MAX_IHAVE {
                    return Err(MessageError::TooMany("ihave"));
                }
                Body::IHave(
                    h.entries
                        .iter()
                        .map(|e| {
                            Ok(IHaveEntry {
                                id: MessageId(bytes32(&e.id, "message id")?),
                                round: e.round,
                            })
                        })
                        .collect::<Result<_, MessageError>>()?,
                )
            }
            W::Graft(g) => Body::Graft {
                id: if g.id.is_empty() {
                    None
                } else {
                    Some(MessageId(bytes32(&g.id, "message id")?))
                },
                round: g.round,
            },
            W::Prune(_) => Body::Prune,
        };
        Ok(Self { topic, body })
    }

    /// Encodes to protobuf bytes (without a frame prefix).
    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    /// Length of [`Message::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        self.to_wire().encoded_len()
    }

    /// Decodes and validates protobuf bytes (one frame body).
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLong(bytes.len()));
        }
        // Lists are counted before prost materialises them: an empty entry costs a peer
        // two bytes and us a whole value.
        for (body, field, max, what) in [
            (15, 3, MAX_SHUFFLE_NODES, "shuffle nodes"),
            (16, 1, MAX_SHUFFLE_NODES, "shuffle nodes"),
            (21, 1, MAX_IHAVE, "ihave entries"),
        ] {
            let n = kith_core::scan::count(bytes, &[body], field)
                .map_err(|e| MessageError::Decode(e.to_string()))?;
            if n > max {
                return Err(MessageError::TooMany(what));
            }
        }
        let m =
            wire::GossipMessage::decode(bytes).map_err(|e| MessageError::Decode(e.to_string()))?;
        Self::from_wire(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sk(n: u64) -> SecretKey {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_le_bytes());
        SecretKey::from_bytes(&seed)
    }

    fn arb_addr() -> impl Strategy<Value = NodeAddr> {
        (
            any::<u64>(),
            proptest::collection::vec(any::<(u32, u16)>(), 0..3),
        )
            .prop_map(|(n, a)| {
                NodeAddr::new(sk(n).node_id()).with_direct(a.into_iter().map(|(ip, port)| {
                    std::net::SocketAddr::new(std::net::Ipv4Addr::from(ip).into(), port)
                }))
            })
    }

    fn arb_id() -> impl Strategy<Value = MessageId> {
        any::<[u8; 32]>().prop_map(MessageId)
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        let addrs = || proptest::collection::vec(arb_addr(), 0..MAX_SHUFFLE_NODES);
        prop_oneof![
            arb_addr().prop_map(|sender| Body::Join { sender }),
            (arb_addr(), 0..=MAX_WALK_TTL)
                .prop_map(|(joiner, ttl)| Body::ForwardJoin { joiner, ttl }),
            (arb_addr(), any::<bool>(), any::<u64>()).prop_map(
                |(sender, high_priority, request)| Body::Neighbor {
                    sender,
                    high_priority,
                    request
                }
            ),
            (any::<bool>(), any::<u64>())
                .prop_map(|(accepted, request)| Body::NeighborReply { accepted, request }),
            any::<bool>().prop_map(|alive| Body::Disconnect { alive }),
            (arb_addr(), 0..=MAX_WALK_TTL, addrs())
                .prop_map(|(origin, ttl, nodes)| Body::Shuffle { origin, ttl, nodes }),
            addrs().prop_map(|nodes| Body::ShuffleReply { nodes }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..200),
                any::<u32>()
            )
                .prop_map(|(k, nonce, nb, payload, round)| {
                    let scope = if nb { Scope::Neighbors } else { Scope::Swarm };
                    let mut g =
                        Gossip::sign(&sk(k), &TopicId([1; 32]), nonce, scope, payload.into());
                    g.round = round;
                    Body::Gossip(g)
                }),
            proptest::collection::vec((arb_id(), any::<u32>()), 0..20).prop_map(|v| Body::IHave(
                v.into_iter()
                    .map(|(id, round)| IHaveEntry { id, round })
                    .collect()
            )),
            (proptest::option::of(arb_id()), any::<u32>())
                .prop_map(|(id, round)| Body::Graft { id, round }),
            Just(Body::Prune),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (any::<[u8; 32]>(), arb_body()).prop_map(|(t, body)| Message {
            topic: TopicId(t),
            body,
        })
    }

    #[test]
    fn rejects_bad_fields() {
        let ok = Message {
            topic: TopicId([3; 32]),
            body: Body::Prune,
        };
        let mut w = ok.to_wire();
        w.topic = Bytes::from_static(&[1; 31]);
        assert_eq!(
            Message::from_wire(&w),
            Err(MessageError::BadLength("topic"))
        );
        let mut w = ok.to_wire();
        w.body = None;
        assert_eq!(Message::from_wire(&w), Err(MessageError::Missing("body")));
        let mut w = ok.to_wire();
        w.body = Some(W::ForwardJoin(wire::ForwardJoinMsg {
            joiner: addr_to(&NodeAddr::new(sk(1).node_id())),
            ttl: 17,
        }));
        assert_eq!(Message::from_wire(&w), Err(MessageError::TtlTooLarge(17)));
        w.body = Some(W::Join(wire::JoinMsg {
            sender: Bytes::from_static(b"junk"),
        }));
        assert_eq!(
            Message::from_wire(&w),
            Err(MessageError::Invalid("node address"))
        );
        w.body = Some(W::ShuffleReply(wire::ShuffleReplyMsg {
            nodes: vec![addr_to(&NodeAddr::new(sk(1).node_id())); MAX_SHUFFLE_NODES + 1],
        }));
        assert_eq!(
            Message::from_wire(&w),
            Err(MessageError::TooMany("shuffle reply"))
        );
        w.body = Some(W::Ihave(wire::IHaveMsg {
            entries: vec![wire::IHaveEntryMsg::default(); MAX_IHAVE + 1],
        }));
        assert_eq!(Message::from_wire(&w), Err(MessageError::TooMany("ihave")));
        w.body = Some(W::Ihave(wire::IHaveMsg {
            entries: vec![wire::IHaveEntryMsg::default()],
        }));
        assert_eq!(
            Message::from_wire(&w),
            Err(MessageError::BadLength("message id"))
        );
        w.body = Some(W::Graft(wire::GraftMsg {
            id: Bytes::from_static(&[0; 5]),
            round: 0,
        }));
        assert_eq!(
            Message::from_wire(&w),
            Err(MessageError::BadLength("message id"))
        );
        let g = Gossip::sign(&sk(2), &ok.topic, 1, Scope::Swarm, Bytes::from_static(b"x"));
        let good = wire::GossipMsg {
            author: Bytes::copy_from_slice(g.author.as_bytes()),
            nonce: 1,
            scope: 0,
            payload: g.payload.clone(),
            signature: Bytes::copy_from_slice(&g.signature.0),
            round: 0,
        };
        let cases = [
            (
                wire::GossipMsg {
                    scope: 2,
                    ..good.clone()
                },
                MessageError::UnknownEnum("scope"),
            ),
            (
                wire::GossipMsg {
                    signature: Bytes::from_static(&[0; 63]),
                    ..good.clone()
                },
                MessageError::BadLength("signature"),
            ),
            (
                wire::GossipMsg {
                    author: Bytes::from_static(&[0; 31]),
                    ..good.clone()
                },
                MessageError::Invalid("author"),
            ),
            (
                wire::GossipMsg {
                    payload: vec![0u8; MAX_PAYLOAD_LEN + 1].into(),
                    ..good.clone()
                },
                MessageError::PayloadTooLarge(MAX_PAYLOAD_LEN + 1),
            ),
        ];
        for (m, e) in cases {
            w.body = Some(W::Gossip(m));
            assert_eq!(Message::from_wire(&w), Err(e));
        }
        w.body = Some(W::Gossip(good));
        assert!(Message::from_wire(&w).is_ok());
        assert!(matches!(
            Message::decode(&[0xff; 3]),
            Err(MessageError::Decode(_))
        ));
        assert_eq!(
            Message::decode(&vec![0; MAX_MESSAGE_LEN + 1]),
            Err(MessageError::TooLong(MAX_MESSAGE_LEN + 1))
        );
    }

    #[test]
    fn signatures_are_bound_to_topic_author_and_payload() {
        let t = TopicId::from_name("room");
        let g = Gossip::sign(&sk(1), &t, 7, Scope::Swarm, Bytes::from_static(b"hi"));
        assert!(g.verify(&t).is_ok());
        assert!(g.verify(&TopicId::from_name("other")).is_err());
        let mut forged = g.clone();
        forged.payload = Bytes::from_static(b"ho");
        assert!(forged.verify(&t).is_err());
        let mut forged = g.clone();
        forged.author = sk(2).node_id();
        assert!(forged.verify(&t).is_err());
        let mut scoped = g.clone();
        scoped.scope = Scope::Neighbors;
        assert!(scoped.verify(&t).is_err());
        // The round is not signed: forwarders change it.
        let mut hop = g.clone();
        hop.round = 5;
        assert!(hop.verify(&t).is_ok());
        assert_eq!(hop.id(&t), g.id(&t));
        // The signed bytes are domain-separated from any other kith signature.
        assert!(g.signed_bytes(&t).starts_with(SIGNING_DOMAIN));
    }

    proptest! {
        #[test]
        fn round_trip(m in arb_message()) {
            let bytes = m.encode();
            prop_assert_eq!(bytes.len(), m.encoded_len());
            prop_assert_eq!(Message::decode(&bytes), Ok(m));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Message::decode(&data);
        }

        #[test]
        fn mutated_messages_never_panic(m in arb_message(), idx in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = m.encode();
            if !bytes.is_empty() {
                let i = idx % bytes.len();
                bytes[i] = byte;
            }
            if let Ok(d) = Message::decode(&bytes) {
                // Whatever decodes re-encodes to something that decodes the same.
                prop_assert_eq!(Message::decode(&d.encode()), Ok(d));
            }
        }
    }
}
