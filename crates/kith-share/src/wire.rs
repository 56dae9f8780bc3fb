//! The `kith/share/1` wire messages (schema: `docs/proto/share.proto`, prose:
//! `docs/share.md`) and their checked conversion to domain types.
//!
//! Every stream starts with one [`Open`] frame from the opener:
//!
//! * `get`: the provider answers with one [`Response`] frame (`refused`, or the first
//!   `blob` header); after each `blob` header that is not `missing` come the verified range
//!   encodings (kith-store's format) of that blob's requested group ranges, back to back,
//!   then the next header.
//! * `watch`: the provider answers with an `availability` frame and then sends more
//!   `availability` frames (only what is new) as it verifies more, until either side
//!   closes the stream.
//!
//! Frames are length-delimited (kith-core framing) and capped at [`MAX_FRAME`] before
//! anything is allocated; range sets are capped in ranges and bounded by each blob's
//! group count.

use bytes::Bytes;
use kith_store::Hash;
use prost::Message as _;

use crate::ranges::{RangeSet, RangeSetError};

/// Largest frame either side accepts (a request with many ranges, an availability map).
pub const MAX_FRAME: usize = 512 * 1024;
/// Most blobs one request or availability frame may name.
pub const MAX_BLOBS_PER_FRAME: usize = 4096;

/// Protobuf form of the first frame on a stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenMsg {
    /// Fetch ranges.
    #[prost(message, optional, tag = "1")]
    pub get: Option<GetMsg>,
    /// Subscribe to availability.
    #[prost(message, optional, tag = "2")]
    pub watch: Option<WatchMsg>,
}

/// Protobuf form of a get request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetMsg {
    /// Root hash, 32 bytes.
    #[prost(bytes = "bytes", tag = "1")]
    pub root: Bytes,
    /// Whether the root is a collection manifest.
    #[prost(bool, tag = "2")]
    pub collection: bool,
    /// Ranges wanted, per blob.
    #[prost(message, repeated, tag = "3")]
    pub blobs: Vec<BlobRangesMsg>,
}

/// Protobuf form of the ranges wanted from (or held of) one blob.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlobRangesMsg {
    /// Blob index: 0 is the root (a raw blob, or a collection's manifest); `i + 1` is the
    /// collection's entry `i`.
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// Chunk groups, in the range-set wire form.
    #[prost(uint64, repeated, packed = "true", tag = "2")]
    pub groups: Vec<u64>,
    /// In availability frames: the blob's size (0 if unknown), so a watcher can lay out
    /// a raw blob before fetching it. Sizes are claims: verification decides.
    #[prost(uint64, tag = "3")]
    pub size: u64,
}

/// Protobuf form of a watch request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchMsg {
    /// Root hash, 32 bytes.
    #[prost(bytes = "bytes", tag = "1")]
    pub root: Bytes,
    /// Whether the root is a collection manifest.
    #[prost(bool, tag = "2")]
    pub collection: bool,
}

/// Protobuf form of a provider's frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseMsg {
    /// The request is refused; nothing follows.
    #[prost(message, optional, tag = "1")]
    pub refused: Option<RefusedMsg>,
    /// Header of one blob's encodings.
    #[prost(message, optional, tag = "2")]
    pub blob: Option<BlobHeaderMsg>,
    /// What the provider holds (or, after the first, what it gained).
    #[prost(message, optional, tag = "3")]
    pub availability: Option<AvailabilityMsg>,
}

/// Protobuf form of a refusal.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefusedMsg {
    /// [`Refusal`] code.
    #[prost(uint32, tag = "1")]
    pub reason: u32,
    /// For busy: milliseconds to wait before asking again.
    #[prost(uint32, tag = "2")]
    pub retry_after_ms: u32,
}

/// Protobuf form of a blob header.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlobHeaderMsg {
    /// Blob index, as in the request.
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// The provider lacks some requested group of this blob: no encodings follow it.
    #[prost(bool, tag = "2")]
    pub missing: bool,
}

