//! Store URLs (`s3://bucket/prefix`, `file:///abs/dir`, plain paths) and `open_store`, which turns one into a store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::store::{validate_prefix, SnapshotStore, StoreError};
use crate::FileStore;

/// Errors of parsing a store URL or opening the store.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// The URL cannot be understood.
    #[error("invalid storage URL {url:?}: {reason}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The store could not be opened.
    #[error("failed to open storage {url}: {source}")]
    Open {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// An `s3://` URL, but the crate was built without the `s3` feature.
    #[error("storage URL {0} needs S3 support; build streamjob-checkpoint with the `s3` feature")]
    S3Disabled(String),
}

/// A parsed storage location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `s3://bucket/prefix`.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing '/', "" for the bucket root.
        prefix: String,
    },
    /// A local folder (absolute).
    File {
        /// Absolute folder path.
        path: PathBuf,
    },
}

impl StoreUrl {
    /// Parses `s3://bucket[/prefix]`, `file:///abs/path`, or a plain path (relative paths are made absolute).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let invalid = |reason: &str| UrlError::Invalid {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket).map_err(invalid)?;
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty() {
                validate_prefix(prefix).map_err(|e| invalid(&format!("bad key prefix: {e}")))?;
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "file URLs must name an absolute local path: file:///path/to/dir",
                ));
            }
            return Ok(StoreUrl::File {
                path: PathBuf::from(rest),
            });
        }
        if url.contains("://") {
            return Err(invalid(
                "unsupported scheme; use s3://bucket/prefix, file:///path or a plain path",
            ));
        }
        if url.trim().is_empty() {
            return Err(invalid(
                "the storage location is empty; set an s3:// URL or a folder path",
            ));
        }
        let path = std::path::absolute(Path::new(url))
            .map_err(|e| invalid(&format!("cannot resolve the path: {e}")))?;
        Ok(StoreUrl::File { path })
    }
}

impl FromStr for StoreUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StoreUrl::File { path } => write!(f, "file://{}", path.display()),
        }
    }
}

/// S3 bucket names: 3-63 characters of lowercase letters, digits, '.' and '-'.
fn validate_bucket(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("the bucket name must be 3 to 63 characters long: s3://bucket/prefix");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("the bucket name may only contain lowercase letters, digits, '.' and '-'");
    }
    Ok(())
}

/// Connection settings for `s3://` URLs. Unset fields fall back to environment variables in
/// [`open_store`]: `S3_ENDPOINT`, `AWS_REGION`, `S3_FORCE_PATH_STYLE`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`). Without keys, the standard AWS credential
/// chain is used. `Debug` never prints the secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Path-style addressing.
    pub force_path_style: Option<bool>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl S3Options {
    /// Fills unset fields from `lookup(name)` (normally the process environment); empty values count as unset.
    pub fn with_defaults_from(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        self.endpoint = self.endpoint.or_else(|| get("S3_ENDPOINT"));
        self.region = self.region.or_else(|| get("AWS_REGION"));
        self.force_path_style = self.force_path_style.or_else(|| {
            get("S3_FORCE_PATH_STYLE")
                .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        });
        if self.access_key_id.is_none() && self.secret_access_key.is_none() {
            self.access_key_id = get("AWS_ACCESS_KEY_ID");
            self.secret_access_key = get("AWS_SECRET_ACCESS_KEY");
            self.session_token = self.session_token.or_else(|| get("AWS_SESSION_TOKEN"));
        }
        self
    }

    /// Fills unset fields from the process environment.
    pub fn with_env_defaults(self) -> Self {
        self.with_defaults_from(|name| std::env::var(name).ok())
    }
}

/// Opens the store at `url`. S3 settings not given in `options` come from the environment.
pub async fn open_store(url: &str, options: S3Options) -> Result<Arc<dyn SnapshotStore>, UrlError> {
    match StoreUrl::parse(url)? {
        StoreUrl::File { path } => {
            let store = FileStore::new(&path).map_err(|source| UrlError::Open {
                url: url.to_owned(),
                source,
            })?;
            Ok(Arc::new(store))
        }
        StoreUrl::S3 { bucket, prefix } => {
            open_s3(url, bucket, prefix, options.with_env_defaults()).await
        }
    }
}

