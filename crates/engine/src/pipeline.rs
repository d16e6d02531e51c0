//! A task's chain of operators, from its input type to its output exchange. `OperatorPipeline` runs one
//! operator and hands its output to the rest of the chain; `ExchangeOut` ends the chain by partitioning
//! records into per-channel batches (forward, rebalance, hash by key group) and sending them, blocking
//! when a channel is full (backpressure). `Discard` ends a sink's chain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{SendTimeoutError, Sender};

use crate::keygroup::{key_group_of, subtask_for_key_group};
use crate::operator::{OperatorContext, OperatorError, OperatorSnapshot, Output, StreamOperator};
use crate::restore::RestoreView;
use crate::types::{Barrier, EndOfStream, Message, Timestamp};

/// Why a chain could not continue.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// An operator failed.
    #[error("operator {operator} failed: {source}")]
    Operator {
        operator: String,
        #[source]
        source: OperatorError,
    },
    /// A downstream task is gone (it failed or the job is being cancelled).
    #[error("downstream task is gone; the job attempt is ending")]
    Disconnected,
    /// The job attempt is being cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// The rest of a task's chain, from records of type `T` onward.
pub trait Pipeline<T>: Send {
    /// Restore (when `restored` holds state for an operator) and open every operator.
    fn open(&mut self, ctx: &OperatorContext, restored: &RestoreView) -> Result<(), PipelineError>;
    /// Push a batch.
    fn batch(&mut self, batch: Vec<T>) -> Result<(), PipelineError>;
    /// Push a watermark.
    fn watermark(&mut self, watermark: Timestamp) -> Result<(), PipelineError>;
    /// Snapshot every operator (appending `(operator id, state)`), then forward the barrier.
    fn barrier(
        &mut self,
        barrier: &Barrier,
        snapshots: &mut Vec<(String, OperatorSnapshot)>,
    ) -> Result<(), PipelineError>;
    /// Checkpoint complete.
    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), PipelineError>;
    /// Checkpoint aborted.
    fn notify_aborted(&mut self, checkpoint_id: u64);
    /// End of input.
    fn end(&mut self, end: EndOfStream) -> Result<(), PipelineError>;
}

/// One operator followed by the rest of the chain.
pub struct OperatorPipeline<I, O> {
    operator_id: String,
    operator: Box<dyn StreamOperator<I, O>>,
    out: Output<O>,
    next: Box<dyn Pipeline<O>>,
}

impl<I, O> OperatorPipeline<I, O> {
    /// Chain `operator` (with stable id `operator_id`) in front of `next`.
    pub fn new(
        operator_id: String,
        operator: Box<dyn StreamOperator<I, O>>,
        next: Box<dyn Pipeline<O>>,
    ) -> Self {
        Self {
            operator_id,
            operator,
            out: Output::default(),
            next,
        }
    }

    fn wrap(&self, source: OperatorError) -> PipelineError {
        PipelineError::Operator {
            operator: self.operator_id.clone(),
            source,
        }
    }

    fn forward(&mut self) -> Result<(), PipelineError> {
        if !self.out.records.is_empty() {
            let records = self.out.take_records();
            self.next.batch(records)?;
        }
        if let Some(w) = self.out.watermark.take() {
            self.next.watermark(w)?;
        }
        Ok(())
    }
}

impl<I: Send, O: Send> Pipeline<I> for OperatorPipeline<I, O> {
    fn open(&mut self, ctx: &OperatorContext, restored: &RestoreView) -> Result<(), PipelineError> {
        let ctx_here = OperatorContext {
            operator_id: self.operator_id.clone(),
            ..ctx.clone()
        };
        if let Some(state) = restored.state_for(&self.operator_id) {
            self.operator
                .restore(&ctx_here, state)
                .map_err(|e| self.wrap(e))?;
        }
        self.operator.open(&ctx_here).map_err(|e| self.wrap(e))?;
        self.next.open(ctx, restored)
    }

