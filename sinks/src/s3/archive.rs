//! [`S3Archive`]: a synchronous client of the archive bucket, for plain threads.

use std::time::{Duration, Instant};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use rankmysteps_dataflow::event::Day;

use super::format::{
    check_topic, decode_object, encode_object, object_key, ArchiveRecord, ObjectKind,
    RejectedRecord,
};
use super::S3Config;
use crate::SinkError;

/// Attempts per request (the first one included). The SDK's *standard* retry mode retries
/// throttling, 5xx, timeouts and connection errors with exponential backoff and full jitter,
/// starting at [`INITIAL_BACKOFF`] and capped at [`MAX_BACKOFF`], and stops early when its
/// client-wide retry token bucket is empty (a store that keeps failing is not hammered).
/// Every archive write is a whole-object `PutObject` of a deterministic key, so retrying is
/// always safe.
pub const MAX_ATTEMPTS: u32 = 6;
/// First retry delay (before jitter); it doubles on every attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Timeout of establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one attempt of one request (an object of a few tens of MB included).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The archive of design §6 in one bucket: gzip-compressed JSON Lines objects with
/// deterministic keys (see [`object_key`]), written and read synchronously.
///
/// It owns a small tokio runtime (two worker threads) and blocks the calling thread on each
/// request, so it is meant for plain threads: calling it from inside an async runtime panics.
/// It is `Send + Sync`; several threads may use one archive at once.
pub struct S3Archive {
    // Declared before the runtime: the client (and its connection pool) is dropped first.
    client: Client,
    runtime: tokio::runtime::Runtime,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for S3Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Archive")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A readable account of a failed request: for an answer of the store, its HTTP status, error
/// code and message (a `HEAD` answer has no body: the status says it all); otherwise (no
/// connection, timeout, credentials not found...) the error with its chain of causes.
fn sdk_error<E>(err: SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let SdkError::ServiceError(service) = &err else {
        return DisplayErrorContext(&err).to_string();
    };
    let raw = service.raw();
    let status = raw.status().as_u16();
    let code = service
        .err()
        .code()
        .or_else(|| raw.headers().get("x-minio-error-code"))
        .unwrap_or(match status {
            403 => "Forbidden (wrong credentials, or no access to the bucket)",
            404 => "Not Found (no such bucket or key)",
            _ => "no error code",
        });
    match service.err().message() {
        Some(message) => format!("HTTP {status}: {code}: {message}"),
        None => format!("HTTP {status}: {code}"),
    }
}

impl S3Archive {
    /// Builds the client (credentials by the standard AWS chain, see [`S3Config`]) and checks
    /// with a `HeadBucket` request that the bucket exists and the credentials are accepted, so
    /// that a misconfiguration fails at startup rather than at the first epoch.
    pub fn connect(config: &S3Config) -> Result<S3Archive, SinkError> {
        S3Archive::connect_inner(config, None)
    }

    /// Like [`connect`](S3Archive::connect), with the given static credentials instead of the
    /// standard chain (tools and tests that get credentials some other way).
    pub fn connect_with_credentials(
        config: &S3Config,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<S3Archive, SinkError> {
        let credentials = Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "rankmysteps-static",
        );
        S3Archive::connect_inner(config, Some(credentials))
    }

