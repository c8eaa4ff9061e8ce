//! Route53: find a hosted zone, read, UPSERT and delete A records; Elastic IPs.

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use super::{AwsCloud, absent, sdk_error};
use crate::error::{CloudError, ErrorKind};
use crate::model::{DnsRecord, InstanceId, fqdn};

impl AwsCloud {
    /// The id of the hosted zone named `name` (`example.com` or `example.com.`), if it exists.
    pub async fn dns_zone(&self, name: &str) -> Result<Option<String>, CloudError> {
        let want = fqdn(name);
        let out = self
            .route53
            .list_hosted_zones_by_name()
            .dns_name(&want)
            .send()
            .await
            .map_err(|e| sdk_error("ListHostedZonesByName", e))?;
        Ok(out
            .hosted_zones()
            .iter()
            .find(|z| fqdn(z.name()) == want)
            .map(|z| z.id().trim_start_matches("/hostedzone/").to_owned()))
    }

    /// The A record `name` in zone `zone_id`, if any.
    pub async fn dns_record(
        &self,
        zone_id: &str,
        name: &str,
    ) -> Result<Option<DnsRecord>, CloudError> {
        let want = fqdn(name);
        let out = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone_id)
            .start_record_name(&want)
            .start_record_type(RrType::A)
            .max_items(1)
            .send()
            .await
            .map_err(|e| sdk_error("ListResourceRecordSets", e))?;
        Ok(out
            .resource_record_sets()
            .iter()
            .find(|r| fqdn(r.name()) == want && r.r#type() == &RrType::A)
            .map(|r| DnsRecord {
                name: want.clone(),
                values: r
                    .resource_records()
                    .iter()
                    .map(|v| v.value().to_owned())
                    .collect(),
                ttl: r.ttl().unwrap_or(300),
            }))
    }

    async fn change_record(
        &self,
        zone_id: &str,
        action: ChangeAction,
        record: &DnsRecord,
    ) -> Result<(), CloudError> {
        const OP: &str = "ChangeResourceRecordSets";
        let invalid = |e: aws_sdk_route53::error::BuildError| {
            CloudError::other(OP, ErrorKind::InvalidRequest, e.to_string())
        };
        let mut set = ResourceRecordSet::builder()
            .name(&record.name)
            .r#type(RrType::A)
            .ttl(record.ttl);
        for v in &record.values {
            set = set.resource_records(
                ResourceRecord::builder()
                    .value(v)
                    .build()
                    .map_err(invalid)?,
            );
        }
        let change = Change::builder()
            .action(action)
            .resource_record_set(set.build().map_err(invalid)?)
            .build()
            .map_err(invalid)?;
        self.route53
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(
                ChangeBatch::builder()
                    .changes(change)
                    .comment("spotkeeper")
                    .build()
                    .map_err(invalid)?,
            )
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        Ok(())
    }

    /// Creates or replaces the A record `name` → `address`.
    pub async fn upsert_dns(
        &self,
        zone_id: &str,
        name: &str,
        address: &str,
        ttl: i64,
    ) -> Result<(), CloudError> {
        let record = DnsRecord {
            name: fqdn(name),
            values: vec![address.to_owned()],
            ttl,
        };
        self.change_record(zone_id, ChangeAction::Upsert, &record)
            .await
    }

    /// Deletes the A record exactly as it is now (Route53 requires the current values).
    pub async fn delete_dns(&self, zone_id: &str, record: &DnsRecord) -> Result<(), CloudError> {
        self.change_record(zone_id, ChangeAction::Delete, record)
            .await
    }

    /// Associates an Elastic IP allocation with an instance (taking it from another if needed).
    pub async fn associate_address(
        &self,
        allocation_id: &str,
        instance: &InstanceId,
        reassociate: bool,
    ) -> Result<(), CloudError> {
        self.ec2
            .associate_address()
            .allocation_id(allocation_id)
            .instance_id(instance.as_str())
            .allow_reassociation(reassociate)
            .send()
            .await
            .map_err(|e| sdk_error("AssociateAddress", e))?;
        Ok(())
    }

    /// The public address of an Elastic IP allocation and the instance it is on.
    pub async fn address(
        &self,
        allocation_id: &str,
    ) -> Result<Option<(String, Option<InstanceId>)>, CloudError> {
        Ok(absent(
            self.ec2
                .describe_addresses()
                .allocation_ids(allocation_id)
                .send()
                .await
                .map_err(|e| sdk_error("DescribeAddresses", e)),
        )?
        .and_then(|out| {
            out.addresses().first().and_then(|a| {
                Some((
                    a.public_ip()?.to_owned(),
                    a.instance_id()
                        .filter(|i| !i.is_empty())
                        .map(InstanceId::new),
                ))
            })
        }))
    }
}
