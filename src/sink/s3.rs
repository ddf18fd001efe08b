//! The S3 sink: create-only writes to a bucket of a real object store (Ceph RADOS Gateway, AWS S3).
//!
//! Each object goes out with ONE `PutObject` carrying `If-None-Match: *`: the store answers 412
//! when the name is taken, atomically under concurrent writers, so two writers (two attempts, two
//! instances) never both create it and nothing is ever overwritten. On 412 the existing object
//! is read back and compared. Multipart uploads are never used: Ceph RGW 16.2 ignores the
//! condition on `CompleteMultipartUpload` (and the files are small).
//!
//! Settings come from `sink.s3` (endpoint, region, bucket, prefix, path-style); credentials from
//! the standard AWS environment variables `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! optionally `AWS_SESSION_TOKEN` (read here, without `aws-config` and its credential chain).
//! The HTTP client is hyper 1 with rustls on the ring provider, like the server's TLS. The SDK
//! does not retry: the dispatcher's backoff does, and counts each failure.

use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use crate::config::S3Config;
use crate::sink::{Got, Listed, Listing, ObjectStore, PutOutcome, SinkError};

/// A bucket (and a prefix in it) that flow files and job archives are written to.
#[derive(Clone, Debug)]
pub struct S3Sink {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

/// The credentials in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
pub(crate) fn credentials_from_env() -> Result<Credentials, SinkError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Credentials::new(id, secret, var("AWS_SESSION_TOKEN"), None, "environment")),
        _ => Err(SinkError::NoCredentials),
    }
}

/// The HTTP status of a failed call, when the store answered at all.
fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn describe<E: std::error::Error + 'static, R: std::fmt::Debug>(op: &'static str, key: &str, e: &SdkError<E, R>) -> SinkError {
    SinkError::Request { op, key: key.to_string(), detail: DisplayErrorContext(e).to_string() }
}

impl S3Sink {
    /// A client for the configured bucket; fails without credentials in the environment.
    pub fn new(config: &S3Config) -> Result<S3Sink, SinkError> {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials_from_env()?)
            .http_client(http)
            .force_path_style(config.path_style)
            // Stores that do not know the CRC32 headers reject them: checksums only where required.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        Ok(S3Sink { client: aws_sdk_s3::Client::from_conf(builder.build()), bucket: config.bucket.clone(), prefix: config.key_prefix() })
    }

    /// The object key of a name: the prefix, then the name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

