//! Forming the workers of one attempt. Every worker binds its exchange port first; worker 0 (the
//! coordinator) records the attempt, waits until every other worker said hello, and answers each
//! with the attempt, the peer table and the snapshot to restore; the others connect to it (retrying
//! while it starts) and wait for that answer. Connections that arrive on the exchange port are
//! either such hellos or data channels, told apart by their first frame.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};
use streamjob_checkpoint::manifest::Manifest;

use super::exchange::{ChannelKey, Rendezvous};
use super::link::{Links, ToMember};
use super::wire::{read_json, write_json};
use super::ClusterError;

/// How this worker takes part in an attempt.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Job name (connections of another job are refused).
    pub job: String,
    /// This worker's index (0 hosts the coordinator).
    pub worker: u32,
    /// Workers of the attempt.
    pub workers: u32,
    /// Where to listen for the exchange (data channels and, on worker 0, the control links).
    pub listen: SocketAddr,
    /// The address other workers use to reach this one (`host:port`).
    pub advertise: String,
    /// Worker 0's exchange address; needed by every other worker.
    pub coordinator: Option<String>,
    /// How long forming the attempt may take before it fails.
    pub form_timeout: Duration,
}

/// The first frame on every exchange connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Greeting {
    /// A worker joins the coordinator.
    Member {
        job: String,
        worker: u32,
        attempt: Option<u64>,
        advertise: String,
    },
    /// A data channel from `key.up` to `key.down`.
    Data {
        job: String,
        attempt: u64,
        key: ChannelKey,
    },
}

pub(crate) struct Hello {
    worker: u32,
    attempt: Option<u64>,
    advertise: String,
    stream: TcpStream,
}

/// A bound exchange port, before the attempt formed.
pub struct ClusterBinding {
    spec: ClusterSpec,
    rendezvous: Arc<Rendezvous>,
    hellos: Receiver<Hello>,
    local_addr: SocketAddr,
}

/// What formation settled: the attempt and the snapshot every worker restores.
#[derive(Debug, Clone)]
pub struct Formed {
    /// Attempt number.
    pub attempt: u64,
    /// Snapshot to restore (manifest and location), the same on every worker.
    pub restore: Option<(Manifest, String)>,
}

/// This worker's membership in a formed attempt: the peer table, the data rendezvous and the control
/// links (to every member on worker 0, to the coordinator elsewhere).
#[derive(Clone)]
pub struct ClusterNode {
    pub(crate) inner: Arc<NodeInner>,
}

pub(crate) struct NodeInner {
    pub(crate) job: String,
    pub(crate) worker: u32,
    pub(crate) workers: u32,
    pub(crate) attempt: u64,
    pub(crate) peers: Vec<String>,
    pub(crate) rendezvous: Arc<Rendezvous>,
    pub(crate) links: Mutex<Option<Links>>,
    pub(crate) connect_timeout: Duration,
}

impl ClusterBinding {
    /// Bind the exchange port and start accepting connections.
    pub fn bind(spec: ClusterSpec) -> Result<Self, ClusterError> {
        if spec.workers == 0 || spec.worker >= spec.workers {
            return Err(ClusterError::Layout(format!(
                "worker index {} is not below the number of workers {}",
                spec.worker, spec.workers
            )));
        }
        if spec.worker > 0 && spec.coordinator.is_none() {
            return Err(ClusterError::Layout(
                "a worker other than 0 needs the coordinator's address (--coordinator)".into(),
            ));
        }
        let listener = TcpListener::bind(spec.listen).map_err(|source| ClusterError::Listen {
            addr: spec.listen,
            source,
        })?;
        let local_addr = listener.local_addr()?;
        let rendezvous = Arc::new(Rendezvous::default());
        let (hello_tx, hellos) = unbounded();
        let accept_rendezvous = Arc::clone(&rendezvous);
        let job = spec.job.clone();
        let is_coordinator = spec.worker == 0;
        std::thread::Builder::new()
            .name("exchange-accept".into())
            .spawn(move || {
                accept_loop(listener, job, is_coordinator, accept_rendezvous, hello_tx)
            })?;
        Ok(Self {
            spec,
            rendezvous,
            hellos,
            local_addr,
        })
    }