    fn batch(&mut self, batch: Vec<I>) -> Result<(), PipelineError> {
        if let Err(e) = self.operator.process_batch(batch, &mut self.out) {
            return Err(self.wrap(e));
        }
        self.forward()
    }

    fn watermark(&mut self, watermark: Timestamp) -> Result<(), PipelineError> {
        if let Err(e) = self.operator.process_watermark(watermark, &mut self.out) {
            return Err(self.wrap(e));
        }
        self.forward()
    }

    fn barrier(
        &mut self,
        barrier: &Barrier,
        snapshots: &mut Vec<(String, OperatorSnapshot)>,
    ) -> Result<(), PipelineError> {
        let started = std::time::Instant::now();
        let state = self.operator.snapshot(barrier).map_err(|e| self.wrap(e))?;
        tracing::debug!(
            operator = %self.operator_id,
            checkpoint_id = barrier.id,
            key_groups = state.keyed.len(),
            copy_us = started.elapsed().as_micros() as u64,
            "operator state copied (synchronous part of the snapshot)"
        );
        if !state.is_empty() {
            snapshots.push((self.operator_id.clone(), state));
        }
        self.next.barrier(barrier, snapshots)
    }

    fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), PipelineError> {
        self.operator
            .notify_checkpoint_complete(checkpoint_id)
            .map_err(|e| self.wrap(e))?;
        self.next.notify_complete(checkpoint_id)
    }

    fn notify_aborted(&mut self, checkpoint_id: u64) {
        self.operator.notify_checkpoint_aborted(checkpoint_id);
        self.next.notify_aborted(checkpoint_id);
    }

    fn end(&mut self, end: EndOfStream) -> Result<(), PipelineError> {
        if let Err(e) = self.operator.end_of_input(end, &mut self.out) {
            return Err(self.wrap(e));
        }
        self.forward()?;
        self.next.end(end)
    }
}

/// End of a sink's chain: drops records, watermarks and barriers.
pub struct Discard;

impl<T: Send> Pipeline<T> for Discard {
    fn open(&mut self, _: &OperatorContext, _: &RestoreView) -> Result<(), PipelineError> {
        Ok(())
    }
    fn batch(&mut self, _: Vec<T>) -> Result<(), PipelineError> {
        Ok(())
    }
    fn watermark(&mut self, _: Timestamp) -> Result<(), PipelineError> {
        Ok(())
    }
    fn barrier(
        &mut self,
        _: &Barrier,
        _: &mut Vec<(String, OperatorSnapshot)>,
    ) -> Result<(), PipelineError> {
        Ok(())
    }
    fn notify_complete(&mut self, _: u64) -> Result<(), PipelineError> {
        Ok(())
    }
    fn notify_aborted(&mut self, _: u64) {}
    fn end(&mut self, _: EndOfStream) -> Result<(), PipelineError> {
        Ok(())
    }
}

/// How records are spread over the downstream subtasks.
pub enum Partitioner<T> {
    /// Subtask i sends to subtask i.
    Forward,
    /// Batches go round-robin to every downstream subtask.
    Rebalance { next: usize },
    /// By key group of the key (keyed streams).
    Hash {
        key_group_of: Box<dyn Fn(&T) -> u32 + Send>,
        max_parallelism: u32,
    },
}

impl<T> Partitioner<T> {
    /// Hash partitioning by `key_of`.
    pub fn hash<K: std::hash::Hash>(
        key_of: impl Fn(&T) -> K + Send + 'static,
        max_parallelism: u32,
    ) -> Self {
        Self::Hash {
            key_group_of: Box::new(move |r| key_group_of(&key_of(r), max_parallelism)),
            max_parallelism,
        }
    }
}

/// End of a chain that sends to the next stage's subtasks.
pub struct ExchangeOut<T> {
    subtask: usize,
    channels: Vec<Sender<Message<T>>>,
    partitioner: Partitioner<T>,
    buffers: Vec<Vec<T>>,
    batch_size: usize,
    cancelled: Arc<AtomicBool>,
    sent_records: u64,
}

