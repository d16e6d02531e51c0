//! The DataStream API (shaped after Flink's): a `StreamEnv` builds a job graph from sources,
//! transformations, key_by exchanges, keyed functions, windows and sinks. Operators between two
//! exchanges are chained into one task (no serialization, no queue between them). The graph is built
//! fresh for every job attempt, so every attempt gets new operators and channels.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::cluster::{ChannelKey, ClusterNode};
use crate::config::{JobConfig, WatermarkAlignment};
use crate::operator::StreamOperator;
use crate::operators::basic::{BoundedOutOfOrderness, Filter, FlatMap, Map};
use crate::operators::keyed_process::{KeyedProcessFunction, KeyedProcessOperator};
use crate::operators::window::{AggregateFunction, WindowAggregate, WindowAssigner, WindowResult};
use crate::pipeline::{Discard, ExchangeOut, OperatorPipeline, Partitioner, Pipeline};
use crate::source::{run_source_task, SourceFunction};
use crate::task::{run_task, TaskEnv, TaskError};
use crate::types::{Data, Key, Message, Timestamp};

/// The body of one subtask, run on its own thread.
pub(crate) type TaskBody = Box<dyn FnOnce(TaskEnv) -> Result<(), TaskError> + Send>;
/// Builds the rest of a chain for a subtask index.
type TailFactory<T> = Box<dyn FnMut(u32) -> Box<dyn Pipeline<T>>>;

/// One vertex of the job graph: a chain of operators run by `parallelism` subtasks.
pub(crate) struct Vertex {
    pub(crate) name: String,
    pub(crate) is_source: bool,
    /// Watermark alignment of a source vertex.
    pub(crate) alignment: Option<WatermarkAlignment>,
    pub(crate) bodies: Vec<TaskBody>,
}

/// A built job graph, ready to run as one attempt.
pub struct JobGraph {
    pub(crate) config: JobConfig,
    pub(crate) vertices: Vec<Vertex>,
    pub(crate) operator_ids: BTreeSet<String>,
    pub(crate) cancelled: Arc<AtomicBool>,
    pub(crate) cluster: Option<ClusterNode>,
}

impl JobGraph {
    /// Operator ids (state in snapshots is keyed by them).
    pub fn operator_ids(&self) -> &BTreeSet<String> {
        &self.operator_ids
    }
    /// Vertex names in topological order.
    pub fn vertex_names(&self) -> Vec<String> {
        self.vertices.iter().map(|v| v.name.clone()).collect()
    }
}

#[derive(Default)]
struct GraphState {
    vertices: Vec<Vertex>,
    operator_ids: BTreeSet<String>,
    exchanges: u32,
}

/// Builds a job graph (Flink `StreamExecutionEnvironment`).
#[derive(Clone)]
pub struct StreamEnv {
    config: Rc<JobConfig>,
    graph: Rc<RefCell<GraphState>>,
    cancelled: Arc<AtomicBool>,
    cluster: Option<ClusterNode>,
}

impl StreamEnv {
    /// An environment for a job with this configuration, run by one process.
    pub fn new(config: JobConfig) -> Self {
        Self {
            config: Rc::new(config),
            graph: Rc::new(RefCell::new(GraphState::default())),
            cancelled: Arc::new(AtomicBool::new(false)),
            cluster: None,
        }
    }

    /// An environment for this worker's part of a multi-worker attempt: the graph is the whole job
    /// (every worker builds the same one); channels to subtasks of other workers cross the network
    /// and only this worker's subtasks run here. Fails when the layout is impossible.
    pub fn distributed(config: JobConfig, cluster: ClusterNode) -> Result<Self, String> {
        cluster.placement(config.parallelism)?;
        let mut env = Self::new(config);
        env.cluster = Some(cluster);
        Ok(env)
    }

    /// The job configuration.
    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    fn parallelism(&self) -> u32 {
        self.config.parallelism
    }

    /// Register an operator id; ids must be unique (a repeated id gets a numeric suffix).
    fn register(&self, uid: &str) -> String {
        let mut graph = self.graph.borrow_mut();
        let mut id = uid.to_string();
        let mut n = 2;
        while graph.operator_ids.contains(&id) {
            id = format!("{uid}-{n}");
            n += 1;
        }
        graph.operator_ids.insert(id.clone());
        id
    }

    fn add_vertex(
        &self,
        name: String,
        is_source: bool,
        alignment: Option<WatermarkAlignment>,
        bodies: Vec<TaskBody>,
    ) {
        self.graph.borrow_mut().vertices.push(Vertex {
            name,
            is_source,
            alignment,
            bodies,
        });
    }

