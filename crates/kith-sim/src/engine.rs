//! Pieces both simulators share: the time-ordered event queue, the coordinate latency
//! model, and virtual-time arithmetic.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::Rng;

/// A duration in virtual nanoseconds (saturating).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Virtual time: nanoseconds since the start, shown to the cores as `Instant`s after a
/// fixed base taken when the simulation is created. It only moves forward.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
    ticks: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            ticks: 0,
        }
    }

    /// Virtual nanoseconds since the start.
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks
    }

    /// The current virtual time as an `Instant`.
    pub(crate) fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.ticks)
    }

    /// Virtual time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.ticks)
    }

    /// The tick of an `Instant` a core asked for, never in the past.
    pub(crate) fn ticks_at(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.base)).max(self.ticks)
    }

    /// Moves the clock to `ticks` (never backwards).
    pub(crate) fn advance_to(&mut self, ticks: u64) {
        self.ticks = self.ticks.max(ticks);
    }
}

/// Where a node sits in the latency model: a point in the unit square and the delay of
/// its access link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    x: f32,
    y: f32,
    access_us: u32,
}

impl Place {
    /// A random place; access delay uniform from 1 ms to `max_access_delay`.
    pub(crate) fn random<R: Rng>(rng: &mut R, max_access_delay: Duration) -> Self {
        let access_max = max_access_delay.as_micros().max(1_001) as u32;
        Self {
            x: rng.r#gen(),
            y: rng.r#gen(),
            access_us: rng.gen_range(1_000..access_max),
        }
    }

    /// One-way delay to `other`: the distance across the plane (the diagonal takes
    /// `max_path_delay`) plus both access links.
    pub(crate) fn one_way(&self, other: &Place, max_path_delay: Duration) -> Duration {
        let d = ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt()
            / std::f32::consts::SQRT_2;
        Duration::from_secs_f32(max_path_delay.as_secs_f32() * d)
            + Duration::from_micros(u64::from(self.access_us + other.access_us))
    }
}

#[derive(Debug)]
struct Ev<K> {
    at: u64,
    seq: u64,
    kind: K,
}

impl<K> PartialEq for Ev<K> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<K> Eq for Ev<K> {}
impl<K> PartialOrd for Ev<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Ev<K> {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, the earliest event must come out first.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Events ordered by virtual time, ties broken by insertion order (deterministic).
#[derive(Debug)]
pub(crate) struct EventQueue<K> {
    heap: BinaryHeap<Ev<K>>,
    seq: u64,
}

impl<K> EventQueue<K> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Schedules `kind` at virtual time `at`.
    pub(crate) fn push(&mut self, at: u64, kind: K) {
        self.seq += 1;
        self.heap.push(Ev {
            at,
            seq: self.seq,
            kind,
        });
    }

    /// Takes the earliest event if it is due at or before `end`.
    pub(crate) fn pop_until(&mut self, end: u64) -> Option<(u64, K)> {
        if self.heap.peek()?.at > end {
            return None;
        }
        self.heap.pop().map(|ev| (ev.at, ev.kind))
    }
}