    fn connect_inner(
        config: &S3Config,
        credentials: Option<Credentials>,
    ) -> Result<S3Archive, SinkError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rankmysteps-s3")
            .enable_all()
            .build()
            .map_err(|e| SinkError::s3("starting the S3 client's runtime", e.to_string()))?;
        let client = runtime.block_on(async {
            use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
            // HTTPS by rustls on ring (see the workspace's Cargo.toml), for the credential
            // chain and the S3 client alike.
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build_https();
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http)
                .region(Region::new(config.region.clone()));
            if let Some(credentials) = credentials {
                loader = loader.credentials_provider(credentials);
            }
            let shared = loader.load().await;
            let mut builder = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(config.path_style)
                .retry_config(
                    RetryConfig::standard()
                        .with_max_attempts(MAX_ATTEMPTS)
                        .with_initial_backoff(INITIAL_BACKOFF)
                        .with_max_backoff(MAX_BACKOFF),
                )
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(CONNECT_TIMEOUT)
                        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                        .build(),
                );
            if let Some(endpoint) = &config.endpoint {
                builder = builder.endpoint_url(endpoint);
            }
            if config.checksums_when_required {
                builder = builder
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                    .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
            }
            Client::from_conf(builder.build())
        });
        let archive = S3Archive {
            client,
            runtime,
            bucket: config.bucket.clone(),
            prefix: config.key_prefix(),
        };
        archive
            .runtime
            .block_on(archive.client.head_bucket().bucket(&archive.bucket).send())
            .map_err(|e| {
                SinkError::s3(
                    format!(
                        "connecting to bucket {:?} at {}",
                        archive.bucket,
                        config.endpoint.as_deref().unwrap_or("AWS")
                    ),
                    sdk_error(e),
                )
            })?;
        tracing::debug!(bucket = %archive.bucket, prefix = %archive.prefix, "s3: connected");
        Ok(archive)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The configured key prefix, normalised (empty or ending with `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Writes `partition`'s `records` of `topic` consumed on `ingest_day` as one object,
    /// `{prefix}raw/<topic>/<YYYY-MM-DD>/p<partition>-<first offset>-<last offset>.jsonl.gz`,
    /// and returns its key. `records` must be non-empty, all of `partition`, in strictly
    /// increasing offset order (gaps are fine: compacted topics, transaction markers).
    /// Writing the same range again replaces the object.
    pub fn put_raw(
        &self,
        topic: &str,
        ingest_day: Day,
        partition: u32,
        records: &[ArchiveRecord],
    ) -> Result<String, SinkError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Err(SinkError::s3(
                format!("archiving {topic} partition {partition}"),
                "no records",
            ));
        };
        let (first, last) = (first.offset, last.offset);
        check_records(topic, partition, first, last, records.iter())?;
        let key = object_key(
            &self.prefix,
            ObjectKind::Raw,
            topic,
            ingest_day,
            partition,
            first,
            last,
        );
        let (body, plain) = encode_object(records.iter().map(|r| (r, None)))?;
        self.put(&key, body, records.len(), plain)?;
        Ok(key)
    }

    /// Writes the rejected records among `partition`'s offsets `first..=last` of `topic` (the
    /// range of the matching `raw/` object) as one object under `{prefix}rejected/...`, each
    /// line with its `reason` code and `detail`, and returns its key. The records must be of
    /// `partition`, within the range, in strictly increasing offset order. With no records
    /// nothing is written (the key is still returned).
    pub fn put_rejected(
        &self,
        topic: &str,
        ingest_day: Day,
        partition: u32,
        first: u64,
        last: u64,
        records: &[(ArchiveRecord, &str, &str)],
    ) -> Result<String, SinkError> {
        if first > last {
            return Err(SinkError::s3(
                format!("archiving rejections of {topic} partition {partition}"),
                format!("empty offset range {first}..={last}"),
            ));
        }
        check_records(topic, partition, first, last, records.iter().map(|r| &r.0))?;
        let key = object_key(
            &self.prefix,
            ObjectKind::Rejected,
            topic,
            ingest_day,
            partition,
            first,
            last,
        );
        if records.is_empty() {
            return Ok(key);
        }
        let (body, plain) = encode_object(
            records
                .iter()
                .map(|(record, reason, detail)| (record, Some((*reason, *detail)))),
        )?;
        self.put(&key, body, records.len(), plain)?;
        Ok(key)
    }

    fn put(&self, key: &str, body: Vec<u8>, records: usize, plain: usize) -> Result<(), SinkError> {
        let start = Instant::now();
        let size = body.len();
        self.send_put(key, body, "application/x-ndjson", Some("gzip"))?;
        tracing::debug!(
            key,
            records,
            bytes = plain,
            gzip_bytes = size,
            ms = start.elapsed().as_millis() as u64,
            "s3: put object"
        );
        Ok(())
    }

    /// Writes `body` as the object `key` (taken as is, like [`list`](S3Archive::list)'s
    /// prefix), replacing any object of that key.
    pub fn put_bytes(&self, key: &str, body: Vec<u8>) -> Result<(), SinkError> {
        self.send_put(key, body, "application/octet-stream", None)
    }

    fn send_put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        content_encoding: Option<&str>,
    ) -> Result<(), SinkError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body));
        if let Some(encoding) = content_encoding {
            request = request.content_encoding(encoding);
        }
        self.runtime.block_on(request.send()).map_err(|e| {
            SinkError::s3(format!("writing s3://{}/{key}", self.bucket), sdk_error(e))
        })?;
        Ok(())
    }

    /// Every key of the bucket that starts with `prefix`, sorted. `prefix` is a key prefix
    /// taken as is (not joined with the configured prefix; see [`prefix`](S3Archive::prefix)),
    /// e.g. `"raw/steps/2026-11-27/"`. All pages of the listing are read.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        self.list_after(prefix, None)
    }

    /// [`list`](S3Archive::list), only the keys after `start_after` (in S3's byte order) when
    /// given: e.g. the objects of a topic from some ingest day on.
    pub fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, SinkError> {
        let start = Instant::now();
        let mut keys = Vec::new();
        self.runtime.block_on(async {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_start_after(start_after.map(str::to_owned))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| {
                    SinkError::s3(
                        format!("listing s3://{}/{prefix}", self.bucket),
                        sdk_error(e),
                    )
                })?;
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().map(String::from)),
                );
            }
            Ok::<(), SinkError>(())
        })?;
        keys.sort_unstable();
        tracing::debug!(
            prefix,
            keys = keys.len(),
            ms = start.elapsed().as_millis() as u64,
            "s3: listed"
        );
        Ok(keys)
    }

    /// Deletes the object `key` (deleting a missing object is not an error).
    pub fn delete(&self, key: &str) -> Result<(), SinkError> {
        self.runtime
            .block_on(
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send(),
            )
            .map_err(|e| {
                SinkError::s3(format!("deleting s3://{}/{key}", self.bucket), sdk_error(e))
            })?;
        tracing::debug!(key, "s3: deleted object");
        Ok(())
    }

    /// Downloads the object `key` (whole).
    pub fn get_object(&self, key: &str) -> Result<Vec<u8>, SinkError> {
        let start = Instant::now();
        let what = || format!("reading s3://{}/{key}", self.bucket);
        let bytes = self.runtime.block_on(async {
            let response = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| SinkError::s3(what(), sdk_error(e)))?;
            let body = response
                .body
                .collect()
                .await
                .map_err(|e| SinkError::s3(what(), DisplayErrorContext(e).to_string()))?;
            Ok::<Vec<u8>, SinkError>(body.to_vec())
        })?;
        tracing::debug!(
            key,
            gzip_bytes = bytes.len(),
            ms = start.elapsed().as_millis() as u64,
            "s3: got object"
        );
        Ok(bytes)
    }

    /// The records of the archive object `key` (gunzipped and parsed), in file order; values
    /// are restored byte for byte (from `raw_hex` when they were not UTF-8). Reason and
    /// detail of a `rejected/` object are dropped: see
    /// [`get_rejected`](S3Archive::get_rejected).
    pub fn get_lines(&self, key: &str) -> Result<Vec<ArchiveRecord>, SinkError> {
        Ok(self
            .get_rejected(key)?
            .into_iter()
            .map(|r| r.record)
            .collect())
    }

    /// The records of the archive object `key` with their reason and detail (empty for a
    /// `raw/` object).
    pub fn get_rejected(&self, key: &str) -> Result<Vec<RejectedRecord>, SinkError> {
        let bytes = self.get_object(key)?;
        decode_object(&format!("s3://{}/{key}", self.bucket), &bytes)
    }

    /// The archive objects under `prefix` (as in [`list`](S3Archive::list)) in key order, one
    /// downloaded at a time as the iterator advances: `(key, records)`.
    pub fn objects(&self, prefix: &str) -> Result<ArchiveObjects<'_>, SinkError> {
        Ok(ArchiveObjects {
            archive: self,
            keys: self.list(prefix)?.into_iter(),
        })
    }

    /// Every record under `prefix`, in key order (for one topic's `raw/` objects: by ingest
    /// day, then partition, then offset), one object in memory at a time. This is what a
    /// replay (`rankmysteps run --input s3://bucket/prefix`, see [`parse_s3_url`]) reads:
    /// give it a `raw/` prefix, or a narrower one (a topic, a day), since `rejected/` objects
    /// repeat records of `raw/` ones.
    ///
    /// [`parse_s3_url`]: super::parse_s3_url
    pub fn read_all(&self, prefix: &str) -> Result<ArchiveRecords<'_>, SinkError> {
        Ok(ArchiveRecords {
            objects: self.objects(prefix)?,
            current: Vec::new().into_iter(),
        })
    }
}