/// Protobuf form of availability.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AvailabilityMsg {
    /// The provider has every blob of the share, complete.
    #[prost(bool, tag = "1")]
    pub complete: bool,
    /// Otherwise: groups held, per blob.
    #[prost(message, repeated, tag = "2")]
    pub blobs: Vec<BlobRangesMsg>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The provider does not share this root.
    NotFound,
    /// Every upload slot is taken; ask again after the delay.
    Busy {
        /// How long to wait, in milliseconds.
        retry_after_ms: u32,
    },
    /// The request names more ranges or blobs than the provider accepts.
    TooLarge,
    /// This peer already has as many requests open as the provider allows.
    TooManyRequests,
    /// The request is malformed (bad hash, index out of range, bad range set).
    BadRequest,
}

impl Refusal {
    /// The wire form.
    pub fn to_msg(self) -> RefusedMsg {
        let (reason, retry_after_ms) = match self {
            Refusal::NotFound => (1, 0),
            Refusal::Busy { retry_after_ms } => (2, retry_after_ms),
            Refusal::TooLarge => (3, 0),
            Refusal::TooManyRequests => (4, 0),
            Refusal::BadRequest => (5, 0),
        };
        RefusedMsg {
            reason,
            retry_after_ms,
        }
    }

    /// The domain form; unknown codes read as [`Refusal::BadRequest`].
    pub fn from_msg(m: &RefusedMsg) -> Self {
        match m.reason {
            1 => Refusal::NotFound,
            2 => Refusal::Busy {
                retry_after_ms: m.retry_after_ms,
            },
            3 => Refusal::TooLarge,
            4 => Refusal::TooManyRequests,
            _ => Refusal::BadRequest,
        }
    }
}

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not a valid protobuf message of the expected type.
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A hash field is not 32 bytes.
    #[error("hash field is not 32 bytes")]
    BadHash,
    /// Neither or both of the alternatives are set.
    #[error("message sets no alternative or more than one")]
    BadKind,
    /// Too many blobs in one frame.
    #[error("{0} blobs in one frame, more than {MAX_BLOBS_PER_FRAME}")]
    TooManyBlobs(usize),
    /// A range set is malformed or too large.
    #[error("bad range set: {0}")]
    Ranges(#[from] RangeSetError),
    /// Not protobuf wire data (found while counting its lists before decoding).
    #[error("malformed message: {0}")]
    Scan(#[from] kith_core::scan::ScanError),
}

/// The first frame of a stream, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// Fetch ranges of blobs of a share.
    Get(GetRequest),
    /// Subscribe to a provider's availability of a share.
    Watch {
        /// The share's root.
        root: Hash,
        /// Whether the root is a collection.
        collection: bool,
    },
}

/// A get request, checked for shape (range bounds are checked by the provider, which
/// knows the blobs' sizes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetRequest {
    /// The share's root.
    pub root: Hash,
    /// Whether the root is a collection.
    pub collection: bool,
    /// Per blob index, the groups wanted (in request order) and the blob's size if the
    /// requester holds it verified (0 if not): the provider then sends no size proof
    /// ([`SizeProof::Omitted`](kith_store::SizeProof::Omitted)), and answers "missing"
    /// if its size differs.
    pub blobs: Vec<(u32, RangeSet, u64)>,
}

fn hash_of(b: &[u8]) -> Result<Hash, WireError> {
    let arr: [u8; 32] = b.try_into().map_err(|_| WireError::BadHash)?;
    Ok(Hash::from_bytes(arr))
}

