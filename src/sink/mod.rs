//! Where flow files and job archives go, and where incoming flows are read from: a local folder
//! ([`local`]) or an S3 bucket ([`s3`]). Every write is create-only.

pub mod local;
pub mod s3;

use local::LocalSink;

/// What a create-only write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The object was there already with the same bytes.
    AlreadyThere,
    /// The object was there with different bytes: these.
    Different(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where flow files and job archives go.
#[derive(Clone)]
pub enum Sink {
    Local(LocalSink),
    S3(crate::sink::s3::S3Sink),
}

impl Sink {
    /// The sink `sink.kind` names: the local folder `<data_dir>/dtn/`, or the S3 bucket.
    pub fn from_config(config: &crate::config::Config) -> Result<Sink, SinkError> {
        match config.sink.kind.as_str() {
            "local" => Ok(Sink::Local(LocalSink::new(config.data_dir.join("dtn")))),
            "s3" => Ok(Sink::S3(crate::sink::s3::S3Sink::new(&config.sink.s3)?)),
            other => Err(SinkError(format!("sink {other} is not built into this binary"))),
        }
    }

    /// Several create-only writes: to the folder in one blocking task (one fsync per folder),
    /// to the bucket all at once. Each result comes back with its tag.
    pub async fn put_all<T: Send + 'static>(&self, items: Vec<(T, String, Vec<u8>)>) -> Vec<(T, Result<PutOutcome, SinkError>)> {
        match self {
            Sink::Local(l) => {
                let l = l.clone();
                let (tags, files): (Vec<T>, Vec<(String, Vec<u8>)>) = items.into_iter().map(|(t, n, b)| (t, (n, b))).unzip();
                let n = files.len();
                let results =
                    tokio::task::spawn_blocking(move || l.put_many(&files)).await.unwrap_or_else(|e| (0..n).map(|_| Err(SinkError(e.to_string()))).collect());
                tags.into_iter().zip(results).collect()
            }
            Sink::S3(s) => {
                let mut set = tokio::task::JoinSet::new();
                for (tag, name, bytes) in items {
                    let s = s.clone();
                    set.spawn(async move {
                        let r = s.put_if_absent(&name, bytes).await;
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
        }
    }
}
