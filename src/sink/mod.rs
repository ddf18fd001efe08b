//! Where flow files and job archives go, and where incoming flows are read from: one object
//! store, [`ObjectStore`], implemented by a local folder ([`local`]) and by an S3 bucket ([`s3`]).
//! Delivery and inbound use only the trait; [`Sink`] is the one the configuration chose.
//!
//! Names are `/`-separated object names (`out/XTEST/D0135_….usr`, `in/processed/…`): a path
//! under `<data_dir>/dtn/` for the folder, a key under `sink.s3.prefix` for the bucket. Every
//! write is create-only: nothing the store holds is ever overwritten.

pub mod local;
pub mod s3;

use std::future::Future;

use local::LocalSink;
use s3::S3Sink;

use crate::config::SinkKind;

/// What a create-only write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The object was there already with the same bytes.
    AlreadyThere,
    /// The object was there with different bytes: these.
    Different(Vec<u8>),
}

/// What a bounded read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// No object under that name.
    Missing,
    /// The object's bytes and its identity (entity tag, or the file's identity in the folder).
    Bytes { bytes: Vec<u8>, etag: Option<String> },
    /// Larger than asked for: not read.
    TooLarge { size: u64, etag: Option<String> },
}

/// How [`ObjectStore::list`] lists.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Only names with no further `/` after the prefix.
    pub shallow: bool,
    /// Only names sorting after this one.
    pub after: Option<String>,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    /// The entity tag in a bucket; in the folder, the file's identity (device, inode, size and
    /// modification time), which changes when the file is replaced or written to.
    pub etag: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("unsafe object name {0:?}")]
    UnsafeName(String),
    #[error("{name}: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: not a file")]
    NotAFile { name: String },
    /// A call to the bucket failed: what, on which key, and the SDK's account of it.
    #[error("{op} {key}: {detail}")]
    Request { op: &'static str, key: String, detail: String },
    #[error("sink s3: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")]
    NoCredentials,
    /// A create-only write was refused, yet nothing is there (deleted a moment later): retry.
    #[error("put {0}: the name is taken, but the object is not there")]
    Vanished(String),
    /// A conditional delete found another object (or file) under the name: kept.
    #[error("delete {0}: replaced since it was read; kept")]
    Replaced(String),
    #[error("copy {0}: the source is not there")]
    NoSource(String),
    #[error("a blocking task of the sink failed: {0}")]
    Task(String),
}

impl SinkError {
    fn io(name: &str) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
        move |source| SinkError::Io { name: name.to_string(), source }
    }
}

/// An object store: the local folder or an S3 bucket. Every write is create-only.
pub trait ObjectStore: Send + Sync {
    /// Create-only write: [`PutOutcome::Created`], or what was there already.
    fn put(&self, name: &str, bytes: Vec<u8>) -> impl Future<Output = Result<PutOutcome, SinkError>> + Send;

    /// Several create-only writes, each result with its tag (in any order): the folder syncs each
    /// of its folders once for the whole batch, the bucket takes them all at once.
    fn put_all<T: Send + 'static>(&self, items: Vec<(T, String, Vec<u8>)>) -> impl Future<Output = Vec<(T, Result<PutOutcome, SinkError>)>> + Send;

    /// How many writes one [`ObjectStore::put_all`] should carry, for `concurrency` writers.
    fn batch_size(&self, concurrency: usize) -> usize;

    /// An object of at most `max` bytes; a larger one is not read ([`Got::TooLarge`]).
    fn get(&self, name: &str, max: u64) -> impl Future<Output = Result<Got, SinkError>> + Send;

    /// The objects whose names start with `under`, sorted by name.
    fn list(&self, under: &str, how: Listing) -> impl Future<Output = Result<Vec<Listed>, SinkError>> + Send;

    /// The size and identity of an object, without its bytes; `None` if there is none.
    fn head(&self, name: &str) -> impl Future<Output = Result<Option<Listed>, SinkError>> + Send;

    /// Copies `from` to `to` if `to` is not taken (a server-side copy, or a hard link): `false`
    /// if it was taken. The source must be there.
    fn copy_if_absent(&self, from: &str, to: &str) -> impl Future<Output = Result<bool, SinkError>> + Send;

    /// Deletes an object; with `etag`, only while its identity is still that one
    /// ([`SinkError::Replaced`] otherwise). Deleting what is not there is no error.
    fn delete(&self, name: &str, etag: Option<&str>) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Where `name` is, for messages: a path, or an `s3://` address.
    fn location(&self, name: &str) -> String;
}

/// The object store `sink.kind` names.
#[derive(Clone, Debug)]
pub(crate) enum Sink {
    Local(LocalSink),
    S3(S3Sink),
}

impl Sink {
    /// The local folder `<data_dir>/dtn/`, or the S3 bucket.
    pub(crate) fn from_config(config: &crate::config::Config) -> Result<Sink, SinkError> {
        Ok(match config.sink.kind {
            SinkKind::Local => Sink::Local(LocalSink::new(config.data_dir.join("dtn"))),
            SinkKind::S3 => Sink::S3(S3Sink::new(&config.sink.s3)?),
        })
    }
}

impl ObjectStore for Sink {
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<PutOutcome, SinkError> {
        match self {
            Sink::Local(s) => s.put(name, bytes).await,
            Sink::S3(s) => s.put(name, bytes).await,
        }
    }

    async fn put_all<T: Send + 'static>(&self, items: Vec<(T, String, Vec<u8>)>) -> Vec<(T, Result<PutOutcome, SinkError>)> {
        match self {
            Sink::Local(s) => s.put_all(items).await,
            Sink::S3(s) => s.put_all(items).await,
        }
    }

    fn batch_size(&self, concurrency: usize) -> usize {
        match self {
            Sink::Local(s) => s.batch_size(concurrency),
            Sink::S3(s) => s.batch_size(concurrency),
        }
    }

    async fn get(&self, name: &str, max: u64) -> Result<Got, SinkError> {
        match self {
            Sink::Local(s) => s.get(name, max).await,
            Sink::S3(s) => s.get(name, max).await,
        }
    }

    async fn list(&self, under: &str, how: Listing) -> Result<Vec<Listed>, SinkError> {
        match self {
            Sink::Local(s) => s.list(under, how).await,
            Sink::S3(s) => s.list(under, how).await,
        }
    }

    async fn head(&self, name: &str) -> Result<Option<Listed>, SinkError> {
        match self {
            Sink::Local(s) => s.head(name).await,
            Sink::S3(s) => s.head(name).await,
        }
    }

    async fn copy_if_absent(&self, from: &str, to: &str) -> Result<bool, SinkError> {
        match self {
            Sink::Local(s) => s.copy_if_absent(from, to).await,
            Sink::S3(s) => s.copy_if_absent(from, to).await,
        }
    }

    async fn delete(&self, name: &str, etag: Option<&str>) -> Result<(), SinkError> {
        match self {
            Sink::Local(s) => s.delete(name, etag).await,
            Sink::S3(s) => s.delete(name, etag).await,
        }
    }

    fn location(&self, name: &str) -> String {
        match self {
            Sink::Local(s) => s.location(name),
            Sink::S3(s) => s.location(name),
        }
    }
}
