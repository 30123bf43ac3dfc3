//! A sink that only counts and measures latency (runtime benchmarks).

use ocellus_runtime::node::{Context, Input, Stage};

/// Consumes everything; records capture-to-sink latency in its metrics.
#[derive(Debug, Default)]
pub struct NullSink;

impl Stage for NullSink {
    fn process(&mut self, input: Input, ctx: &mut Context) -> ocellus_runtime::Result<()> {
        ctx.record_consumed(input.packet.meta().map(|m| m.capture_ns));
        Ok(())
    }
}
