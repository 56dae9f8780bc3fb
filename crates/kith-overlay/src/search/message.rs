//! Search messages: domain types, protobuf wire form (schema: `docs/proto/search.proto`,
//! messages `SearchMessage`, `QueryMsg`, `HitsMsg`, `ItemMsg`) and the checked conversion.

use bytes::Bytes;
use kith_core::NodeAddr;
use prost::Message as _;

/// Largest encoded search message.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most keywords in a query.
pub const MAX_KEYWORDS: usize = 8;
/// Longest keyword, in bytes.
pub const MAX_KEYWORD_LEN: usize = 64;
/// Most items in one `Hits` message.
pub const MAX_HITS: usize = 32;
/// Longest item name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest TTL a query may carry.
pub const MAX_TTL: u8 = 128;
/// Most random walkers a query may ask for.
pub const MAX_WALKERS: u8 = 64;
/// Largest opaque [`Item::payload`], in bytes (room for a one-provider kith-share
/// ticket).
pub const MAX_PAYLOAD_LEN: usize = 2048;

/// Something a peer shares and announces to searchers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Item {
    /// File name (at most [`MAX_NAME_LEN`] bytes); keywords match its words.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 content hash (what kith-share fetches by).
    pub hash: [u8; 32],
    /// Opaque bytes for the application, carried unchanged in hits (at most
    /// [`MAX_PAYLOAD_LEN`]; empty for none). For example a kith-share ticket, so that a
    /// searcher can fetch what it found.
    pub payload: Bytes,
}

impl Item {
    /// An item without payload.
    pub fn new(name: impl Into<String>, size: u64, hash: [u8; 32]) -> Self {
        Self {
            name: name.into(),
            size,
            hash,
            payload: Bytes::new(),
        }
    }

    /// The same item carrying `payload`.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Checks what the decoder checks: a name of 1 to [`MAX_NAME_LEN`] bytes and a
    /// payload of at most [`MAX_PAYLOAD_LEN`] bytes. An item that fails would be
    /// refused by every searcher.
    pub fn check(&self) -> Result<(), MessageError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(MessageError::BadHits);
        }
        if self.payload.len() > MAX_PAYLOAD_LEN {
            return Err(MessageError::PayloadTooLong(self.payload.len()));
        }
        Ok(())
    }

    /// An upper bound on the item's encoded size inside a `Hits` message.
    pub(crate) fn wire_len_bound(&self) -> usize {
        // The hash, and tags, length prefixes, the size varint: well under 96 bytes.
        self.name.len() + self.payload.len() + 96
    }
}

/// How a query travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every node forwards the query to all its neighbours until the TTL runs out.
    Flood,
    /// Each walker is forwarded to one random neighbour per hop until the TTL runs out
    /// (or, by default, until it finds a match).
    Walk,
}

/// A search query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Chosen by the querier; with its id, names the query for duplicate suppression.
    pub id: u64,
    /// Where hits go, straight back (not along the query's path).
    pub querier: NodeAddr,
    /// Lowercase keywords; an item matches when each is a word of its name (or, for a
    /// 64-character hex keyword, its content hash).
    pub keywords: Vec<String>,
    /// Flooding or random walk.
    pub mode: Mode,
    /// Hops left.
    pub ttl: u8,
}

/// One search message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A query being forwarded.
    Query(Query),
    /// Matches, sent by the node that has them straight to the querier.
    Hits {
        /// The query's id.
        id: u64,
        /// How to reach the node that has the items, as it reports itself (its id must
        /// be the authenticated sender's; `None` when it did not say).
        provider: Option<NodeAddr>,
        /// Matching items.
        items: Vec<Item>,
    },
}

/// Error converting wire bytes into a search [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The encoded message is longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes exceeds {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// The bytes are not valid protobuf for this schema.
    #[error("message does not decode: {0}")]
    Decode(String),
    /// The message has no body.
    #[error("missing body")]
    Missing,
    /// The querier's address is malformed.
    #[error("invalid querier address")]
    InvalidQuerier,
    /// No keyword, more than [`MAX_KEYWORDS`], or one empty, too long or not lowercase.
    #[error("invalid keywords")]
    BadKeywords,
    /// More than [`MAX_HITS`] items, or an item with a bad name or hash.
    #[error("invalid hits")]
    BadHits,
    /// TTL above [`MAX_TTL`].
    #[error("ttl {0} exceeds {MAX_TTL}")]
    TtlTooLarge(u32),
    /// Unknown mode.
    #[error("unknown query mode {0}")]
    UnknownMode(i32),
    /// An item's payload is longer than [`MAX_PAYLOAD_LEN`].
    #[error("item payload of {0} bytes exceeds {MAX_PAYLOAD_LEN}")]
    PayloadTooLong(usize),
    /// The provider's address in a `Hits` message is malformed.
    #[error("invalid provider address")]
    InvalidProvider,
}

