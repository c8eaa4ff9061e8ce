//! A box's name: its Route53 A record follows the live instance.

use spotkeeper_cloud::{Cloud, CloudError, DnsRecord, Instance};

use crate::config::{BoxSpec, DnsAddress, DnsSpec};

/// Why the DNS step failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The hosted zone does not exist.
    #[error("hosted zone {0} not found in Route53 (dns.zone)")]
    NoZone(String),
    /// The instance has no address of the kind asked for.
    #[error("instance {id} has no {kind} address for {name}")]
    NoAddress {
        /// Instance.
        id: String,
        /// public / private.
        kind: &'static str,
        /// Record name.
        name: String,
    },
    /// An AWS call failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
}

/// What the record says and whether it matches the box.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DnsStatus {
    /// The record name.
    pub name: String,
    /// What it points at now.
    pub record: Option<DnsRecord>,
    /// The live instance's address (of the configured kind).
    pub instance_address: Option<String>,
    /// Whether the record points at exactly that address.
    pub matches: bool,
}

/// The hosted zone id, or an error naming the missing zone.
pub async fn zone_id(cloud: &dyn Cloud, dns: &DnsSpec) -> Result<String, DnsError> {
    cloud
        .dns_zone(&dns.zone)
        .await?
        .ok_or_else(|| DnsError::NoZone(dns.zone.clone()))
}

/// The address the record should hold for `instance`.
pub fn address_for(dns: &DnsSpec, instance: &Instance) -> Option<String> {
    match dns.address {
        DnsAddress::Public => instance.public_ip.clone(),
        DnsAddress::Private => instance.private_ip.clone(),
    }
}

/// UPSERTs the record to the instance's address; returns the address.
pub async fn point(
    cloud: &dyn Cloud,
    dns: &DnsSpec,
    instance: &Instance,
) -> Result<String, DnsError> {
    let zone = zone_id(cloud, dns).await?;
    let address = address_for(dns, instance).ok_or_else(|| DnsError::NoAddress {
        id: instance.id.to_string(),
        kind: match dns.address {
            DnsAddress::Public => "public",
            DnsAddress::Private => "private",
        },
        name: dns.name.clone(),
    })?;
    cloud
        .upsert_dns(&zone, &dns.name, &address, dns.ttl)
        .await?;
    Ok(address)
}

/// Deletes the record if it exists; returns it.
pub async fn remove(cloud: &dyn Cloud, dns: &DnsSpec) -> Result<Option<DnsRecord>, DnsError> {
    let zone = zone_id(cloud, dns).await?;
    let record = cloud.dns_record(&zone, &dns.name).await?;
    if let Some(r) = &record {
        cloud.delete_dns(&zone, r).await?;
    }
    Ok(record)
}

/// The record next to the live instance.
pub async fn status(
    cloud: &dyn Cloud,
    spec: &BoxSpec,
    live: Option<&Instance>,
) -> Result<Option<DnsStatus>, DnsError> {
    let Some(dns) = &spec.dns else {
        return Ok(None);
    };
    let zone = zone_id(cloud, dns).await?;
    let record = cloud.dns_record(&zone, &dns.name).await?;
    let instance_address = live.and_then(|i| address_for(dns, i));
    let matches = match (&record, &instance_address) {
        (Some(r), Some(a)) => r.values == [a.clone()],
        _ => false,
    };
    Ok(Some(DnsStatus {
        name: dns.name.clone(),
        record,
        instance_address,
        matches,
    }))
}
