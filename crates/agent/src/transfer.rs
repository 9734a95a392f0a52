//! Archives to and from a remote store through signed URLs: a GET streamed into a file, a PUT
//! streamed from a file with its length (S3 refuses a PUT without `Content-Length`). Neither
//! holds more than one network chunk in memory. A request that gets no answer or a 5xx is
//! tried again, as gitlab-runner's cache helpers do (`commands/helpers/cache_archiver.go`,
//! `cache_extractor.go`: `retryHelper{Retry: 2, RetryTime: time.Second}`).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The object does not exist (404): no cache yet, not a fault.
    #[error("not found")]
    NotFound,
    /// The store answered with an error status.
    #[error("{status} {reason}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The store's error code or the start of its body.
        reason: String,
    },
    /// The request did not complete (connection, timeout).
    #[error("{0}")]
    Request(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Tries after the first of a request that got no answer or a 5xx.
pub const RETRIES: u32 = 2;

/// The wait before each retry.
pub const RETRY_WAIT: Duration = Duration::from_secs(1);

/// One request's limits.
#[derive(Debug, Clone, Copy)]
pub struct TransferOptions {
    /// The whole request's deadline (`CACHE_REQUEST_TIMEOUT`, in minutes there).
    pub timeout: Duration,
}

impl TransferError {
    /// Worth another try: no answer, or the store's own failure.
    fn retries(&self) -> bool {
        match self {
            TransferError::Request(_) => true,
            TransferError::Status { status, .. } => *status >= 500,
            TransferError::NotFound | TransferError::Io { .. } => false,
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or [`RETRIES`] retries are spent.
async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, TransferError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TransferError>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(error) if error.retries() && tries < RETRIES => {
                tries += 1;
                tokio::time::sleep(RETRY_WAIT).await;
            }
            other => return other,
        }
    }
}

/// GETs `url` into `dest` (created or truncated); returns the bytes written.
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    dest: &Path,
    options: TransferOptions,
) -> Result<u64, TransferError> {
    with_retries(|| download_once(client, url, headers, dest, options)).await
}

/// PUTs the file `source` to `url` with its length; returns the bytes sent.
pub async fn upload(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    source: &Path,
    options: TransferOptions,
) -> Result<u64, TransferError> {
    with_retries(|| upload_once(client, url, headers, source, options)).await
}

async fn download_once(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    dest: &Path,
    options: TransferOptions,
) -> Result<u64, TransferError> {
    let mut request = client.get(url).timeout(options.timeout);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(request_error)?;
    if !response.status().is_success() {
        return Err(match status_error(response).await {
            // No such object: no cache yet. A missing bucket (`NoSuchBucket`) is a fault.
            TransferError::Status {
                status: 404,
                reason,
            } if reason == "NoSuchKey" || !reason.starts_with("NoSuch") => TransferError::NotFound,
            other => other,
        });
    }
    let io = |source| TransferError::Io {
        path: dest.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
    let mut written = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(request_error)?;
        file.write_all(&chunk).await.map_err(io)?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(io)?;
    Ok(written)
}

async fn upload_once(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    source: &Path,
    options: TransferOptions,
) -> Result<u64, TransferError> {
    let io = |source_error| TransferError::Io {
        path: source.display().to_string(),
        source: source_error,
    };
    let file = tokio::fs::File::open(source).await.map_err(io)?;
    let length = file.metadata().await.map_err(io)?.len();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let mut request = client
        .put(url)
        .timeout(options.timeout)
        .header(reqwest::header::CONTENT_LENGTH, length)
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(request_error)?;
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    Ok(length)
}

/// The error of a request that got no answer; its URL is left out (it is a credential).
fn request_error(error: reqwest::Error) -> TransferError {
    TransferError::Request(error.without_url().to_string())
}

/// The status and the store's error code (S3 and Azure answer XML with `<Code>`).
async fn status_error(response: reqwest::Response) -> TransferError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let reason = match (body.find("<Code>"), body.find("</Code>")) {
        (Some(start), Some(end)) if start + 6 <= end => body[start + 6..end].to_owned(),
        _ => body.chars().take(200).collect(),
    };
    TransferError::Status { status, reason }
}