/// The protobuf messages, generated by `cargo xtask codegen` from `docs/proto/search.proto`
/// (package `kith.search`).
///
/// Use [`Message::decode`] / [`Message::from_wire`] to turn them into validated domain
/// types; the raw structs trust nothing.
#[path = "../gen/kith.search.rs"]
#[rustfmt::skip]
pub mod wire;

use wire::search_message::Body as W;

fn valid_keyword(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEYWORD_LEN
        && k.chars().all(|c| !c.is_uppercase() && !c.is_whitespace())
}

impl Message {
    /// The protobuf form.
    pub fn to_wire(&self) -> wire::SearchMessage {
        let body = match self {
            Message::Query(q) => W::Query(wire::QueryMsg {
                id: q.id,
                querier: q.querier.encode().into(),
                keywords: q.keywords.clone(),
                mode: match q.mode {
                    Mode::Flood => 0,
                    Mode::Walk => 1,
                },
                ttl: u32::from(q.ttl),
            }),
            Message::Hits {
                id,
                provider,
                items,
            } => W::Hits(wire::HitsMsg {
                id: *id,
                items: items
                    .iter()
                    .map(|i| wire::ItemMsg {
                        name: i.name.clone(),
                        size: i.size,
                        hash: Bytes::copy_from_slice(&i.hash),
                        payload: i.payload.clone(),
                    })
                    .collect(),
                provider: provider
                    .as_ref()
                    .map(|p| Bytes::from(p.encode()))
                    .unwrap_or_default(),
            }),
        };
        wire::SearchMessage { body: Some(body) }
    }