    /// The bound address (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Worker 0: wait for every other worker, then tell each the attempt, the peers and the restore.
    pub fn form_as_coordinator(
        self,
        attempt: u64,
        restore: Option<(Manifest, String)>,
    ) -> Result<ClusterNode, ClusterError> {
        let spec = &self.spec;
        if spec.worker != 0 {
            return Err(ClusterError::Layout(
                "only worker 0 coordinates the attempt".into(),
            ));
        }
        let deadline = Instant::now() + spec.form_timeout;
        let mut joined: BTreeMap<u32, Hello> = BTreeMap::new();
        while joined.len() + 1 < spec.workers as usize {
            let wait = deadline.saturating_duration_since(Instant::now());
            let mut hello = match self.hellos.recv_timeout(wait) {
                Ok(h) => h,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let missing = (1..spec.workers)
                        .filter(|w| !joined.contains_key(w))
                        .collect();
                    return Err(ClusterError::FormTimeout {
                        missing,
                        waited_s: spec.form_timeout.as_secs(),
                    });
                }
            };
            let refusal = if hello.worker == 0 || hello.worker >= spec.workers {
                Some(format!(
                    "worker index {} is outside 1..{} of this attempt",
                    hello.worker, spec.workers
                ))
            } else if hello.attempt.is_some_and(|a| a != attempt) {
                Some(format!(
                    "worker {} belongs to attempt {:?}, this is attempt {attempt}",
                    hello.worker, hello.attempt
                ))
            } else if joined.contains_key(&hello.worker) {
                Some(format!("worker {} already joined", hello.worker))
            } else {
                None
            };
            if let Some(reason) = refusal {
                tracing::warn!(worker = hello.worker, %reason, "refusing a worker");
                let _ = write_json(&mut hello.stream, &ToMember::Reject { reason });
                continue;
            }
            tracing::info!(worker = hello.worker, address = %hello.advertise, "worker joined");
            joined.insert(hello.worker, hello);
        }
        let mut peers = vec![spec.advertise.clone()];
        peers.extend(joined.values().map(|h| h.advertise.clone()));
        let mut members = Vec::new();
        for (worker, mut hello) in joined {
            write_json(
                &mut hello.stream,
                &ToMember::Start {
                    attempt,
                    peers: peers.clone(),
                    restore: restore.clone(),
                },
            )?;
            members.push((worker, hello.stream));
        }
        tracing::info!(
            attempt,
            workers = spec.workers,
            "every worker joined: the attempt starts"
        );
        Ok(self.into_node(attempt, peers, Links::Coordinator { members }))
    }

    /// Workers 1..n: join the coordinator and learn the attempt, the peers and the restore.
    pub fn join(
        self,
        expected_attempt: Option<u64>,
    ) -> Result<(ClusterNode, Formed), ClusterError> {
        let spec = &self.spec;
        let addr = spec
            .coordinator
            .clone()
            .ok_or_else(|| ClusterError::Layout("no coordinator address".into()))?;
        let deadline = Instant::now() + spec.form_timeout;
        let mut stream =
            connect_until(&addr, deadline).map_err(|reason| ClusterError::Unreachable {
                addr: addr.clone(),
                waited_s: spec.form_timeout.as_secs(),
                reason,
            })?;
        write_json(
            &mut stream,
            &Greeting::Member {
                job: spec.job.clone(),
                worker: spec.worker,
                attempt: expected_attempt,
                advertise: spec.advertise.clone(),
            },
        )?;
        // The coordinator answers once every worker joined (bounded by its own form timeout).
        stream.set_read_timeout(Some(spec.form_timeout * 2))?;
        let answer: Option<ToMember> = read_json(&mut stream)?;
        stream.set_read_timeout(None)?;
        match answer {
            Some(ToMember::Start {
                attempt,
                peers,
                restore,
            }) => {
                if peers.len() != spec.workers as usize {
                    return Err(ClusterError::Rejected(format!(
                        "the coordinator runs {} workers, this worker was told {}",
                        peers.len(),
                        spec.workers
                    )));
                }
                tracing::info!(attempt, worker = spec.worker, "joined the attempt");
                let formed = Formed {
                    attempt,
                    restore: restore.clone(),
                };
                let node = self.into_node(
                    attempt,
                    peers,
                    Links::Member {
                        coordinator: stream,
                    },
                );
                Ok((node, formed))
            }
            Some(ToMember::Reject { reason }) => Err(ClusterError::Rejected(reason)),
            Some(_) | None => Err(ClusterError::Rejected(
                "the coordinator closed the connection without starting the attempt".into(),
            )),
        }
    }

    fn into_node(self, attempt: u64, peers: Vec<String>, links: Links) -> ClusterNode {
        ClusterNode {
            inner: Arc::new(NodeInner {
                job: self.spec.job,
                worker: self.spec.worker,
                workers: self.spec.workers,
                attempt,
                peers,
                rendezvous: self.rendezvous,
                links: Mutex::new(Some(links)),
                connect_timeout: self.spec.form_timeout,
            }),
        }
    }
}

