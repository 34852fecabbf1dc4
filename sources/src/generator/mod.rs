//! The built-in generator of users, like the original producers: uniform users, 1–10 steps
//! per event, timestamped with the wall clock (design §9).

mod source;

pub use source::{user_uuid, Generator, GeneratorConfig, TimestampFormat};

#[cfg(test)]
mod tests;
