//! A sink that drops every record (Flink's `DiscardingSink`): for benchmarks that measure the
//! pipeline without output I/O, and for jobs whose only product is their state.

use crate::operator::{OperatorError, Output, StreamOperator};

/// Drops records; keeps no state.
#[derive(Debug, Default)]
pub struct DiscardSink;

impl<T: Send> StreamOperator<T, ()> for DiscardSink {
    fn process_batch(&mut self, batch: Vec<T>, _out: &mut Output<()>) -> Result<(), OperatorError> {
        drop(batch);
        Ok(())
    }
}
