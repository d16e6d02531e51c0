//! The control links of a multi-worker attempt: one TCP connection from every worker to worker 0.
//! Worker 0's coordinator sends each remote task its control messages (barrier triggers, checkpoint
//! complete/aborted, cancel) and, at the end, how the attempt ended; the workers send back their
//! tasks' events (acknowledgements with the uploaded files, declines, finished, failed). A link that
//! breaks ends the attempt on both sides.
//!
//! Watermark alignment rides on the same links: each worker reports the watermarks of its aligned
//! source subtasks to worker 0, and worker 0 sends every worker the whole table (its own subtasks
//! and what the others reported). A report goes out every `update_interval`, and also as soon as a
//! watermark moved a quarter of the drift ([`ReportPacer`], looked at every [`ALIGNMENT_POLL`]):
//! so each process sees every subtask of a group at most about two intervals late in real time,
//! and a few milliseconds late when event time runs far ahead of wall time.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{never, select, tick, unbounded, Receiver, Sender};
use serde::{Deserialize, Serialize};
use streamjob_checkpoint::manifest::Manifest;

use super::node::ClusterNode;
use super::wire::{read_json, write_json};
use super::ClusterError;
use crate::control::{ControlSender, CoordinatorEvent, TaskAck, TaskControl, TaskId};
use crate::coordinator::{AttemptEnd, CoordinatorError};
use crate::types::Timestamp;
use crate::watermark_alignment::{AlignmentHub, ReportPacer};

/// How often the watermark table is looked at for a report that is due.
pub const ALIGNMENT_POLL: Duration = Duration::from_millis(2);

/// The links a formed node holds until the attempt starts.
pub(crate) enum Links {
    /// Worker 0: one link per other worker.
    Coordinator { members: Vec<(u32, TcpStream)> },
    /// Other workers: the link to worker 0.
    Member { coordinator: TcpStream },
}

/// Worker 0 -> worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToMember {
    /// Every worker joined: the attempt starts.
    Start {
        attempt: u64,
        peers: Vec<String>,
        restore: Option<(Manifest, String)>,
    },
    /// This worker is not part of the attempt.
    Reject { reason: String },
    /// A control message for one of the worker's tasks.
    Control { task: TaskId, control: TaskControl },
    /// The attempt ended (the error text when it failed).
    Ended { result: Result<AttemptEnd, String> },
    /// The watermarks of every aligned source subtask, as worker 0 knows them.
    Watermarks {
        watermarks: Vec<(TaskId, Timestamp)>,
    },
}

/// Worker -> worker 0: its tasks' events.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToCoordinator {
    Ack(TaskAck),
    Declined {
        checkpoint_id: u64,
        task: TaskId,
        reason: String,
    },
    SourceFinished(TaskId),
    TaskFinished(TaskId),
    TaskFailed {
        task: TaskId,
        reason: String,
    },
    /// The watermarks of the worker's aligned source subtasks.
    Watermarks {
        watermarks: Vec<(TaskId, Timestamp)>,
    },
}

impl ToCoordinator {
    fn from_event(event: CoordinatorEvent) -> Result<Self, CoordinatorEvent> {
        Ok(match event {
            CoordinatorEvent::Ack(ack) => ToCoordinator::Ack(ack),
            CoordinatorEvent::Declined {
                checkpoint_id,
                task,
                reason,
            } => ToCoordinator::Declined {
                checkpoint_id,
                task,
                reason,
            },
            CoordinatorEvent::SourceFinished(t) => ToCoordinator::SourceFinished(t),
            CoordinatorEvent::TaskFinished(t) => ToCoordinator::TaskFinished(t),
            CoordinatorEvent::TaskFailed { task, reason } => {
                ToCoordinator::TaskFailed { task, reason }
            }
            other @ CoordinatorEvent::Request(_) => return Err(other),
        })
    }

    fn into_event(self) -> Option<CoordinatorEvent> {
        Some(match self {
            ToCoordinator::Ack(ack) => CoordinatorEvent::Ack(ack),
            ToCoordinator::Declined {
                checkpoint_id,
                task,
                reason,
            } => CoordinatorEvent::Declined {
                checkpoint_id,
                task,
                reason,
            },
            ToCoordinator::SourceFinished(t) => CoordinatorEvent::SourceFinished(t),
            ToCoordinator::TaskFinished(t) => CoordinatorEvent::TaskFinished(t),
            ToCoordinator::TaskFailed { task, reason } => {
                CoordinatorEvent::TaskFailed { task, reason }
            }
            ToCoordinator::Watermarks { .. } => return None,
        })
    }
}

