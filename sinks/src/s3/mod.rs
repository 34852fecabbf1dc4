//! The S3 archive of design §6: every consumed record, accepted or not, and the rejected ones
//! with their reason, as gzip-compressed JSON Lines objects with deterministic keys.
//!
//! ```text
//! {prefix}raw/<topic>/<YYYY-MM-DD>/p<partition>-<first offset>-<last offset>.jsonl.gz
//! {prefix}rejected/<topic>/<YYYY-MM-DD>/p<partition>-<first offset>-<last offset>.jsonl.gz
//! ```
//!
//! The date is the ingest day, offsets are zero-padded to 20 digits (so a partition's keys
//! sort by offset) and the range is inclusive. Each line is
//! `{"raw": "<value>", "raw_hex": "<hex>", "partition": p, "offset": o, "kafka_timestamp": ms}`
//! (`raw_hex` only when the value is not valid UTF-8, `kafka_timestamp` may be `null`), plus
//! `"reason"` and `"detail"` in `rejected/` objects. Keys depend only on the range, so
//! rewriting a range after a crash replaces its object, never duplicates it (design §4).
//!
//! - [`config`]: [`S3Config`], the `[s3]` section of `cluster.toml`.
//! - [`archive`]: [`S3Archive`], the synchronous client: `put_raw`, `put_rejected`, `list`,
//!   `get_lines`, `read_all` (replays of `s3://bucket/prefix`, see [`parse_s3_url`]).
//! - [`format`]: keys and the line encoding, without I/O.

pub mod archive;
pub mod config;
pub mod format;

pub use archive::{ArchiveObjects, ArchiveRecords, S3Archive};
pub use config::S3Config;
pub use format::{
    object_key, parse_object_key, parse_s3_url, ArchiveRecord, ObjectKey, ObjectKind,
    RejectedRecord, OFFSET_DIGITS,
};
