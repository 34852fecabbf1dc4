//! RankMySteps event sources: parsing of event records (design §1), and the sources that
//! produce them.

pub mod parse;
pub mod chunk;
pub mod error;
pub mod file;
pub mod generator;
pub mod operator;

pub use error::SourceError;
