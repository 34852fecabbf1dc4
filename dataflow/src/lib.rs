//! The RankMySteps dataflow: accepted step events become per-(day, user) totals and a per-day
//! ranking, maintained incrementally on timely + differential dataflow (design §1-3).
//!
//! Every stage is a plain function from collections to collections (see [`pipeline`]); the
//! results of each completed epoch reach a sink through [`deliver`]; the sequential
//! [`reference`] implements the same semantics without a dataflow, for tests.

pub mod arranged;
pub mod batcher;
pub mod checkpoint;
pub mod dedup;
pub mod deliver;
pub mod event;
pub mod keybatch;
pub mod output;
pub mod pipeline;
pub mod random;
pub mod ranking;
pub mod reference;
pub mod state;
