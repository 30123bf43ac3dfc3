//! Time as the pipeline's logic sees it.
//!
//! Logic that depends on time (the agent's caption cadence, rate limits) asks the node's
//! context ([`crate::node::Context::now_ns`]) instead of reading the wall clock. The time of a
//! message is its frame's capture time: live, the instant the camera captured it, on the wall
//! clock; in a replay, the recorded capture time (its intervals kept). So a replay reproduces
//! what depended on time however fast it runs, and a slow stage decides as if it had kept up.

use crate::message::FrameMeta;

/// Where a pipeline's logic takes the time from when no message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// A live pipeline: wall time.
    #[default]
    Live,
    /// A replay: only the recording's times count; before the first message, zero.
    Replay,
}

impl Clock {
    /// Nanoseconds since the epoch for logic handling `current` (the message being handled,
    /// or the last one).
    pub fn now_ns(self, current: Option<&FrameMeta>) -> i64 {
        match (current, self) {
            (Some(m), _) => m.capture_ns,
            (None, Self::Live) => crate::now_ns(),
            (None, Self::Replay) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_of_a_message_is_its_capture_time() {
        let meta = FrameMeta { camera: "c".into(), seq: 3, capture_ns: 42, frame_id: None };
        assert_eq!(Clock::Replay.now_ns(Some(&meta)), 42);
        assert_eq!(Clock::Live.now_ns(Some(&meta)), 42);
        assert_eq!(Clock::Replay.now_ns(None), 0);
        assert!(Clock::Live.now_ns(None) > 1_600_000_000_000_000_000);
    }
}
