//! Kubernetes Events for StreamJobs, one Event per distinct message.
//!
//! `kube::runtime::events::Recorder` folds every event with the same type, reason and action for an
//! object into one Event series and keeps the *first* note: a second "SnapshotsSkipped" naming
//! another snapshot, or "PodFailed" of a later attempt, would only raise the count of the first
//! one, and `kubectl describe` would show stale text. This keeps one `Recorder` per (object,
//! reason, message): a repeated identical message still becomes a series (count, last seen), a new
//! message becomes a new Event.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::Client;
use tokio::sync::Mutex;

/// Distinct (object, reason, message) recorders kept; beyond this the map starts over (an
/// identical message then opens a new Event instead of extending its series).
const MAX_RECORDERS: usize = 4096;

/// Publishes events with a recorder per distinct message.
pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
    recorders: Mutex<HashMap<(String, String, String), Recorder>>,
}

impl EventPublisher {
    /// A publisher reporting as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recorders: Mutex::new(HashMap::new()),
        }
    }

    /// Publish `event` about `regarding`.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = (
            regarding.uid.clone().unwrap_or_default(),
            event.reason.clone(),
            event.note.clone().unwrap_or_default(),
        );
        let recorder = {
            let mut recorders = self.recorders.lock().await;
            if recorders.len() >= MAX_RECORDERS && !recorders.contains_key(&key) {
                recorders.clear();
            }
            recorders
                .entry(key)
                .or_insert_with(|| Recorder::new(self.client.clone(), self.reporter.clone()))
                .clone()
        };
        recorder.publish(event, regarding).await
    }
}