impl<T: Send> ExchangeOut<T> {
    /// Sends from `subtask` over `channels` (one per downstream subtask).
    pub fn new(
        subtask: usize,
        channels: Vec<Sender<Message<T>>>,
        partitioner: Partitioner<T>,
        batch_size: usize,
        cancelled: Arc<AtomicBool>,
    ) -> Self {
        let buffers = channels.iter().map(|_| Vec::new()).collect();
        Self {
            subtask,
            channels,
            partitioner,
            buffers,
            batch_size: batch_size.max(1),
            cancelled,
            sent_records: 0,
        }
    }

    fn send(&self, channel: usize, message: Message<T>) -> Result<(), PipelineError> {
        let mut message = message;
        loop {
            match self.channels[channel].send_timeout(message, Duration::from_millis(100)) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(m)) => {
                    if self.cancelled.load(Ordering::Relaxed) {
                        return Err(PipelineError::Cancelled);
                    }
                    message = m;
                }
                Err(SendTimeoutError::Disconnected(_)) => return Err(PipelineError::Disconnected),
            }
        }
    }

    fn flush_channel(&mut self, channel: usize) -> Result<(), PipelineError> {
        if !self.buffers[channel].is_empty() {
            // A forward channel takes over the next input batch whole: no buffer to pre-size.
            let capacity = match self.partitioner {
                Partitioner::Forward => 0,
                _ => self.batch_size,
            };
            let batch = std::mem::replace(&mut self.buffers[channel], Vec::with_capacity(capacity));
            self.sent_records += batch.len() as u64;
            self.send(channel, Message::Data(batch))?;
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<(), PipelineError> {
        for c in 0..self.channels.len() {
            self.flush_channel(c)?;
        }
        Ok(())
    }

    fn broadcast(&mut self, message: Message<T>) -> Result<(), PipelineError>
    where
        T: Clone,
    {
        self.flush_all()?;
        for c in 0..self.channels.len() {
            self.send(c, message.clone())?;
        }
        Ok(())
    }
}

impl<T: Clone + Send> Pipeline<T> for ExchangeOut<T> {
    fn open(&mut self, _: &OperatorContext, _: &RestoreView) -> Result<(), PipelineError> {
        Ok(())
    }

    fn batch(&mut self, batch: Vec<T>) -> Result<(), PipelineError> {
        let n = self.channels.len();
        match &mut self.partitioner {
            Partitioner::Forward => {
                let c = self.subtask % n;
                if self.buffers[c].is_empty() {
                    self.buffers[c] = batch;
                } else {
                    self.buffers[c].extend(batch);
                }
            }
            Partitioner::Rebalance { next } => {
                let c = *next % n;
                *next = (*next + 1) % n;
                self.buffers[c].extend(batch);
            }
            Partitioner::Hash {
                key_group_of,
                max_parallelism,
            } => {
                let parallelism = n as u32;
                for record in batch {
                    let kg = key_group_of(&record);
                    let c = subtask_for_key_group(kg, *max_parallelism, parallelism) as usize;
                    self.buffers[c].push(record);
                }
            }
        }
        // Send what is full; the rest goes out at the end of the input batch (low latency, no timer).
        self.flush_all()
    }

    fn watermark(&mut self, watermark: Timestamp) -> Result<(), PipelineError> {
        self.broadcast(Message::Watermark(watermark))
    }

    fn barrier(
        &mut self,
        barrier: &Barrier,
        _: &mut Vec<(String, OperatorSnapshot)>,
    ) -> Result<(), PipelineError> {
        self.broadcast(Message::Barrier(*barrier))
    }

    fn notify_complete(&mut self, _: u64) -> Result<(), PipelineError> {
        Ok(())
    }

    fn notify_aborted(&mut self, _: u64) {}

    fn end(&mut self, end: EndOfStream) -> Result<(), PipelineError> {
        self.broadcast(Message::End(end))
    }
}