/// Worker 0's side of the links, to end the attempt on every worker.
pub(crate) struct MemberLinks {
    outs: Vec<Sender<ToMember>>,
    writers_done: Vec<Receiver<()>>,
    ended: Arc<AtomicBool>,
}

impl MemberLinks {
    /// Tell every worker how the attempt ended and wait (briefly) until it was written.
    pub(crate) fn end_attempt(mut self, result: &Result<AttemptEnd, CoordinatorError>) {
        self.ended.store(true, Ordering::SeqCst);
        let result = match result {
            Ok(end) => Ok(end.clone()),
            Err(e) => Err(e.to_string()),
        };
        for out in &self.outs {
            let _ = out.send(ToMember::Ended {
                result: result.clone(),
            });
        }
        self.outs.clear();
        for done in &self.writers_done {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for MemberLinks {
    fn drop(&mut self) {
        // Also stops the watermark broadcast, which holds its own senders to the writers.
        self.ended.store(true, Ordering::SeqCst);
    }
}

impl ClusterNode {
    /// Worker 0: start the links. `remote` lists every task of the other workers with its worker;
    /// the result holds a control sender per remote task and the handle that ends the attempt.
    pub(crate) fn start_coordinator_links(
        &self,
        remote: &[(TaskId, u32)],
        events: &Sender<CoordinatorEvent>,
        hub: Arc<AlignmentHub>,
    ) -> Result<(HashMap<TaskId, ControlSender>, MemberLinks), ClusterError> {
        let Some(Links::Coordinator { members }) = self.take_links() else {
            return Err(ClusterError::Layout(
                "the attempt's links were already started or this is not worker 0".into(),
            ));
        };
        let ended = Arc::new(AtomicBool::new(false));
        let mut senders = HashMap::new();
        let mut outs = Vec::new();
        let mut writers_done = Vec::new();
        for (worker, stream) in members {
            let reader = stream.try_clone()?;
            let (out_tx, out_rx) = unbounded::<ToMember>();
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            std::thread::Builder::new()
                .name(format!("link-out-{worker}"))
                .spawn(move || {
                    write_links(stream, &out_rx);
                    let _ = done_tx.send(());
                })?;
            // A lost worker is reported as a failure of one of its tasks.
            let first_task = remote
                .iter()
                .find(|(_, w)| *w == worker)
                .map(|(t, _)| *t)
                .unwrap_or(TaskId {
                    vertex: 0,
                    subtask: worker,
                });
            let events = events.clone();
            let link_ended = Arc::clone(&ended);
            let link_hub = Arc::clone(&hub);
            std::thread::Builder::new()
                .name(format!("link-in-{worker}"))
                .spawn(move || {
                    read_member(reader, worker, first_task, &events, &link_ended, &link_hub)
                })?;
            for (task, _) in remote.iter().filter(|(_, w)| *w == worker) {
                let out = out_tx.clone();
                let task = *task;
                let send = move |control: TaskControl| {
                    out.send(ToMember::Control { task, control }).is_ok()
                };
                senders.insert(task, ControlSender::Remote(Arc::new(send)));
            }
            outs.push(out_tx);
            writers_done.push(done_rx);
        }
        if let Some(pacer) = hub.report_pacer() {
            let outs = outs.clone();
            let ended = Arc::clone(&ended);
            std::thread::Builder::new()
                .name("align-broadcast".into())
                .spawn(move || broadcast_watermarks(&hub, pacer, &outs, &ended))?;
        }
        Ok((
            senders,
            MemberLinks {
                outs,
                writers_done,
                ended,
            },
        ))
    }

    /// Other workers: forward the local tasks' `events` to worker 0 and its control messages to
    /// `local` tasks. The receiver gets how the attempt ended (or that the link broke); a broken
    /// link also cancels the local tasks.
    pub(crate) fn start_member_links(
        &self,
        local: HashMap<TaskId, Sender<TaskControl>>,
        events: Receiver<CoordinatorEvent>,
        cancelled: Arc<AtomicBool>,
        hub: Arc<AlignmentHub>,
    ) -> Result<Receiver<Result<AttemptEnd, String>>, ClusterError> {
        let Some(Links::Member { coordinator }) = self.take_links() else {
            return Err(ClusterError::Layout(
                "the attempt's link was already started or this is worker 0".into(),
            ));
        };
        let writer = coordinator.try_clone()?;
        let writer_hub = Arc::clone(&hub);
        std::thread::Builder::new()
            .name("link-out".into())
            .spawn(move || forward_events(writer, &events, &writer_hub))?;
        let (end_tx, end_rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("link-in".into())
            .spawn(move || {
                let result = read_coordinator(coordinator, &local, &hub);
                if result.is_err() {
                    cancelled.store(true, Ordering::SeqCst);
                    for control in local.values() {
                        let _ = control.send(TaskControl::Cancel);
                    }
                }
                let _ = end_tx.send(result);
            })?;
        Ok(end_rx)
    }

    fn take_links(&self) -> Option<Links> {
        self.inner.links.lock().ok().and_then(|mut l| l.take())
    }
}

fn write_links(mut stream: TcpStream, out: &Receiver<ToMember>) {
    while let Ok(message) = out.recv() {
        let last = matches!(message, ToMember::Ended { .. });
        if let Err(e) = write_json(&mut stream, &message) {
            tracing::warn!(error = %e, "control link to a worker broke");
            return;
        }
        if last {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

fn read_member(
    mut stream: TcpStream,
    worker: u32,
    first_task: TaskId,
    events: &Sender<CoordinatorEvent>,
    ended: &AtomicBool,
    hub: &AlignmentHub,
) {
    let why = loop {
        match read_json::<ToCoordinator>(&mut stream) {
            Ok(Some(ToCoordinator::Watermarks { watermarks })) => hub.apply(&watermarks),
            Ok(Some(message)) => {
                if let Some(event) = message.into_event() {
                    if events.send(event).is_err() {
                        return;
                    }
                }
            }
            Ok(None) => break "closed its control link".to_string(),
            Err(e) => break format!("control link failed: {e}"),
        }
    };
    if !ended.load(Ordering::SeqCst) {
        tracing::error!(worker, reason = %why, "a worker of the attempt is gone");
        let _ = events.send(CoordinatorEvent::TaskFailed {
            task: first_task,
            reason: format!("worker {worker} is gone ({why})"),
        });
    }
}

/// Worker 0: send every worker the watermark table when a report is due, until the attempt ended.
fn broadcast_watermarks(
    hub: &AlignmentHub,
    mut pacer: ReportPacer,
    outs: &[Sender<ToMember>],
    ended: &AtomicBool,
) {
    loop {
        std::thread::sleep(ALIGNMENT_POLL);
        if ended.load(Ordering::SeqCst) {
            return;
        }
        let Some(watermarks) = pacer.due(hub.watermarks(), std::time::Instant::now()) else {
            continue;
        };
        let mut delivered = false;
        for out in outs {
            delivered |= out
                .send(ToMember::Watermarks {
                    watermarks: watermarks.clone(),
                })
                .is_ok();
        }
        if !delivered {
            return;
        }
    }
}

/// Other workers: forward the tasks' events and, when a report is due, the local watermarks.
fn forward_events(mut stream: TcpStream, events: &Receiver<CoordinatorEvent>, hub: &AlignmentHub) {
    let mut pacer = hub.report_pacer();
    let ticks = if pacer.is_some() {
        tick(ALIGNMENT_POLL)
    } else {
        never()
    };
    loop {
        let event = select! {
            recv(events) -> event => match event {
                Ok(event) => event,
                Err(_) => return,
            },
            recv(ticks) -> _ => {
                let due = pacer
                    .as_mut()
                    .and_then(|p| p.due(hub.watermarks(), std::time::Instant::now()));
                let Some(watermarks) = due else {
                    continue;
                };
                let report = ToCoordinator::Watermarks { watermarks };
                if let Err(e) = write_json(&mut stream, &report) {
                    tracing::warn!(error = %e, "control link to the coordinator broke");
                    return;
                }
                continue;
            }
        };
        match ToCoordinator::from_event(event) {
            Ok(message) => {
                if let Err(e) = write_json(&mut stream, &message) {
                    tracing::warn!(error = %e, "control link to the coordinator broke");
                    return;
                }
            }
            Err(CoordinatorEvent::Request(request)) => {
                let _ = request.reply.send(Err(
                    "snapshots of a multi-worker job are taken by worker 0; send the request there"
                        .into(),
                ));
            }
            Err(_) => {}
        }
    }
}

fn read_coordinator(
    mut stream: TcpStream,
    local: &HashMap<TaskId, Sender<TaskControl>>,
    hub: &AlignmentHub,
) -> Result<AttemptEnd, String> {
    loop {
        match read_json::<ToMember>(&mut stream) {
            Ok(Some(ToMember::Watermarks { watermarks })) => hub.apply(&watermarks),
            Ok(Some(ToMember::Control { task, control })) => {
                if let Some(tx) = local.get(&task) {
                    let _ = tx.send(control);
                }
            }
            Ok(Some(ToMember::Ended { result })) => return result,
            Ok(Some(other)) => {
                return Err(format!("unexpected message on the control link: {other:?}"))
            }
            Ok(None) => return Err("the coordinator (worker 0) closed the control link".into()),
            Err(e) => return Err(format!("the control link to worker 0 failed: {e}")),
        }
    }
}
