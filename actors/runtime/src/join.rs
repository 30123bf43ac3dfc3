//! Joining a message with the one that derives from the same frame.
//!
//! A labeler needs each frame together with the tracks computed from it; the frame arrives
//! first (straight from the camera) and the tracks later (from the tracker), or, when the
//! tracker is quicker than the hop from the camera, the other way round. The [`Joiner`] holds
//! either side per camera until its partner (same sequence number) arrives. Both sides arrive
//! in order per camera, so a message older than its side's newest partner can never be
//! paired: it is dropped and counted (its partner was dropped upstream by an edge's policy).
//! At most `capacity` messages wait per camera and side (the oldest goes).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::message::Packet;

/// Messages of both sides, per camera.
#[derive(Debug)]
pub struct Joiner {
    capacity: usize,
    cameras: HashMap<Arc<str>, Sides>,
    unpaired: u64,
}

#[derive(Debug, Default)]
struct Sides {
    primaries: VecDeque<Packet>,
    withs: VecDeque<Packet>,
}

fn seq_of(p: &Packet) -> u64 {
    p.meta().map_or(0, |m| m.seq)
}

/// Drops the messages older than `seq` at the front of `queue`; how many went.
fn drop_older(queue: &mut VecDeque<Packet>, seq: u64) -> u64 {
    let mut n = 0;
    while queue.front().is_some_and(|p| seq_of(p) < seq) {
        queue.pop_front();
        n += 1;
    }
    n
}

impl Joiner {
    /// Holds at most `capacity` messages per camera and side.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), cameras: HashMap::new(), unpaired: 0 }
    }

    fn sides(&mut self, p: &Packet) -> &mut Sides {
        let camera = p.meta().map_or_else(|| Arc::from(""), |m| m.camera.clone());
        self.cameras.entry(camera).or_default()
    }

    /// A message of the driving side: its partner, if it came already (else it waits).
    pub fn push_primary(&mut self, primary: Packet) -> Option<(Packet, Packet)> {
        let (seq, capacity) = (seq_of(&primary), self.capacity);
        let sides = self.sides(&primary);
        let mut unpaired = drop_older(&mut sides.withs, seq);
        let found = if sides.withs.front().is_some_and(|w| seq_of(w) == seq) {
            sides.withs.pop_front().map(|w| (primary, w))
        } else {
            sides.primaries.push_back(primary);
            if sides.primaries.len() > capacity {
                sides.primaries.pop_front();
                unpaired += 1;
            }
            None
        };
        self.unpaired += unpaired;
        found
    }

    /// A message of the waiting side: the primary it completes, if that came already (else it
    /// waits).
    pub fn push_with(&mut self, with: Packet) -> Option<(Packet, Packet)> {
        let (seq, capacity) = (seq_of(&with), self.capacity);
        let sides = self.sides(&with);
        let mut unpaired = drop_older(&mut sides.primaries, seq);
        let found = if sides.primaries.front().is_some_and(|p| seq_of(p) == seq) {
            sides.primaries.pop_front().map(|p| (p, with))
        } else {
            sides.withs.push_back(with);
            if sides.withs.len() > capacity {
                sides.withs.pop_front();
                unpaired += 1;
            }
            None
        };
        self.unpaired += unpaired;
        found
    }

    /// Messages dropped without a partner so far (those still waiting are not counted).
    pub fn unpaired(&self) -> u64 {
        self.unpaired
    }

    /// Messages still waiting for a partner.
    pub fn waiting(&self) -> u64 {
        self.cameras.values().map(|s| (s.primaries.len() + s.withs.len()) as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{FrameMeta, Mask, MaskKind};

    fn packet(camera: &str, seq: u64) -> Packet {
        Packet::Mask(Mask {
            meta: FrameMeta { camera: camera.into(), seq, capture_ns: 0, frame_id: None },
            kind: MaskKind::Motion,
            width: 1,
            height: 1,
            data: bytes::Bytes::from_static(&[0]),
            coverage: 0.0,
        })
    }

    fn seqs(pair: Option<(Packet, Packet)>) -> Option<(u64, u64)> {
        pair.map(|(p, w)| (seq_of(&p), seq_of(&w)))
    }

    #[test]
    fn pairs_in_either_order_and_counts_the_lost() {
        let mut j = Joiner::new(4);
        // frame first, then its tracks
        assert_eq!(seqs(j.push_with(packet("a", 0))), None);
        assert_eq!(seqs(j.push_primary(packet("a", 0))), Some((0, 0)));
        // tracks first (a quick tracker), then the frame
        assert_eq!(seqs(j.push_primary(packet("a", 1))), None);
        assert_eq!(seqs(j.push_with(packet("a", 1))), Some((1, 1)));
        // frames 2 and 3 arrive; the tracker dropped 2: tracks 3 pair, frame 2 is lost
        j.push_with(packet("a", 2));
        j.push_with(packet("a", 3));
        assert_eq!(seqs(j.push_primary(packet("a", 3))), Some((3, 3)));
        assert_eq!(j.unpaired(), 1);
        // cameras are independent
        j.push_with(packet("b", 3));
        assert_eq!(seqs(j.push_primary(packet("a", 4))), None);
        assert_eq!(seqs(j.push_primary(packet("b", 3))), Some((3, 3)));
        assert_eq!(j.waiting(), 1);
    }

    #[test]
    fn holds_at_most_capacity_per_side() {
        let mut j = Joiner::new(2);
        for seq in 0..5 {
            j.push_with(packet("a", seq));
        }
        assert_eq!((j.unpaired(), j.waiting()), (3, 2));
        assert_eq!(seqs(j.push_primary(packet("a", 4))), Some((4, 4)));
        assert_eq!(j.unpaired(), 4);
    }
}