impl ClusterNode {
    /// This worker's index.
    pub fn worker(&self) -> u32 {
        self.inner.worker
    }
    /// Workers of the attempt.
    pub fn workers(&self) -> u32 {
        self.inner.workers
    }
    /// The attempt.
    pub fn attempt(&self) -> u64 {
        self.inner.attempt
    }
    /// True on worker 0.
    pub fn is_coordinator(&self) -> bool {
        self.inner.worker == 0
    }
}

/// Connect to `addr`, retrying until `deadline` (the peer may still be starting).
pub(crate) fn connect_until(addr: &str, deadline: Instant) -> Result<TcpStream, String> {
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    job: String,
    is_coordinator: bool,
    rendezvous: Arc<Rendezvous>,
    hellos: Sender<Hello>,
) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let job = job.clone();
        let rendezvous = Arc::clone(&rendezvous);
        let hellos = hellos.clone();
        // Read the greeting off the accept thread: a slow or silent peer must not block others.
        let _ = std::thread::Builder::new()
            .name("exchange-greet".into())
            .spawn(move || greet(stream, &job, is_coordinator, &rendezvous, &hellos));
    }
}

fn greet(
    mut stream: TcpStream,
    job: &str,
    is_coordinator: bool,
    rendezvous: &Rendezvous,
    hellos: &Sender<Hello>,
) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let greeting: Greeting = match read_json(&mut stream) {
        Ok(Some(g)) => g,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(peer = ?stream.peer_addr().ok(), error = %e, "dropping an exchange connection without a valid greeting");
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    match greeting {
        Greeting::Member {
            job: their_job,
            worker,
            attempt,
            advertise,
        } => {
            if !is_coordinator {
                let reason = "this worker is not the job coordinator (worker 0)".to_string();
                let _ = write_json(&mut stream, &ToMember::Reject { reason });
            } else if their_job != job {
                let reason = format!("this is job {job:?}, not {their_job:?}");
                let _ = write_json(&mut stream, &ToMember::Reject { reason });
            } else {
                let _ = hellos.send(Hello {
                    worker,
                    attempt,
                    advertise,
                    stream,
                });
            }
        }
        Greeting::Data {
            job: their_job,
            attempt,
            key,
        } => {
            if their_job == job {
                rendezvous.offer_stream(attempt, key, stream);
            }
        }
    }
}
