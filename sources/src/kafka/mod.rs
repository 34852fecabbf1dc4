//! The Kafka source (design §7): partitions assigned statically (partition p to worker
//! p mod workers, no consumer-group rebalancing), records stamped with wall-clock epochs,
//! positions (next offset per partition) reported for the progress record.

mod config;
mod source;

pub use config::KafkaConfig;
pub use source::{
    check_start, partition_count, partition_count_with, record_pos, split_pos, KafkaSource,
};
