//! The JSON Lines file source: a plain or gzip file, a directory of them, or stdin.
//!
//! Epochs are counted in lines (design §2: an epoch is `epoch_events` consecutive lines,
//! blank lines included in the count but not events), so a replay is deterministic whatever
//! the number of workers. Positions are global line indexes over the files in name order.

mod source;

pub use source::{FileInput, SharedFileInput};

#[cfg(test)]
mod tests;