/// Counts the blob entries at `path` of `frame` and the range-set values in them before
/// anything is decoded: at most [`MAX_BLOBS_PER_FRAME`] entries and `max_ranges` ranges
/// (two values each). An empty entry costs a peer two bytes and us a whole structure, a
/// one-byte varint eight bytes: counted first, neither is materialised beyond the limits.
fn precount(frame: &[u8], path: &[u32], max_ranges: usize) -> Result<(), WireError> {
    let (blobs_at, field) = path.split_at(path.len() - 1);
    let blobs = kith_core::scan::count(frame, blobs_at, field[0])?;
    if blobs > MAX_BLOBS_PER_FRAME {
        return Err(WireError::TooManyBlobs(blobs));
    }
    let max = max_ranges.min(crate::ranges::MAX_WIRE_RANGES);
    let values = kith_core::scan::count_varints(frame, path, 2)?;
    if values > 2 * max {
        return Err(RangeSetError::TooMany {
            count: values / 2,
            max,
        }
        .into());
    }
    Ok(())
}

/// Parses a blob-ranges list, with at most `max_ranges` ranges in all.
pub fn parse_blob_ranges(
    blobs: &[BlobRangesMsg],
    max_ranges: usize,
) -> Result<Vec<(u32, RangeSet, u64)>, WireError> {
    if blobs.len() > MAX_BLOBS_PER_FRAME {
        return Err(WireError::TooManyBlobs(blobs.len()));
    }
    let mut left = max_ranges;
    let mut out = Vec::with_capacity(blobs.len());
    for b in blobs {
        let set = RangeSet::from_wire(&b.groups, left, kith_store::MAX_BLOB_SIZE)?;
        left -= set.ranges().len();
        out.push((b.index, set, b.size));
    }
    Ok(out)
}

impl Open {
    /// Decodes and checks an open frame, allowing at most `max_ranges` ranges in a get.
    pub fn decode(frame: &[u8], max_ranges: usize) -> Result<Self, WireError> {
        precount(frame, &[1, 3], max_ranges)?;
        let m = OpenMsg::decode(frame)?;
        match (m.get, m.watch) {
            (Some(g), None) => {
                let blobs = parse_blob_ranges(&g.blobs, max_ranges)?;
                Ok(Open::Get(GetRequest {
                    root: hash_of(&g.root)?,
                    collection: g.collection,
                    blobs,
                }))
            }
            (None, Some(w)) => Ok(Open::Watch {
                root: hash_of(&w.root)?,
                collection: w.collection,
            }),
            _ => Err(WireError::BadKind),
        }
    }

    /// The wire form.
    pub fn to_msg(&self) -> OpenMsg {
        match self {
            Open::Get(g) => OpenMsg {
                get: Some(GetMsg {
                    root: Bytes::copy_from_slice(g.root.as_bytes()),
                    collection: g.collection,
                    blobs: g
                        .blobs
                        .iter()
                        .map(|(index, set, size)| BlobRangesMsg {
                            index: *index,
                            groups: set.to_wire(),
                            size: *size,
                        })
                        .collect(),
                }),
                watch: None,
            },
            Open::Watch { root, collection } => OpenMsg {
                get: None,
                watch: Some(WatchMsg {
                    root: Bytes::copy_from_slice(root.as_bytes()),
                    collection: *collection,
                }),
            },
        }
    }
}

/// A provider's frame, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The request is refused.
    Refused(Refusal),
    /// A blob's encodings follow (unless `missing`).
    Blob {
        /// Blob index.
        index: u32,
        /// The provider lacks part of what was asked of this blob.
        missing: bool,
    },
    /// Availability: everything (`complete`), or groups per blob `(index, groups,
    /// claimed size)`.
    Availability {
        /// The provider has the whole share.
        complete: bool,
        /// Groups held per blob.
        blobs: Vec<(u32, RangeSet, u64)>,
    },
}

