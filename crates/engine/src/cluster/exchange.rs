//! Data channels that cross worker processes. The sending task writes into a bounded local channel
//! as usual; a pump thread drains it onto one TCP connection (bincode frames, flushed whenever the
//! channel runs empty); on the receiving worker a pump reads the frames into the bounded channel the
//! receiving task reads. Both buffers are bounded and TCP has flow control, so a slow consumer slows
//! the producer down (backpressure) and memory stays bounded. A connection that ends without the
//! stream's `End` message is a lost upstream: the receiving task fails and with it the attempt.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use super::node::{connect_until, ClusterNode, Greeting};
use super::placement::Placement;
use super::wire::{read_frame, write_frame, write_json};
use crate::types::{Data, Message};

/// Identifies one channel of one exchange: upstream subtask -> downstream subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct ChannelKey {
    /// Exchange number in graph order (the same in every worker: they build the same graph).
    pub exchange: u32,
    /// Sending subtask.
    pub up: u32,
    /// Receiving subtask.
    pub down: u32,
}

type Pump = Box<dyn FnOnce(TcpStream) + Send>;

enum Slot {
    Stream(TcpStream),
    Pump(Pump),
}

/// Where an incoming connection meets the channel it feeds, whichever of the two comes first.
#[derive(Default)]
pub(crate) struct Rendezvous {
    slots: Mutex<HashMap<(u64, ChannelKey), Slot>>,
}

impl Rendezvous {
    pub(crate) fn offer_stream(&self, attempt: u64, key: ChannelKey, stream: TcpStream) {
        let pump = {
            let Ok(mut slots) = self.slots.lock() else {
                return;
            };
            match slots.remove(&(attempt, key)) {
                Some(Slot::Pump(pump)) => pump,
                // A second connection for the same channel replaces the first (never both).
                Some(Slot::Stream(_)) | None => {
                    slots.insert((attempt, key), Slot::Stream(stream));
                    return;
                }
            }
        };
        spawn_pump(key, pump, stream);
    }

    fn offer_pump(&self, attempt: u64, key: ChannelKey, pump: Pump) {
        let stream = {
            let Ok(mut slots) = self.slots.lock() else {
                return;
            };
            match slots.remove(&(attempt, key)) {
                Some(Slot::Stream(stream)) => stream,
                Some(Slot::Pump(_)) | None => {
                    slots.insert((attempt, key), Slot::Pump(pump));
                    return;
                }
            }
        };
        spawn_pump(key, pump, stream);
    }
}

fn spawn_pump(key: ChannelKey, pump: Pump, stream: TcpStream) {
    let name = format!("in-{}-{}-{}", key.exchange, key.up, key.down);
    if let Err(e) = std::thread::Builder::new()
        .name(name)
        .spawn(move || pump(stream))
    {
        tracing::error!(error = %e, "cannot start an exchange thread; the channel is lost");
    }
}

impl ClusterNode {
    /// The placement of `parallelism` subtasks over this attempt's workers.
    pub(crate) fn placement(&self, parallelism: u32) -> Result<Placement, String> {
        Placement::new(self.inner.workers, parallelism)
    }

    /// Route one channel of an exchange. Between two subtasks of this worker, or of two other
    /// workers, the channel stays as it is (in the second case nobody here uses it). From a subtask
    /// here to one elsewhere, a pump carries `rx` over TCP and the returned receiver is a stand-in;
    /// the other way round a pump feeds `tx` from TCP and the returned sender is a stand-in.
    pub(crate) fn bridge<T: Data>(
        &self,
        key: ChannelKey,
        parallelism: u32,
        tx: Sender<Message<T>>,
        rx: Receiver<Message<T>>,
        cancelled: &Arc<AtomicBool>,
    ) -> (Sender<Message<T>>, Receiver<Message<T>>) {
        let Ok(placement) = self.placement(parallelism) else {
            return (tx, rx);
        };
        let me = self.inner.worker;
        let (up, down) = (placement.worker_of(key.up), placement.worker_of(key.down));
        if up == me && down != me {
            self.send_remote(key, down, rx);
            (tx, crossbeam_channel::bounded(0).1)
        } else if up != me && down == me {
            self.receive_remote(key, tx, Arc::clone(cancelled));
            (crossbeam_channel::bounded(0).0, rx)
        } else {
            (tx, rx)
        }
    }

