//! Prometheus metrics of the operator. Labels are bounded: outcomes, error categories, phases and
//! savepoint reasons are fixed sets; per-job values are aggregated (job counts per phase, the
//! oldest checkpoint age among running jobs) instead of being labelled by job name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use streamjob_api::v1alpha1::{JobPhase, StreamJobStatus};

use crate::decide::time_ms;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Category {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    phase: String,
}

#[derive(Default)]
struct JobFacts {
    phase: Option<JobPhase>,
    checkpoint_age_s: Option<i64>,
}

/// The operator's metrics (cheap to clone).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<Outcome, Counter>,
    errors: Family<Category, Counter>,
    reconcile_seconds: Histogram,
    restarts: Family<Reason, Counter>,
    savepoint_seconds: Family<Reason, Histogram>,
    jobs: Family<Phase, Gauge>,
    oldest_checkpoint_age: Gauge,
    per_job: Arc<Mutex<BTreeMap<(String, String), JobFacts>>>,
}

const PHASES: [JobPhase; 10] = [
    JobPhase::Pending,
    JobPhase::Deploying,
    JobPhase::Running,
    JobPhase::Upgrading,
    JobPhase::Restarting,
    JobPhase::Suspending,
    JobPhase::Suspended,
    JobPhase::Finished,
    JobPhase::Failed,
    JobPhase::Deleting,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("streamjob_operator");
        let reconciles = Family::<Outcome, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by outcome (ok, error)",
            reconciles.clone(),
        );
        let errors = Family::<Category, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by category (kube_api, storage, build)",
            errors.clone(),
        );
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            reconcile_seconds.clone(),
        );
        let restarts = Family::<Reason, Counter>::default();
        registry.register(
            "job_restarts",
            "Automatic job restarts after a failure, by reason (PodFailed, PodDeleted, JobFailed)",
            restarts.clone(),
        );
        let savepoint_seconds = Family::<Reason, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        registry.register(
            "savepoint_duration_seconds",
            "Time from savepoint request to completion, by reason",
            savepoint_seconds.clone(),
        );
        let jobs = Family::<Phase, Gauge>::default();
        registry.register("jobs", "StreamJobs by phase", jobs.clone());
        let oldest_checkpoint_age = Gauge::default();
        registry.register(
            "oldest_checkpoint_age_seconds",
            "Age of the newest checkpoint of the running job whose newest checkpoint is oldest",
            oldest_checkpoint_age.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            errors,
            reconcile_seconds,
            restarts,
            savepoint_seconds,
            jobs,
            oldest_checkpoint_age,
            per_job: Arc::default(),
        }
    }

    /// One reconcile ended.
    pub fn reconciled(&self, took: Duration, error: Option<&'static str>) {
        self.reconcile_seconds.observe(took.as_secs_f64());
        let outcome = if error.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
        if let Some(category) = error {
            self.errors
                .get_or_create(&Category {
                    category: category.into(),
                })
                .inc();
        }
    }

    /// A job is restarted after a failure.
    pub fn restart(&self, reason: &str) {
        self.restarts
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    /// A savepoint completed.
    pub fn savepoint(&self, reason: &str, took: Duration) {
        self.savepoint_seconds
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// The job's status after a reconcile.
    pub fn observe_job(&self, namespace: &str, name: &str, status: &StreamJobStatus, now_ms: u64) {
        let age = status
            .last_checkpoint
            .as_ref()
            .and_then(|c| c.completed_at.as_ref())
            .map(|t| (now_ms.saturating_sub(time_ms(t)) / 1000) as i64);
        if let Ok(mut jobs) = self.per_job.lock() {
            jobs.insert(
                (namespace.to_string(), name.to_string()),
                JobFacts {
                    phase: status.phase,
                    checkpoint_age_s: age,
                },
            );
            self.refresh(&jobs);
        }
    }

    /// The job is gone.
    pub fn forget_job(&self, namespace: &str, name: &str) {
        if let Ok(mut jobs) = self.per_job.lock() {
            jobs.remove(&(namespace.to_string(), name.to_string()));
            self.refresh(&jobs);
        }
    }

    fn refresh(&self, jobs: &BTreeMap<(String, String), JobFacts>) {
        for phase in PHASES {
            let count = jobs.values().filter(|j| j.phase == Some(phase)).count();
            self.jobs
                .get_or_create(&Phase {
                    phase: format!("{phase:?}"),
                })
                .set(count as i64);
        }
        let oldest = jobs
            .values()
            .filter(|j| j.phase == Some(JobPhase::Running))
            .filter_map(|j| j.checkpoint_age_s)
            .max()
            .unwrap_or(0);
        self.oldest_checkpoint_age.set(oldest);
    }

    /// The text exposition.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
