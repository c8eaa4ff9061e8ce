//! The config file as written: serde structs that remember where each value
//! stands in the file ([`Spanned`]); keywords are `keywords`' enums.
//! Nothing here checks more than the shape; `box_spec`, `pool_spec`,
//! `sinks` and the top level validate.

use std::collections::BTreeMap;

use serde::Deserialize;
use spotkeeper_cloud::Market;
use toml::Spanned;

use super::keywords::{DnsAddress, Fallback, OnRebalance, OnStop, PriceCap, RetryMode, SinkKind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) owner: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) aws: RawAws,
    pub(crate) daemon: Option<RawDaemon>,
    pub(crate) api: Option<RawApi>,
    #[serde(default, rename = "box")]
    pub(crate) boxes: BTreeMap<Spanned<String>, RawBox>,
    #[serde(default, rename = "pool")]
    pub(crate) pools: BTreeMap<Spanned<String>, RawPool>,
    #[serde(default)]
    pub(crate) notify: Vec<Spanned<RawSink>>,
    pub(crate) cost: Option<RawCost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCost {
    #[serde(default)]
    pub(crate) on_demand: BTreeMap<Spanned<String>, Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAws {
    pub(crate) region: Option<Spanned<String>>,
    pub(crate) profile: Option<String>,
    pub(crate) endpoint_url: Option<Spanned<String>>,
    pub(crate) operation_timeout: Option<Spanned<String>>,
    pub(crate) attempt_timeout: Option<Spanned<String>>,
    pub(crate) max_attempts: Option<Spanned<i64>>,
    pub(crate) retry_mode: Option<RetryMode>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) token: Option<String>,
    pub(crate) allow_commands: Option<bool>,
    pub(crate) instance_profiles: Option<Vec<String>>,
    pub(crate) demand_hosts: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    pub(crate) state: Option<String>,
    pub(crate) queue: Option<Spanned<String>>,
    pub(crate) interval: Option<Spanned<String>>,
    pub(crate) max_tasks: Option<Spanned<i64>>,
    pub(crate) retention: Option<Spanned<String>>,
    pub(crate) database: Option<Spanned<String>>,
    pub(crate) lease: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBox {
    pub(crate) image: Spanned<String>,
    pub(crate) instance_types: Spanned<Vec<Spanned<String>>>,
    pub(crate) max_price: Spanned<f64>,
    pub(crate) zones: Option<Spanned<Vec<String>>>,
    pub(crate) market: Option<Market>,
    pub(crate) key_name: Option<String>,
    #[serde(default)]
    pub(crate) security_groups: Vec<String>,
    pub(crate) subnet: Option<String>,
    pub(crate) subnets: Option<Spanned<Vec<String>>>,
    pub(crate) user_data: Option<Spanned<String>>,
    pub(crate) user_data_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) tags: BTreeMap<Spanned<String>, String>,
    pub(crate) ready: Option<Spanned<RawReady>>,
    pub(crate) root_disk: Option<Spanned<RawDisk>>,
    pub(crate) iam_instance_profile: Option<String>,
    pub(crate) ssh: Option<Spanned<RawSsh>>,
    pub(crate) base_image: Option<Spanned<String>>,
    pub(crate) image_from_box: Option<bool>,
    pub(crate) data_volume: Option<Spanned<RawVolume>>,
    pub(crate) root_volume: Option<Spanned<RawVolume>>,
    #[serde(default)]
    pub(crate) move_volume: bool,
    pub(crate) dns: Option<Spanned<RawDns>>,
    #[serde(default)]
    pub(crate) keep_dns: bool,
    pub(crate) elastic_ip: Option<Spanned<String>>,
    pub(crate) adopt_elastic_ip: Option<bool>,
    pub(crate) images: Option<Spanned<RawImages>>,
    pub(crate) fallback: Option<Fallback>,
    pub(crate) on_rebalance: Option<OnRebalance>,
    pub(crate) price_cap: Option<PriceCap>,
    pub(crate) metadata: Option<RawMetadata>,
    pub(crate) on_interruption: Option<Spanned<super::interruption::RawOnInterruption>>,
    pub(crate) agent: Option<bool>,
    pub(crate) slo: Option<RawSlo>,
    pub(crate) strategy: Option<crate::rank::Strategy>,
    pub(crate) regions: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) failover_after: Option<Spanned<String>>,
    pub(crate) region_surcharge: Option<Spanned<std::collections::BTreeMap<String, f64>>>,
    pub(crate) return_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlo {
    pub(crate) recover_within: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetadata {
    pub(crate) http_tokens: spotkeeper_cloud::MetadataTokens,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVolume {
    pub(crate) name: String,
    pub(crate) size_gb: Option<i32>,
    #[serde(rename = "type", default = "default_disk_type")]
    pub(crate) kind: String,
    pub(crate) mount: Option<String>,
    pub(crate) on_stop: Option<OnStop>,
    pub(crate) adopt: Option<bool>,
    pub(crate) keep: Option<i64>,
    pub(crate) replicate: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    pub(crate) zone: String,
    pub(crate) name: String,
    #[serde(default = "default_ttl")]
    pub(crate) ttl: i64,
    pub(crate) address: Option<DnsAddress>,
    #[serde(default)]
    pub(crate) adopt: bool,
    #[serde(default)]
    pub(crate) private: bool,
    pub(crate) zone_id: Option<String>,
}

fn default_ttl() -> i64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImages {
    pub(crate) keep: Option<usize>,
    pub(crate) every: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDisk {
    pub(crate) size_gb: i32,
    #[serde(rename = "type", default = "default_disk_type")]
    pub(crate) kind: String,
}

fn default_disk_type() -> String {
    "gp3".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSsh {
    pub(crate) user: String,
    pub(crate) key_file: Option<String>,
    #[serde(default = "default_port")]
    pub(crate) port: u16,
    pub(crate) host: Option<String>,
    pub(crate) jump: Option<String>,
    pub(crate) known_hosts: Option<String>,
    pub(crate) connect_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "check", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum RawReady {
    None {},
    Tcp {
        #[serde(default = "default_port")]
        port: u16,
        host: Option<String>,
        timeout: Option<String>,
    },
    Command {
        command: String,
        timeout: Option<String>,
    },
}

fn default_port() -> u16 {
    22
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub(crate) image: Spanned<String>,
    pub(crate) instance_types: Spanned<Vec<Spanned<RawPoolType>>>,
    pub(crate) max_price: Option<Spanned<f64>>,
    pub(crate) zones: Option<Spanned<Vec<String>>>,
    pub(crate) subnet: Option<String>,
    pub(crate) subnets: Option<Spanned<Vec<String>>>,
    pub(crate) min_capacity: Option<Spanned<i64>>,
    pub(crate) max_capacity: Spanned<i64>,
    pub(crate) jobs_per_capacity: Option<Spanned<i64>>,
    pub(crate) scale_down_after: Option<Spanned<String>>,
    pub(crate) max_lifetime: Option<Spanned<String>>,
    pub(crate) fallback: Option<Fallback>,
    pub(crate) demand: Option<Spanned<RawDemand>>,
    pub(crate) key_name: Option<String>,
    #[serde(default)]
    pub(crate) security_groups: Vec<String>,
    pub(crate) user_data: Option<Spanned<String>>,
    pub(crate) user_data_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) tags: BTreeMap<Spanned<String>, String>,
    pub(crate) iam_instance_profile: Option<String>,
    pub(crate) root_disk: Option<Spanned<RawDisk>>,
    pub(crate) metadata: Option<RawMetadata>,
    pub(crate) on_interruption: Option<Spanned<super::interruption::RawOnInterruption>>,
    pub(crate) strategy: Option<crate::rank::Strategy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoolType {
    #[serde(rename = "type")]
    pub(crate) instance_type: String,
    pub(crate) capacity: Option<i64>,
    pub(crate) max_price: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDemand {
    pub(crate) http: Option<String>,
    pub(crate) sqs: Option<String>,
    pub(crate) timeout: Option<String>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) bearer_env: Option<String>,
}

/// A `[[notify]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSink {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) kind: Spanned<SinkKind>,
    pub(crate) url: Spanned<String>,
    pub(crate) secret: Option<Spanned<String>>,
    pub(crate) secret_env: Option<Spanned<String>>,
    pub(crate) events: Option<Spanned<Vec<Spanned<String>>>>,
}
