//! A sink that only counts and measures latency (runtime benchmarks).

use crate::Result;
use crate::frame::Packet;
use crate::stage::{Outputs, Processor};

/// Consumes everything; records capture-to-sink latency in its stage metrics.
#[derive(Debug, Default)]
pub struct NullSink;

impl Processor for NullSink {
    fn process(&mut self, input: Packet, out: &mut Outputs) -> Result<()> {
        out.record_consumed(input.meta().map(|m| m.capture_ns));
        Ok(())
    }
}
