//! `FakeCloud`'s networks and DNS: security groups, subnets, Elastic IPs and
//! Route53 records in memory.

use async_trait::async_trait;

use super::FakeCloud;
use crate::cloud::{Dns, Network};
use crate::error::CloudError;
use crate::model::*;

#[async_trait]
impl Network for FakeCloud {
    async fn subnet_zone(&self, subnet_id: &str) -> Result<String, CloudError> {
        self.pause("DescribeSubnets").await;
        let s = self.enter("DescribeSubnets")?;
        s.subnets.get(subnet_id).cloned().ok_or_else(|| {
            CloudError::from_code(
                "DescribeSubnets",
                "InvalidSubnetID.NotFound",
                format!("subnet {subnet_id} not found"),
            )
        })
    }

    async fn security_group_ids(
        &self,
        groups: &[String],
        _subnet: Option<&str>,
    ) -> Result<Vec<String>, CloudError> {
        if groups.iter().all(|g| crate::aws::is_group_id(g)) {
            return Ok(groups.to_vec());
        }
        self.pause("DescribeSecurityGroups").await;
        let s = self.enter("DescribeSecurityGroups")?;
        crate::aws::resolve_groups(groups, &s.security_groups, "vpc-fake")
    }

    async fn associate_address(
        &self,
        allocation_id: &str,
        instance: &InstanceId,
        reassociate: bool,
    ) -> Result<(), CloudError> {
        self.pause("AssociateAddress").await;
        let mut s = self.enter("AssociateAddress")?;
        if !reassociate
            && s.addresses
                .get(allocation_id)
                .is_some_and(|holder| holder != instance)
        {
            return Err(CloudError::from_code(
                "AssociateAddress",
                "Resource.AlreadyAssociated",
                format!("{allocation_id} is already associated"),
            ));
        }
        s.addresses
            .insert(allocation_id.to_owned(), instance.clone());
        Ok(())
    }

    async fn address_holder(&self, allocation_id: &str) -> Result<Option<InstanceId>, CloudError> {
        Ok(self
            .enter("DescribeAddresses")?
            .addresses
            .get(allocation_id)
            .cloned())
    }
}

#[async_trait]
impl Dns for FakeCloud {
    async fn dns_zone(&self, name: &str, private: bool) -> Result<Option<String>, CloudError> {
        Ok(self
            .enter("ListHostedZonesByName")?
            .dns_zones
            .get(&(fqdn(name), private))
            .cloned())
    }

    async fn dns_record(
        &self,
        zone_id: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<DnsRecord>, CloudError> {
        self.pause("ListResourceRecordSets").await;
        let s = self.enter("ListResourceRecordSets")?;
        Ok(s.records
            .get(&(zone_id.to_owned(), fqdn(name), kind))
            .cloned())
    }

    async fn change_dns(&self, zone_id: &str, changes: &[DnsChange]) -> Result<(), CloudError> {
        const OP: &str = "ChangeResourceRecordSets";
        let mut s = self.enter(OP)?;
        // Route53 checks the whole batch first: all or none.
        let mut next = s.records.clone();
        for c in changes {
            let key = (zone_id.to_owned(), fqdn(&c.record.name), c.kind);
            let record = DnsRecord {
                name: fqdn(&c.record.name),
                ..c.record.clone()
            };
            match c.action {
                DnsAction::Create if next.contains_key(&key) => {
                    return Err(CloudError::from_code(
                        OP,
                        "InvalidChangeBatch",
                        format!(
                            "Tried to create resource record set {} but it already exists",
                            key.1
                        ),
                    ));
                }
                DnsAction::Create | DnsAction::Upsert => {
                    next.insert(key, record);
                }
                DnsAction::Delete => {
                    if next.get(&key).map(|r| (&r.values, r.ttl))
                        != Some((&record.values, record.ttl))
                    {
                        return Err(CloudError::from_code(
                            OP,
                            "InvalidChangeBatch",
                            format!(
                                "Tried to delete resource record set {} but it was not found",
                                key.1
                            ),
                        ));
                    }
                    next.remove(&key);
                }
            }
        }
        s.records = next;
        Ok(())
    }
}