    /// A parallel source; `factory(subtask)` creates the instance of each subtask.
    pub fn source<T: Data>(
        &self,
        uid: &str,
        factory: impl Fn(u32) -> Box<dyn SourceFunction<T>> + 'static,
    ) -> DataStream<T> {
        self.source_with_alignment(uid, None, factory)
    }

    /// A parallel source whose subtasks take part in watermark alignment (Flink
    /// `fromSource(source, WatermarkStrategy...withWatermarkAlignment(group, maxDrift,
    /// updateInterval), name)`); `None` is [`StreamEnv::source`].
    pub fn source_with_alignment<T: Data>(
        &self,
        uid: &str,
        alignment: Option<WatermarkAlignment>,
        factory: impl Fn(u32) -> Box<dyn SourceFunction<T>> + 'static,
    ) -> DataStream<T> {
        let id = self.register(uid);
        let env = self.clone();
        let close_env = self.clone();
        DataStream {
            env,
            close: Box::new(move |mut tail: TailFactory<T>| {
                let bodies = (0..close_env.parallelism())
                    .map(|s| {
                        let source = factory(s);
                        let pipeline = tail(s);
                        let source_id = id.clone();
                        Box::new(move |env: TaskEnv| {
                            run_source_task(source, source_id, pipeline, env)
                        }) as TaskBody
                    })
                    .collect();
                close_env.add_vertex(format!("source:{id}"), true, alignment, bodies);
            }),
        }
    }

    /// The finished graph. Every stream must have ended in a sink.
    pub fn into_graph(self) -> JobGraph {
        let state = std::mem::take(&mut *self.graph.borrow_mut());
        JobGraph {
            config: (*self.config).clone(),
            vertices: state.vertices,
            operator_ids: state.operator_ids,
            cancelled: self.cancelled,
            cluster: self.cluster,
        }
    }
}

/// A stream of records of type `T`.
pub struct DataStream<T> {
    env: StreamEnv,
    close: Box<dyn FnOnce(TailFactory<T>)>,
}

impl<T: Data> DataStream<T> {
    /// Append an operator (`factory(subtask)` creates each instance) with a stable id.
    pub fn transform<U: Data>(
        self,
        uid: &str,
        factory: impl Fn(u32) -> Box<dyn StreamOperator<T, U>> + 'static,
    ) -> DataStream<U> {
        let id = self.env.register(uid);
        let close = self.close;
        DataStream {
            env: self.env,
            close: Box::new(move |mut tail: TailFactory<U>| {
                close(Box::new(move |s| {
                    Box::new(OperatorPipeline::new(id.clone(), factory(s), tail(s)))
                }));
            }),
        }
    }

    /// One output per record.
    pub fn map<U: Data>(
        self,
        uid: &str,
        f: impl Fn(T) -> U + Clone + Send + 'static,
    ) -> DataStream<U> {
        self.transform(uid, move |_| Box::new(Map::new(f.clone())))
    }

    /// Keep the records `f` accepts.
    pub fn filter(
        self,
        uid: &str,
        f: impl Fn(&T) -> bool + Clone + Send + 'static,
    ) -> DataStream<T> {
        self.transform(uid, move |_| Box::new(Filter::new(f.clone())))
    }