impl Response {
    /// Decodes and checks a provider frame, allowing at most `max_ranges` ranges.
    pub fn decode(frame: &[u8], max_ranges: usize) -> Result<Self, WireError> {
        precount(frame, &[3, 2], max_ranges)?;
        let m = ResponseMsg::decode(frame)?;
        match (m.refused, m.blob, m.availability) {
            (Some(r), None, None) => Ok(Response::Refused(Refusal::from_msg(&r))),
            (None, Some(b), None) => Ok(Response::Blob {
                index: b.index,
                missing: b.missing,
            }),
            (None, None, Some(a)) => Ok(Response::Availability {
                complete: a.complete,
                blobs: parse_blob_ranges(&a.blobs, max_ranges)?,
            }),
            _ => Err(WireError::BadKind),
        }
    }

    /// The wire form.
    pub fn to_msg(&self) -> ResponseMsg {
        let mut m = ResponseMsg::default();
        match self {
            Response::Refused(r) => m.refused = Some(r.to_msg()),
            Response::Blob { index, missing } => {
                m.blob = Some(BlobHeaderMsg {
                    index: *index,
                    missing: *missing,
                })
            }
            Response::Availability { complete, blobs } => {
                m.availability = Some(AvailabilityMsg {
                    complete: *complete,
                    blobs: blobs
                        .iter()
                        .map(|(index, set, size)| BlobRangesMsg {
                            index: *index,
                            groups: set.to_wire(),
                            size: *size,
                        })
                        .collect(),
                })
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn open_and_response_round_trip() {
        let get = Open::Get(GetRequest {
            root: Hash::of(b"r"),
            collection: true,
            blobs: vec![
                (0, RangeSet::from_range(0..1), 0),
                (7, RangeSet::from_range(3..9), 1 << 20),
            ],
        });
        assert_eq!(
            Open::decode(&get.to_msg().encode_to_vec(), 100).ok(),
            Some(get)
        );
        let watch = Open::Watch {
            root: Hash::of(b"w"),
            collection: false,
        };
        assert_eq!(
            Open::decode(&watch.to_msg().encode_to_vec(), 100).ok(),
            Some(watch)
        );
        for r in [
            Response::Refused(Refusal::Busy {
                retry_after_ms: 250,
            }),
            Response::Refused(Refusal::NotFound),
            Response::Blob {
                index: 3,
                missing: true,
            },
            Response::Availability {
                complete: false,
                blobs: vec![(1, RangeSet::from_range(0..4), 65536)],
            },
        ] {
            assert_eq!(
                Response::decode(&r.to_msg().encode_to_vec(), 100).ok(),
                Some(r)
            );
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(Open::decode(&[], 10), Err(WireError::BadKind)));
        let bad_hash = OpenMsg {
            get: None,
            watch: Some(WatchMsg {
                root: Bytes::from_static(&[1; 31]),
                collection: false,
            }),
        };
        assert!(matches!(
            Open::decode(&bad_hash.encode_to_vec(), 10),
            Err(WireError::BadHash)
        ));
        let many = Open::Get(GetRequest {
            root: Hash::of(b"r"),
            collection: false,
            blobs: vec![(0, (0..40).step_by(2).collect(), 0)],
        });
        assert!(matches!(
            Open::decode(&many.to_msg().encode_to_vec(), 10),
            Err(WireError::Ranges(RangeSetError::TooMany { .. }))
        ));
    }

    fn cfg() -> ProptestConfig {
        ProptestConfig {
            cases: 512,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7769_7265),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(cfg())]

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Open::decode(&b, 64);
            let _ = Response::decode(&b, 64);
        }

        #[test]
        fn requests_round_trip(groups in proptest::collection::vec(0u64..5000, 0..50), idx in any::<u32>(), held in any::<u64>()) {
            let set: RangeSet = groups.into_iter().collect();
            let g = Open::Get(GetRequest { root: Hash::of(b"p"), collection: false, blobs: vec![(idx, set, held)] });
            prop_assert_eq!(Open::decode(&g.to_msg().encode_to_vec(), 4096).ok(), Some(g));
        }
    }
}
