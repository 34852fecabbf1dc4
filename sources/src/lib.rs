//! RankMySteps event sources: parsing of event records (design §1), and the sources that
//! produce them.

pub mod chunk;
pub mod error;
pub mod file;
pub mod generator;
pub mod kafka;
pub mod operator;
pub mod parse;

pub use error::SourceError;
