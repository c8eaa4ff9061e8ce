//! The `Network` trait for AWS: security groups (by id, or by name in the
//! subnet's VPC), subnets, Elastic IPs. The library's VPCs are in `vpc`,
//! network interfaces in `interfaces`, key pairs in `keys`.

use aws_sdk_ec2::types::Filter;

use async_trait::async_trait;

use super::{AwsCloud, absent, sdk_error};
use crate::error::{CloudError, ErrorKind};
use crate::model::InstanceId;
use crate::prelude::*;

/// Whether a security group reference is an id rather than a name.
pub(crate) fn is_group_id(g: &str) -> bool {
    g.strip_prefix("sg-")
        .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Ids for `groups` from the `(name, id)` pairs found in `vpc`, in order.
pub(crate) fn resolve_groups(
    groups: &[String],
    found: &[(String, String)],
    vpc: &str,
) -> Result<Vec<String>, CloudError> {
    groups
        .iter()
        .map(|g| {
            if is_group_id(g) {
                return Ok(g.clone());
            }
            let ids: Vec<&str> = found
                .iter()
                .filter(|(n, _)| n == g)
                .map(|(_, id)| id.as_str())
                .collect();
            match ids.as_slice() {
                [id] => Ok((*id).to_owned()),
                [] => Err(CloudError::other(
                    "DescribeSecurityGroups",
                    ErrorKind::InvalidRequest,
                    format!("security group {g:?} not found in {vpc}"),
                )),
                many => Err(CloudError::other(
                    "DescribeSecurityGroups",
                    ErrorKind::InvalidRequest,
                    format!(
                        "security group name {g:?} matches {} groups in {vpc} ({}); give its id",
                        many.len(),
                        many.join(", ")
                    ),
                )),
            }
        })
        .collect()
}

#[async_trait]
impl Network for AwsCloud {
    /// The ids of `groups`: an id (`sg-…`) as it is, a name looked up in
    /// the VPC of `subnet` (the default VPC without one). A name that
    /// matches no group, or several, is an error naming it.
    async fn security_group_ids(
        &self,
        groups: &[String],
        subnet: Option<&str>,
    ) -> Result<Vec<String>, CloudError> {
        const OP: &str = "DescribeSecurityGroups";
        let names: Vec<&String> = groups.iter().filter(|g| !is_group_id(g)).collect();
        if names.is_empty() {
            return Ok(groups.to_vec());
        }
        let vpc = match subnet {
            Some(s) => self
                .ec2
                .describe_subnets()
                .subnet_ids(s)
                .send()
                .await
                .map_err(|e| sdk_error("DescribeSubnets", e))?
                .subnets()
                .first()
                .and_then(|x| x.vpc_id().map(str::to_owned)),
            None => self
                .ec2
                .describe_vpcs()
                .filters(Filter::builder().name("is-default").values("true").build())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeVpcs", e))?
                .vpcs()
                .first()
                .and_then(|v| v.vpc_id().map(str::to_owned)),
        };
        let Some(vpc) = vpc else {
            return Err(CloudError::other(
                OP,
                ErrorKind::InvalidRequest,
                match subnet {
                    Some(s) => format!("subnet {s} not found: cannot look up security groups by name"),
                    None => "no default VPC to look up security groups by name in: give their ids, or a subnet".to_owned(),
                },
            ));
        };
        let found = self
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("vpc-id").values(&vpc).build())
            .filters(
                Filter::builder()
                    .name("group-name")
                    .set_values(Some(names.iter().map(|n| (*n).clone()).collect()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        let pairs: Vec<(String, String)> = found
            .security_groups()
            .iter()
            .filter_map(|g| Some((g.group_name()?.to_owned(), g.group_id()?.to_owned())))
            .collect();
        resolve_groups(groups, &pairs, &vpc)
    }

    async fn subnet_zone(&self, subnet_id: &str) -> Result<String, CloudError> {
        const OP: &str = "DescribeSubnets";
        let out = self
            .ec2
            .describe_subnets()
            .subnet_ids(subnet_id)
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        out.subnets()
            .first()
            .and_then(|s| s.availability_zone())
            .map(str::to_owned)
            .ok_or_else(|| {
                CloudError::other(
                    OP,
                    ErrorKind::NotFound,
                    format!("subnet {subnet_id} not found"),
                )
            })
    }

    /// Associates an Elastic IP allocation with an instance (taking it from another if needed).
    async fn associate_address(
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

    async fn address_holder(&self, allocation_id: &str) -> Result<Option<InstanceId>, CloudError> {
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
                a.instance_id()
                    .filter(|i| !i.is_empty())
                    .map(InstanceId::new)
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_pass_and_names_resolve_to_exactly_one_group() {
        let found = [
            ("web".to_owned(), "sg-0a".to_owned()),
            ("dup".to_owned(), "sg-0b".to_owned()),
            ("dup".to_owned(), "sg-0c".to_owned()),
        ];
        let g = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            resolve_groups(&g(&["sg-0123abcd", "web"]), &found, "vpc-1").expect("ok"),
            ["sg-0123abcd", "sg-0a"]
        );
        let none = resolve_groups(&g(&["nope"]), &found, "vpc-1").expect_err("none");
        assert!(
            none.message.contains("\"nope\" not found in vpc-1"),
            "{none}"
        );
        let two = resolve_groups(&g(&["dup"]), &found, "vpc-1").expect_err("two");
        assert!(
            two.message
                .contains("matches 2 groups in vpc-1 (sg-0b, sg-0c)"),
            "{two}"
        );
        // "sg-" followed by a name is a name.
        assert!(!is_group_id("sg-web") && is_group_id("sg-0123abcd"));
    }
}
