//! S3 connection settings (`S3Config`, `StaticCredentials`) and building the SDK client from them.
//!
//! Retries: SDK standard mode, 5 attempts, backoff 200 ms .. 10 s. Timeouts: connect 5 s, each
//! attempt 30 s. Credentials: static when given, else the standard AWS chain.

use std::fmt;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::Client;

use crate::store::StoreError;

/// Region used when none is configured.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Static S3 credentials. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where and how to reach the bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix of the store root inside the bucket ("" for the bucket root); '/' at the ends is ignored.
    pub prefix: String,
    /// Region; [`DEFAULT_REGION`] when unset.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`; unset means AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    pub force_path_style: bool,
    /// Static credentials; unset means the standard AWS credential chain (env, profile, web identity, IMDS).
    pub credentials: Option<StaticCredentials>,
}

/// Builds an SDK client for `config`.
pub(crate) async fn build_client(config: &S3Config) -> Result<Client, StoreError> {
    if config.bucket.is_empty() {
        return Err(StoreError::Config(
            "the S3 bucket name is empty; set the bucket".into(),
        ));
    }
    let region = config
        .region
        .clone()
        .unwrap_or_else(|| DEFAULT_REGION.to_owned());
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(10)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(creds) = &config.credentials {
        loader = loader.credentials_provider(Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.clone(),
            creds.session_token.clone(),
            None,
            "streamjob-static",
        ));
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    let shared = loader.load().await;
    let s3_config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(config.force_path_style)
        .build();
    Ok(Client::from_conf(s3_config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let creds = StaticCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("FwoGZXIvYXdzEJr".into()),
        };
        let config = S3Config {
            bucket: "b".into(),
            credentials: Some(creds),
            ..Default::default()
        };
        let printed = format!("{config:?}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
        assert!(
            !printed.contains("wJalrXUtnFEMI") && !printed.contains("FwoGZXIvYXdzEJr"),
            "{printed}"
        );
    }

    #[tokio::test]
    async fn empty_bucket_is_a_config_error() {
        let err = build_client(&S3Config::default()).await.unwrap_err();
        assert!(matches!(err, StoreError::Config(_)), "{err}");
    }
}