    /// Validates a protobuf message and converts it to the domain type.
    pub fn from_wire(m: &wire::SearchMessage) -> Result<Self, MessageError> {
        match m.body.as_ref().ok_or(MessageError::Missing)? {
            W::Query(q) => {
                let querier =
                    NodeAddr::decode(&q.querier).map_err(|_| MessageError::InvalidQuerier)?;
                if q.keywords.is_empty()
                    || q.keywords.len() > MAX_KEYWORDS
                    || !q.keywords.iter().all(|k| valid_keyword(k))
                {
                    return Err(MessageError::BadKeywords);
                }
                let mode = match q.mode {
                    0 => Mode::Flood,
                    1 => Mode::Walk,
                    m => return Err(MessageError::UnknownMode(m)),
                };
                if q.ttl > u32::from(MAX_TTL) {
                    return Err(MessageError::TtlTooLarge(q.ttl));
                }
                Ok(Message::Query(Query {
                    id: q.id,
                    querier,
                    keywords: q.keywords.clone(),
                    mode,
                    ttl: q.ttl as u8,
                }))
            }
            W::Hits(h) => {
                if h.items.len() > MAX_HITS {
                    return Err(MessageError::BadHits);
                }
                let provider = if h.provider.is_empty() {
                    None
                } else {
                    Some(NodeAddr::decode(&h.provider).map_err(|_| MessageError::InvalidProvider)?)
                };
                let items = h
                    .items
                    .iter()
                    .map(|i| {
                        let hash: [u8; 32] =
                            i.hash[..].try_into().map_err(|_| MessageError::BadHits)?;
                        let item = Item {
                            name: i.name.clone(),
                            size: i.size,
                            hash,
                            payload: i.payload.clone(),
                        };
                        item.check()?;
                        Ok(item)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Message::Hits {
                    id: h.id,
                    provider,
                    items,
                })
            }
        }
    }

    /// Encodes to protobuf bytes (without a frame prefix).
    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    /// Decodes and validates protobuf bytes (one frame body).
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLong(bytes.len()));
        }
        // Lists are counted before prost materialises them: an empty entry costs a peer
        // two bytes and us a whole value.
        for (body, field, max, error) in [
            (1, 3, MAX_KEYWORDS, MessageError::BadKeywords),
            (2, 2, MAX_HITS, MessageError::BadHits),
        ] {
            let n = kith_core::scan::count(bytes, &[body], field)
                .map_err(|e| MessageError::Decode(e.to_string()))?;
            if n > max {
                return Err(error);
            }
        }
        let m =
            wire::SearchMessage::decode(bytes).map_err(|e| MessageError::Decode(e.to_string()))?;
        Self::from_wire(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_core::SecretKey;
    use proptest::prelude::*;

    fn addr(n: u64) -> NodeAddr {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_le_bytes());
        NodeAddr::new(SecretKey::from_bytes(&seed).node_id())
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let query = (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec("[a-z0-9]{1,10}", 1..MAX_KEYWORDS),
            any::<bool>(),
            0..=MAX_TTL,
        )
            .prop_map(|(id, q, keywords, walk, ttl)| {
                Message::Query(Query {
                    id,
                    querier: addr(q),
                    keywords,
                    mode: if walk { Mode::Walk } else { Mode::Flood },
                    ttl,
                })
            });
        let hits = (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(
                (
                    "[a-zA-Z0-9 ._-]{1,40}",
                    any::<u64>(),
                    any::<[u8; 32]>(),
                    proptest::collection::vec(any::<u8>(), 0..64),
                ),
                0..MAX_HITS,
            ),
        )
            .prop_map(|(id, provider, items)| Message::Hits {
                id,
                provider: provider.map(addr),
                items: items
                    .into_iter()
                    .map(|(name, size, hash, payload)| Item {
                        name,
                        size,
                        hash,
                        payload: payload.into(),
                    })
                    .collect(),
            });
        prop_oneof![query, hits]
    }

    #[test]
    fn rejects_bad_fields() {
        let q = Message::Query(Query {
            id: 1,
            querier: addr(1),
            keywords: vec!["cat".into()],
            mode: Mode::Walk,
            ttl: 5,
        });
        let base = match q.to_wire().body {
            Some(W::Query(q)) => q,
            _ => unreachable!(),
        };
        let cases = [
            (
                wire::QueryMsg {
                    keywords: vec![],
                    ..base.clone()
                },
                MessageError::BadKeywords,
            ),
            (
                wire::QueryMsg {
                    keywords: vec!["Cat".into()],
                    ..base.clone()
                },
                MessageError::BadKeywords,
            ),
            (
                wire::QueryMsg {
                    keywords: vec!["x".repeat(65)],
                    ..base.clone()
                },
                MessageError::BadKeywords,
            ),
            (
                wire::QueryMsg {
                    keywords: vec!["a".into(); 9],
                    ..base.clone()
                },
                MessageError::BadKeywords,
            ),
            (
                wire::QueryMsg {
                    mode: 7,
                    ..base.clone()
                },
                MessageError::UnknownMode(7),
            ),
            (
                wire::QueryMsg {
                    ttl: 129,
                    ..base.clone()
                },
                MessageError::TtlTooLarge(129),
            ),
            (
                wire::QueryMsg {
                    querier: Bytes::from_static(b"x"),
                    ..base.clone()
                },
                MessageError::InvalidQuerier,
            ),
        ];
        for (m, e) in cases {
            let w = wire::SearchMessage {
                body: Some(W::Query(m)),
            };
            assert_eq!(Message::from_wire(&w), Err(e));
        }
        let item = wire::ItemMsg {
            name: "a".into(),
            size: 1,
            hash: Bytes::from_static(&[0; 32]),
            payload: Bytes::new(),
        };
        for items in [
            vec![item.clone(); MAX_HITS + 1],
            vec![wire::ItemMsg {
                name: String::new(),
                ..item.clone()
            }],
            vec![wire::ItemMsg {
                name: "n".repeat(256),
                ..item.clone()
            }],
            vec![wire::ItemMsg {
                hash: Bytes::from_static(&[0; 31]),
                ..item.clone()
            }],
        ] {
            let w = wire::SearchMessage {
                body: Some(W::Hits(wire::HitsMsg {
                    id: 1,
                    items,
                    provider: Bytes::new(),
                })),
            };
            assert_eq!(Message::from_wire(&w), Err(MessageError::BadHits));
        }
        // Payloads: the largest allowed one round-trips, one byte more is refused.
        let max = Message::Hits {
            id: 1,
            provider: Some(addr(1)),
            items: vec![Item::new("a", 1, [0; 32]).with_payload(vec![7u8; MAX_PAYLOAD_LEN])],
        };
        assert_eq!(Message::decode(&max.encode()), Ok(max));
        let w = wire::SearchMessage {
            body: Some(W::Hits(wire::HitsMsg {
                id: 1,
                items: vec![wire::ItemMsg {
                    payload: vec![7u8; MAX_PAYLOAD_LEN + 1].into(),
                    ..item.clone()
                }],
                provider: Bytes::new(),
            })),
        };
        assert_eq!(
            Message::decode(&w.encode_to_vec()),
            Err(MessageError::PayloadTooLong(MAX_PAYLOAD_LEN + 1))
        );
        let w = wire::SearchMessage {
            body: Some(W::Hits(wire::HitsMsg {
                id: 1,
                items: vec![item.clone()],
                provider: Bytes::from_static(b"not an address"),
            })),
        };
        assert_eq!(Message::from_wire(&w), Err(MessageError::InvalidProvider));
        // The largest Hits message the core can build stays under the message cap.
        let big = Item::new("n".repeat(MAX_NAME_LEN), u64::MAX, [0xff; 32])
            .with_payload(vec![0xffu8; MAX_PAYLOAD_LEN]);
        let per_item = Message::Hits {
            id: u64::MAX,
            provider: None,
            items: vec![big.clone()],
        }
        .encode()
        .len();
        assert!(per_item <= big.wire_len_bound(), "{per_item}");
        assert_eq!(
            Message::from_wire(&wire::SearchMessage { body: None }),
            Err(MessageError::Missing)
        );
        assert_eq!(
            Message::decode(&vec![0; MAX_MESSAGE_LEN + 1]),
            Err(MessageError::TooLong(MAX_MESSAGE_LEN + 1))
        );
    }

    proptest! {
        #[test]
        fn round_trip(m in arb_message()) {
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
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
                prop_assert_eq!(Message::decode(&d.encode()), Ok(d));
            }
        }
    }
}