/// Checks that `records` are all of `partition`, within `first..=last`, in strictly increasing
/// offset order, and that `topic` can be a key component.
fn check_records<'a>(
    topic: &str,
    partition: u32,
    first: u64,
    last: u64,
    records: impl Iterator<Item = &'a ArchiveRecord>,
) -> Result<(), SinkError> {
    check_topic(topic)?;
    let mut previous: Option<u64> = None;
    for record in records {
        let problem = if record.partition != partition {
            Some(format!("a record of partition {}", record.partition))
        } else if record.offset < first || record.offset > last {
            Some(format!("offset {} outside {first}..={last}", record.offset))
        } else if previous.is_some_and(|p| p >= record.offset) {
            Some(format!(
                "offset {} not after {}",
                record.offset,
                previous.unwrap_or(0)
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(SinkError::s3(
                format!("archiving {topic} partition {partition}"),
                problem,
            ));
        }
        previous = Some(record.offset);
    }
    Ok(())
}

/// The objects under a prefix, downloaded one at a time: see [`S3Archive::objects`].
#[derive(Debug)]
pub struct ArchiveObjects<'a> {
    archive: &'a S3Archive,
    keys: std::vec::IntoIter<String>,
}

impl Iterator for ArchiveObjects<'_> {
    type Item = Result<(String, Vec<ArchiveRecord>), SinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.keys.next()?;
        Some(self.archive.get_lines(&key).map(|records| (key, records)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.keys.size_hint()
    }
}

/// The records under a prefix, in key order: see [`S3Archive::read_all`]. After an error the
/// iterator goes on with the next object.
#[derive(Debug)]
pub struct ArchiveRecords<'a> {
    objects: ArchiveObjects<'a>,
    current: std::vec::IntoIter<ArchiveRecord>,
}