impl ObjectStore for S3Sink {
    /// Create-only: one `PutObject` with `If-None-Match: *`; on 412, the existing bytes decide.
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<PutOutcome, SinkError> {
        let key = self.key(name);
        let bytes = bytes::Bytes::from(bytes);
        let content_type = if name.ends_with(".json") { "application/json" } else { "text/plain; charset=utf-8" };
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .if_none_match("*")
            .content_type(content_type)
            .body(ByteStream::from(bytes.clone()))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) if status_of(&e) == Some(412) => match self.get(name, u64::MAX).await? {
                Got::Bytes { bytes: existing, .. } if existing == bytes.as_ref() => Ok(PutOutcome::AlreadyThere),
                Got::Bytes { bytes: existing, .. } => Ok(PutOutcome::Different(existing)),
                // Taken a moment ago, gone now (deleted by someone): try again later.
                Got::Missing | Got::TooLarge { .. } => Err(SinkError::Vanished(key)),
            },
            Err(e) => Err(describe("put", &key, &e)),
        }
    }

    /// All at once, each write in its own task.
    async fn put_all<T: Send + 'static>(&self, items: Vec<(T, String, Vec<u8>)>) -> Vec<(T, Result<PutOutcome, SinkError>)> {
        let mut set = tokio::task::JoinSet::new();
        for (tag, name, bytes) in items {
            let s = self.clone();
            set.spawn(async move {
                let r = s.put(&name, bytes).await;
                (tag, r)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            if let Ok(done) = joined {
                out.push(done);
            }
        }
        out
    }

    fn batch_size(&self, concurrency: usize) -> usize {
        concurrency.max(1)
    }

    /// An object of at most `max` bytes: its bytes and entity tag; a larger one is not read.
    async fn get(&self, name: &str, max: u64) -> Result<Got, SinkError> {
        let key = self.key(name);
        match self.client.get_object().bucket(&self.bucket).key(&key).send().await {
            Ok(out) => {
                let size = out.content_length().unwrap_or(0).max(0).unsigned_abs();
                let etag = out.e_tag().map(str::to_string);
                if size > max {
                    return Ok(Got::TooLarge { size, etag });
                }
                let data = out.body.collect().await.map_err(|e| SinkError::Request { op: "get", key: key.clone(), detail: e.to_string() })?;
                Ok(Got::Bytes { bytes: data.into_bytes().to_vec(), etag })
            }
            Err(e) if status_of(&e) == Some(404) => Ok(Got::Missing),
            Err(e) => Err(describe("get", &key, &e)),
        }
    }

    /// The objects whose names start with `under` (names without the prefix), sorted; with
    /// `shallow`, only those with no further `/` after `under`; with `after`, only names after it.
    async fn list(&self, under: &str, how: Listing) -> Result<Vec<Listed>, SinkError> {
        let from = self.key(under);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut call = self.client.list_objects_v2().bucket(&self.bucket).prefix(&from).set_continuation_token(token.take());
            if how.shallow {
                call = call.delimiter("/");
            }
            if let Some(after) = &how.after {
                call = call.start_after(self.key(after));
            }
            let page = call.send().await.map_err(|e| describe("list", &from, &e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let name = k.strip_prefix(self.prefix.as_str()).unwrap_or(k).to_string();
                    out.push(Listed { name, size: o.size().unwrap_or(0).max(0).unsigned_abs(), etag: o.e_tag().map(str::to_string) });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The size and entity tag of an object, without its bytes; `None` if there is none.
    async fn head(&self, name: &str) -> Result<Option<Listed>, SinkError> {
        let key = self.key(name);
        match self.client.head_object().bucket(&self.bucket).key(&key).send().await {
            Ok(out) => Ok(Some(Listed {
                name: name.to_string(),
                size: out.content_length().unwrap_or(0).max(0).unsigned_abs(),
                etag: out.e_tag().map(str::to_string),
            })),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(describe("head", &key, &e)),
        }
    }

    /// Server-side copy to a name not yet taken (`If-None-Match: *`); `false` if it was taken.
    /// Stores that ignore `If-None-Match` on `CopyObject` (Ceph RGW 16.2 does: it overwrites)
    /// get a `HeadObject` check first: an object landing under the name between the two calls
    /// would be replaced by the copy.
    async fn copy_if_absent(&self, from: &str, to: &str) -> Result<bool, SinkError> {
        if self.head(to).await?.is_some() {
            return Ok(false);
        }
        let (src, key) = (self.key(from), self.key(to));
        let source = format!("{}/{}", self.bucket, percent_path(&src));
        match self.client.copy_object().bucket(&self.bucket).key(&key).copy_source(source).if_none_match("*").send().await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(412) => Ok(false),
            Err(e) if status_of(&e) == Some(404) => Err(SinkError::NoSource(src)),
            Err(e) => Err(describe("copy", &key, &e)),
        }
    }

    /// Deletes an object, only while its entity tag is still `etag` when one is given (a sender
    /// that replaced it meanwhile keeps its new object). Deleting what is not there is no error.
    /// Stores that ignore `If-Match` on `DeleteObject` (Ceph RGW 16.2 does) get a `HeadObject`
    /// check first: the replacement is then kept unless it lands between the two calls.
    async fn delete(&self, name: &str, etag: Option<&str>) -> Result<(), SinkError> {
        let key = self.key(name);
        if let Some(etag) = etag {
            match self.head(name).await? {
                Some(now) if now.etag.as_deref() != Some(etag) => return Err(SinkError::Replaced(key)),
                None => return Ok(()),
                Some(_) => {}
            }
        }
        match self.client.delete_object().bucket(&self.bucket).key(&key).set_if_match(etag.map(str::to_string)).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(404)) => Ok(()),
            Err(e) => Err(describe("delete", &key, &e)),
        }
    }

    fn location(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }
}

/// An object key as a `CopySource` path: every byte outside `[A-Za-z0-9._~/-]` percent-encoded.
fn percent_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"._~/-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