    /// Carry `rx` (a local upstream subtask's channel) to `to_worker`.
    fn send_remote<T: Data>(&self, key: ChannelKey, to_worker: u32, rx: Receiver<Message<T>>) {
        let Some(addr) = self.inner.peers.get(to_worker as usize).cloned() else {
            tracing::error!(
                worker = to_worker,
                "no address for worker; the channel is lost"
            );
            return;
        };
        let greeting = Greeting::Data {
            job: self.inner.job.clone(),
            attempt: self.inner.attempt,
            key,
        };
        let deadline = Instant::now() + self.inner.connect_timeout;
        let name = format!("out-{}-{}-{}", key.exchange, key.up, key.down);
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || pump_out(&addr, &greeting, &rx, deadline));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start an exchange thread; the channel is lost");
        }
    }

    /// Feed `tx` (a local downstream subtask's channel) from the connection of its remote upstream.
    fn receive_remote<T: Data>(
        &self,
        key: ChannelKey,
        tx: Sender<Message<T>>,
        cancelled: Arc<AtomicBool>,
    ) {
        let pump: Pump = Box::new(move |stream| pump_in(stream, &tx, &cancelled));
        self.inner
            .rendezvous
            .offer_pump(self.inner.attempt, key, pump);
    }
}

fn pump_out<T: Data>(
    addr: &str,
    greeting: &Greeting,
    rx: &Receiver<Message<T>>,
    deadline: Instant,
) {
    let mut stream = match connect_until(addr, deadline) {
        Ok(s) => s,
        Err(reason) => {
            // Dropping `rx` fails the sending task: the attempt ends and is restarted.
            tracing::error!(peer = addr, %reason, "cannot open a data channel to a worker");
            return;
        }
    };
    if let Err(e) = write_json(&mut stream, greeting) {
        tracing::error!(peer = addr, error = %e, "data channel greeting failed");
        return;
    }
    let mut out = BufWriter::with_capacity(256 << 10, stream);
    let mut buf = Vec::with_capacity(64 << 10);
    // An upstream that goes away without `End` (it failed) closes the connection: the receiver
    // sees the stream end early and fails, which is what must happen.
    while let Ok(message) = rx.recv() {
        let end = matches!(message, Message::End(_));
        buf.clear();
        if let Err(e) = bincode::serialize_into(&mut buf, &message) {
            tracing::error!(error = %e, "cannot encode records for a remote worker");
            return;
        }
        let written = write_frame(&mut out, &buf).and_then(|()| {
            if end || rx.is_empty() {
                out.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            tracing::warn!(peer = addr, error = %e, "data channel to a worker broke");
            return;
        }
        if end {
            return;
        }
    }
}

fn pump_in<T: Data>(stream: TcpStream, tx: &Sender<Message<T>>, cancelled: &AtomicBool) {
    let peer = stream.peer_addr().ok();
    let mut input = BufReader::with_capacity(256 << 10, stream);
    let mut buf = Vec::new();
    loop {
        match read_frame(&mut input, &mut buf) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(?peer, error = %e, "data channel from a worker broke");
                return;
            }
        }
        let mut message: Message<T> = match bincode::deserialize(&buf) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(?peer, error = %e, "undecodable records from a worker");
                return;
            }
        };
        let end = matches!(message, Message::End(_));
        loop {
            match tx.send_timeout(message, Duration::from_millis(100)) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(m)) => {
                    if cancelled.load(Ordering::Relaxed) {
                        return;
                    }
                    message = m;
                }
                Err(SendTimeoutError::Disconnected(_)) => return,
            }
        }
        if end {
            return;
        }
    }
}