impl Iterator for ArchiveRecords<'_> {
    type Item = Result<ArchiveRecord, SinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.current.next() {
                return Some(Ok(record));
            }
            match self.objects.next()? {
                Ok((_, records)) => self.current = records.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(partition: u32, offset: u64) -> ArchiveRecord {
        ArchiveRecord {
            partition,
            offset,
            ..ArchiveRecord::default()
        }
    }

    #[test]
    fn records_must_fit_their_key() {
        let check = |records: &[ArchiveRecord], first, last| {
            check_records("steps", 1, first, last, records.iter()).is_ok()
        };
        assert!(check(&[r(1, 3), r(1, 4), r(1, 9)], 3, 9));
        assert!(check(&[], 3, 9));
        assert!(!check(&[r(1, 3), r(2, 4)], 3, 4), "other partition");
        assert!(!check(&[r(1, 4), r(1, 3)], 3, 4), "decreasing");
        assert!(!check(&[r(1, 3), r(1, 3)], 3, 3), "repeated");
        assert!(!check(&[r(1, 2)], 3, 4), "before the range");
        assert!(!check(&[r(1, 5)], 3, 4), "after the range");
        assert!(check_records("a/b", 1, 0, 0, [].iter()).is_err(), "topic");
    }

    #[test]
    fn archive_is_send_and_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<S3Archive>();
    }
}
