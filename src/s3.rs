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

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use crate::config::S3Config;
use crate::dispatch::{PutOutcome, SinkError};

/// A bucket (and a prefix in it) that flow files and job archives are written to.
#[derive(Clone, Debug)]
pub struct S3Sink {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

/// The credentials in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
pub fn credentials_from_env() -> Result<Credentials, SinkError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Credentials::new(id, secret, var("AWS_SESSION_TOKEN"), None, "environment")),
        _ => Err(SinkError("sink s3: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment".into())),
    }
}

/// The HTTP status of a failed call, when the store answered at all.
fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn describe<E: std::error::Error + 'static, R: std::fmt::Debug>(what: &str, key: &str, e: &SdkError<E, R>) -> SinkError {
    SinkError(format!("{what} {key}: {}", DisplayErrorContext(e)))
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
        let mut prefix = config.prefix.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Sink { client: aws_sdk_s3::Client::from_conf(builder.build()), bucket: config.bucket.clone(), prefix })
    }

    /// The object key of a name: the prefix, then the name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Create-only: one `PutObject` with `If-None-Match: *`; on 412, the existing bytes decide.
    pub async fn put_if_absent(&self, name: &str, bytes: Vec<u8>) -> Result<PutOutcome, SinkError> {
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
            Err(e) if status_of(&e) == Some(412) => match self.get(name).await? {
                Some(existing) if existing == bytes.as_ref() => Ok(PutOutcome::AlreadyThere),
                Some(existing) => Ok(PutOutcome::Different(existing)),
                // Taken a moment ago, gone now (deleted by someone): try again later.
                None => Err(SinkError(format!("put {key}: 412, but the object is not there"))),
            },
            Err(e) => Err(describe("put", &key, &e)),
        }
    }

    /// The bytes of an object, or `None` if there is none under that name.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, SinkError> {
        let key = self.key(name);
        match self.client.get_object().bucket(&self.bucket).key(&key).send().await {
            Ok(out) => {
                let data = out.body.collect().await.map_err(|e| SinkError(format!("get {key}: {e}")))?;
                Ok(Some(data.into_bytes().to_vec()))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(describe("get", &key, &e)),
        }
    }

    /// The names (without the prefix) of every object whose name starts with `under`, sorted.
    pub async fn list(&self, under: &str) -> Result<Vec<String>, SinkError> {
        let from = self.key(under);
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&from)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| describe("list", &from, &e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    names.push(k.strip_prefix(self.prefix.as_str()).unwrap_or(k).to_string());
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        names.sort();
        Ok(names)
    }
}