#[cfg(feature = "s3")]
impl S3Options {
    /// The client settings for `bucket`/`prefix`: static keys when both are set, the standard AWS
    /// credential chain when neither is; one without the other is an error (the reason).
    pub fn into_config(
        self,
        bucket: String,
        prefix: String,
    ) -> Result<crate::s3_config::S3Config, &'static str> {
        use crate::s3_config::{S3Config, StaticCredentials};
        let credentials = match (self.access_key_id, self.secret_access_key) {
            (Some(access_key_id), Some(secret_access_key)) => Some(StaticCredentials {
                access_key_id,
                secret_access_key,
                session_token: self.session_token,
            }),
            (None, None) => None,
            _ => {
                return Err("set both the access key id and the secret access key (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or neither")
            }
        };
        Ok(S3Config {
            bucket,
            prefix,
            region: self.region,
            endpoint: self.endpoint,
            force_path_style: self.force_path_style.unwrap_or(false),
            credentials,
        })
    }
}

#[cfg(feature = "s3")]
async fn open_s3(
    url: &str,
    bucket: String,
    prefix: String,
    options: S3Options,
) -> Result<Arc<dyn SnapshotStore>, UrlError> {
    use crate::s3_store::S3Store;
    let config = options
        .into_config(bucket, prefix)
        .map_err(|reason| UrlError::Invalid {
            url: url.to_owned(),
            reason: reason.into(),
        })?;
    let store = S3Store::connect(config)
        .await
        .map_err(|source| UrlError::Open {
            url: url.to_owned(),
            source,
        })?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "s3"))]
async fn open_s3(
    url: &str,
    _: String,
    _: String,
    _: S3Options,
) -> Result<Arc<dyn SnapshotStore>, UrlError> {
    Err(UrlError::S3Disabled(url.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn parses_s3() {
        assert_eq!(
            StoreUrl::parse("s3://my-bucket/jobs/prod/").unwrap(),
            StoreUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "jobs/prod".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://my-bucket").unwrap().to_string(),
            "s3://my-bucket"
        );
        assert_eq!(
            StoreUrl::parse("s3://my-bucket/a/b").unwrap().to_string(),
            "s3://my-bucket/a/b"
        );
        for bad in [
            "s3://",
            "s3://B",
            "s3://ab",
            "s3://bucket/a/../b",
            "s3://bucket/a//b",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_files() {
        assert_eq!(
            StoreUrl::parse("file:///tmp/x").unwrap(),
            StoreUrl::File {
                path: "/tmp/x".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("/tmp/x").unwrap(),
            StoreUrl::File {
                path: "/tmp/x".into()
            }
        );
        match StoreUrl::parse("snapshots").unwrap() {
            StoreUrl::File { path } => assert!(path.is_absolute() && path.ends_with("snapshots")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            StoreUrl::parse("/tmp/x").unwrap().to_string(),
            "file:///tmp/x"
        );
        for bad in ["file://host/x", "http://x/y", "", "  "] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn explicit_options_win_over_env() {
        let env: HashMap<&str, &str> = [
            ("S3_ENDPOINT", "http://env:9000"),
            ("AWS_REGION", "eu-west-1"),
            ("S3_FORCE_PATH_STYLE", "true"),
            ("AWS_ACCESS_KEY_ID", "envkey"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
        ]
        .into();
        let lookup = |name: &str| env.get(name).map(|v| v.to_string());

        let from_env = S3Options::default().with_defaults_from(lookup);
        assert_eq!(from_env.endpoint.as_deref(), Some("http://env:9000"));
        assert_eq!(from_env.region.as_deref(), Some("eu-west-1"));
        assert_eq!(from_env.force_path_style, Some(true));
        assert_eq!(from_env.access_key_id.as_deref(), Some("envkey"));

        let explicit = S3Options {
            endpoint: Some("http://mine:1".into()),
            force_path_style: Some(false),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..Default::default()
        }
        .with_defaults_from(lookup);
        assert_eq!(explicit.endpoint.as_deref(), Some("http://mine:1"));
        assert_eq!(explicit.force_path_style, Some(false));
        assert_eq!(explicit.access_key_id.as_deref(), Some("k"));
        assert_eq!(explicit.secret_access_key.as_deref(), Some("s"));
        assert!(
            !format!("{explicit:?}").contains("\"s\""),
            "secret must not be printed"
        );
    }

    #[tokio::test]
    async fn opens_file_stores() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = open_store(&url, S3Options::default()).await.unwrap();
        assert_eq!(store.url(), url);
    }
}