    /// Zero or more outputs per record.
    pub fn flat_map<U: Data, It: IntoIterator<Item = U> + 'static>(
        self,
        uid: &str,
        f: impl Fn(T) -> It + Clone + Send + 'static,
    ) -> DataStream<U> {
        self.transform(uid, move |_| Box::new(FlatMap::new(f.clone())))
    }

    /// Watermarks trailing the largest event time by `bound_ms` (bounded out-of-orderness).
    pub fn assign_watermarks(
        self,
        uid: &str,
        timestamp_of: impl Fn(&T) -> Timestamp + Clone + Send + 'static,
        bound_ms: i64,
    ) -> DataStream<T> {
        self.transform(uid, move |_| {
            Box::new(BoundedOutOfOrderness::new(timestamp_of.clone(), bound_ms))
        })
    }

    fn exchange(
        self,
        name: &str,
        partitioner: impl Fn() -> Partitioner<T> + 'static,
    ) -> DataStream<T> {
        let env = self.env.clone();
        let p = env.parallelism() as usize;
        let capacity = env.config.channel_capacity;
        let batch_size = env.config.batch_size;
        // senders[up][down], receivers[down][up]
        let mut senders: Vec<Vec<Sender<Message<T>>>> =
            (0..p).map(|_| Vec::with_capacity(p)).collect();
        let mut receivers: Vec<Vec<Receiver<Message<T>>>> =
            (0..p).map(|_| Vec::with_capacity(p)).collect();
        let exchange = {
            let mut graph = env.graph.borrow_mut();
            graph.exchanges += 1;
            graph.exchanges - 1
        };
        let cancelled = Arc::clone(&env.cancelled);
        for (up, up_senders) in senders.iter_mut().enumerate() {
            for (down, down_receivers) in receivers.iter_mut().enumerate() {
                let (tx, rx) = bounded(capacity);
                let key = ChannelKey {
                    exchange,
                    up: up as u32,
                    down: down as u32,
                };
                let (tx, rx) = match &env.cluster {
                    Some(cluster) => cluster.bridge(key, p as u32, tx, rx, &cancelled),
                    None => (tx, rx),
                };
                up_senders.push(tx);
                down_receivers.push(rx);
            }
        }
        (self.close)(Box::new(move |s| {
            let channels = std::mem::take(&mut senders[s as usize]);
            Box::new(ExchangeOut::new(
                s as usize,
                channels,
                partitioner(),
                batch_size,
                Arc::clone(&cancelled),
            ))
        }));
        let close_env = env.clone();
        let name = name.to_string();
        DataStream {
            env,
            close: Box::new(move |mut tail: TailFactory<T>| {
                let bodies = receivers
                    .into_iter()
                    .enumerate()
                    .map(|(s, inputs)| {
                        let pipeline = tail(s as u32);
                        Box::new(move |env: TaskEnv| run_task(inputs, pipeline, env)) as TaskBody
                    })
                    .collect();
                close_env.add_vertex(name, false, None, bodies);
            }),
        }
    }

    /// Spread records round-robin over the next operator's subtasks.
    pub fn rebalance(self) -> DataStream<T> {
        self.exchange("rebalance", || Partitioner::Rebalance { next: 0 })
    }

    /// Partition by key: every record of a key goes to the subtask owning its key group.
    pub fn key_by<K: Key>(
        self,
        key_of: impl Fn(&T) -> K + Clone + Send + Sync + 'static,
    ) -> KeyedStream<K, T> {
        let max_parallelism = self.env.config.max_parallelism;
        let partition_key = key_of.clone();
        let stream = self.exchange("keyed", move || {
            Partitioner::hash(partition_key.clone(), max_parallelism)
        });
        KeyedStream {
            stream,
            key_of: Arc::new(key_of),
        }
    }

    /// End the stream in a sink operator (its output is discarded).
    pub fn sink(
        self,
        uid: &str,
        factory: impl Fn(u32) -> Box<dyn StreamOperator<T, ()>> + 'static,
    ) {
        let stream = self.transform(uid, factory);
        (stream.close)(Box::new(|_| Box::new(Discard)));
    }
}

/// A stream partitioned by key.
pub struct KeyedStream<K, T> {
    stream: DataStream<T>,
    key_of: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// Run a keyed process function (`factory()` creates each instance).
    pub fn process<O: Data, F: KeyedProcessFunction<K, T, O>>(
        self,
        uid: &str,
        factory: impl Fn() -> F + 'static,
    ) -> DataStream<O> {
        let key_of = self.key_of;
        self.stream.transform(uid, move |_| {
            let key_of = Arc::clone(&key_of);
            Box::new(KeyedProcessOperator::new(move |r: &T| key_of(r), factory()))
        })
    }

    /// Event-time windows of this keyed stream.
    pub fn window(
        self,
        assigner: WindowAssigner,
        timestamp_of: impl Fn(&T) -> Timestamp + Clone + Send + 'static,
    ) -> WindowedStream<K, T, impl Fn(&T) -> Timestamp + Clone + Send + 'static> {
        WindowedStream {
            keyed: self,
            assigner,
            timestamp_of,
        }
    }
}

/// A keyed stream cut into windows.
pub struct WindowedStream<K, T, TF> {
    keyed: KeyedStream<K, T>,
    assigner: WindowAssigner,
    timestamp_of: TF,
}

impl<K: Key, T: Data, TF: Fn(&T) -> Timestamp + Clone + Send + 'static> WindowedStream<K, T, TF> {
    /// Aggregate each window incrementally.
    pub fn aggregate<O: Data, A: AggregateFunction<T, O> + Clone>(
        self,
        uid: &str,
        aggregate: A,
    ) -> DataStream<WindowResult<K, O>> {
        let assigner = self.assigner;
        let timestamp_of = self.timestamp_of;
        self.keyed.process(uid, move || {
            WindowAggregate::new(assigner, aggregate.clone(), timestamp_of.clone())
        })
    }
}
