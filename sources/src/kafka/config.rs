use std::collections::BTreeMap;

use serde::Deserialize;

/// Where step events come from (`[kafka]` of `cluster.toml`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic of step events (records keyed by the user's UUID).
    pub topic: String,
    /// Extra librdkafka properties, passed through as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// A librdkafka client configuration with the brokers and the extra properties.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", self.brokers.join(","));
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}
