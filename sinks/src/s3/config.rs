//! [`S3Config`]: the `[s3]` section of `cluster.toml`.

use serde::{Deserialize, Serialize};

use crate::SinkError;

/// Where the archive of design §6 is written (design §7).
///
/// Credentials never go into the file: they come from the standard AWS chain, in this order:
/// the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`),
/// the shared profile files (`~/.aws/credentials`, `~/.aws/config`, `AWS_PROFILE`), web
/// identity tokens (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), the ECS container
/// endpoint and the EC2 instance metadata service. (SSO profiles and `credential_process` are
/// not compiled in, to keep the build lean.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible store, e.g. `http://127.0.0.1:9000` (MinIO, Garage).
    /// Absent: AWS S3 itself, the endpoint being derived from the region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region of the bucket (e.g. `us-east-1`; S3-compatible stores usually accept any name
    /// they were configured with, often `us-east-1` or `garage`).
    pub region: String,
    /// Bucket of the archive. It must exist: the archive never creates buckets.
    pub bucket: String,
    /// Key prefix under which every object is written (default `""`, the bucket's root), e.g.
    /// `rankmysteps/` → `rankmysteps/raw/<topic>/...`. A missing trailing `/` is added and a
    /// leading `/` is removed.
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`http://host/bucket/key`) instead of virtual-hosted style
    /// (`http://bucket.host/key`). Most S3-compatible stores need it (default `false`).
    #[serde(default)]
    pub path_style: bool,
    /// Compute request checksums and validate response checksums only when the operation
    /// requires them, instead of whenever it supports them (default `false`). Many
    /// S3-compatible stores (Garage, older MinIO, Ceph) need `true`: they reject or mangle the
    /// newer CRC checksum headers and `aws-chunked` trailers the SDK sends by default.
    #[serde(default)]
    pub checksums_when_required: bool,
}

impl S3Config {
    /// Checks what can be checked without contacting the store: a region and a bucket are
    /// given, the endpoint (if any) is an `http://` or `https://` URL.
    pub fn validate(&self) -> Result<(), SinkError> {
        let invalid = |detail: String| Err(SinkError::s3("configuration", detail));
        if self.region.trim().is_empty() {
            return invalid("`region` is empty".into());
        }
        if self.bucket.trim().is_empty() || self.bucket.contains('/') {
            return invalid(format!(
                "`bucket` {:?} is not a bucket name (non-empty, no `/`)",
                self.bucket
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(|host| host.is_empty()) {
                return invalid(format!(
                    "`endpoint` {endpoint:?} is not an http:// or https:// URL"
                ));
            }
        }
        Ok(())
    }

    /// The key prefix as used in keys: empty, or without a leading `/` and ending with `/`.
    pub fn key_prefix(&self) -> String {
        let prefix = self.prefix.trim_start_matches('/');
        if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_section() {
        let config: S3Config = toml::from_str(
            r#"
            endpoint = "http://127.0.0.1:9000"
            region = "us-east-1"
            bucket = "rankmysteps-archive"
            prefix = "prod"
            path_style = true
            checksums_when_required = true
            "#,
        )
        .unwrap();
        assert_eq!(
            config,
            S3Config {
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: "us-east-1".into(),
                bucket: "rankmysteps-archive".into(),
                prefix: "prod".into(),
                path_style: true,
                checksums_when_required: true,
            }
        );
        config.validate().unwrap();
        assert_eq!(config.key_prefix(), "prod/");
    }

    #[test]
    fn defaults_and_errors() {
        let config: S3Config = toml::from_str("region = \"eu-west-1\"\nbucket = \"b\"").unwrap();
        assert_eq!(config.endpoint, None);
        assert_eq!(config.prefix, "");
        assert!(!config.path_style && !config.checksums_when_required);
        assert_eq!(config.key_prefix(), "");
        config.validate().unwrap();

        // Unknown keys and missing required keys are errors.
        assert!(
            toml::from_str::<S3Config>("region = \"r\"\nbucket = \"b\"\nsecret = \"x\"").is_err()
        );
        assert!(toml::from_str::<S3Config>("region = \"r\"").is_err());

        let bad = |f: fn(&mut S3Config)| {
            let mut c = config.clone();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.bucket = String::new()));
        assert!(bad(|c| c.bucket = "a/b".into()));
        assert!(bad(|c| c.region = " ".into()));
        assert!(bad(|c| c.endpoint = Some("127.0.0.1:9000".into())));
        assert!(bad(|c| c.endpoint = Some("http://".into())));
        assert!(!bad(|c| c.endpoint = Some("https://s3.example".into())));
    }

    #[test]
    fn key_prefix_is_normalised() {
        let mut config: S3Config = toml::from_str("region = \"r\"\nbucket = \"b\"").unwrap();
        for (prefix, expected) in [("", ""), ("/", ""), ("a", "a/"), ("/a/b/", "a/b/")] {
            config.prefix = prefix.into();
            assert_eq!(config.key_prefix(), expected, "{prefix:?}");
        }
    }
}
