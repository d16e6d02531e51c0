//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator replicas are safe: only
//! the holder reconciles. The holder renews every `renew_every`; another replica takes over once
//! the lease is `lease_duration` old. Updates use the Lease's resourceVersion (optimistic
//! concurrency), so two candidates can never both win. The decision is a pure function.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

/// A Lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API server refused or could not be reached.
    #[error("lease {name}: {source}")]
    Kube {
        /// Lease name.
        name: String,
        /// The error.
        source: kube::Error,
    },
    /// Another replica holds the lease now.
    #[error(
        "lease {name} was taken over by another replica; stopping so that only one operator acts"
    )]
    Lost {
        /// Lease name.
        name: String,
    },
}

/// What a candidate should do with the lease it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseVerdict {
    /// Write it with us as holder (acquire or renew).
    Take {
        /// The holder changes (count a transition, set acquireTime).
        transition: bool,
    },
    /// Someone else holds a live lease.
    Wait,
}

/// Decide over a lease read at `now_us` (microseconds since the epoch).
pub fn judge(
    spec: Option<&LeaseSpec>,
    me: &str,
    now_us: i64,
    default_duration: Duration,
) -> LeaseVerdict {
    let Some(spec) = spec else {
        return LeaseVerdict::Take { transition: true };
    };
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    if holder == Some(me) {
        return LeaseVerdict::Take { transition: false };
    }
    let Some(_) = holder else {
        return LeaseVerdict::Take { transition: true };
    };
    let duration_us = spec
        .lease_duration_seconds
        .map_or(default_duration.as_micros() as i64, |s| {
            i64::from(s) * 1_000_000
        });
    let renewed = spec.renew_time.as_ref().map_or(0, |t| t.0.as_microsecond());
    if renewed + duration_us < now_us {
        LeaseVerdict::Take { transition: true }
    } else {
        LeaseVerdict::Wait
    }
}

/// A candidate for the lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    /// How often the holder renews and a candidate retries.
    pub renew_every: Duration,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl LeaderElector {
    /// A candidate named `identity` for Lease `name` in `api`'s namespace.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease_duration: Duration) -> Self {
        Self {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration,
            renew_every: lease_duration / 3,
        }
    }

    fn err(&self) -> impl FnOnce(kube::Error) -> LeaderError + '_ {
        move |source| LeaderError::Kube {
            name: self.name.clone(),
            source,
        }
    }

    /// One attempt to acquire or renew; true when we hold the lease afterwards.
    pub async fn try_acquire(&self) -> Result<bool, LeaderError> {
        let current = self.api.get_opt(&self.name).await.map_err(self.err())?;
        let stamp = now();
        let verdict = judge(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            stamp.0.as_microsecond(),
            self.lease_duration,
        );
        let LeaseVerdict::Take { transition } = verdict else {
            return Ok(false);
        };
        let old = current
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
            acquire_time: if transition {
                Some(stamp.clone())
            } else {
                old.acquire_time.clone()
            },
            renew_time: Some(stamp),
            lease_transitions: Some(old.lease_transitions.unwrap_or(0) + i32::from(transition)),
            ..LeaseSpec::default()
        };
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Someone else wrote first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(self.err()(e)),
        }
    }

    /// Wait until we hold the lease.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        let mut logged = false;
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return Ok(());
                }
                Ok(false) if !logged => {
                    tracing::info!(lease = %self.name, "another replica leads; waiting");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "lease not readable; retrying"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Renew until a renewal fails for longer than the lease lasts; returns when leadership is lost.
    pub async fn keep(&self) -> LeaderError {
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = std::time::Instant::now(),
                Ok(false) => {
                    return LeaderError::Lost {
                        name: self.name.clone(),
                    }
                }
                Err(e) if last_ok.elapsed() >= self.lease_duration => return e,
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
            }
        }
    }

    /// Give the lease up (on graceful shutdown), so another replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            if ours {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                }
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_us: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(
                jiff::Timestamp::from_microsecond(renewed_us).unwrap(),
            )),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_lease_decision() {
        let d = Duration::from_secs(15);
        let now = 1_800_000_000_000_000;
        assert_eq!(
            judge(None, "a", now, d),
            LeaseVerdict::Take { transition: true }
        );
        assert_eq!(
            judge(Some(&lease("a", now - 1, 15)), "a", now, d),
            LeaseVerdict::Take { transition: false }
        );
        assert_eq!(
            judge(Some(&lease("b", now - 1_000_000, 15)), "a", now, d),
            LeaseVerdict::Wait
        );
        assert_eq!(
            judge(Some(&lease("b", now - 16_000_000, 15)), "a", now, d),
            LeaseVerdict::Take { transition: true }
        );
        let released = LeaseSpec::default();
        assert_eq!(
            judge(Some(&released), "a", now, d),
            LeaseVerdict::Take { transition: true }
        );
    }
}
