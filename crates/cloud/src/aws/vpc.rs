//! A VPC for the library: subnets in four zones, an internet gateway, a
//! route table and an SSH security group (`get_or_create_vpc` /
//! `delete_vpc`), all tagged `spotkeeper:vpc`.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, ResourceType, Tag, TagSpecification};

use super::{AwsCloud, ignore_not_found, sdk_error, tag_map};
use crate::error::{CloudError, ErrorKind};
use crate::model::{InstanceId, tags};
use crate::prelude::*;
use crate::wait::{self, Look};

/// Tag naming the spotkeeper VPC a resource belongs to.
pub const VPC_TAG: &str = "spotkeeper:vpc";

/// How many zones a new VPC gets a subnet in (the VPC's range is split in four).
const VPC_SUBNETS: usize = 4;

/// What [`AwsCloud::get_or_create_vpc`] made, with what was made inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcInfo {
    /// The name (`Name` and `spotkeeper:vpc` tags).
    pub name: String,
    /// VPC id.
    pub id: String,
    /// Its IPv4 range.
    pub cidr: String,
    /// One subnet per zone, `(subnet id, zone)`.
    pub subnets: Vec<(String, String)>,
    /// The internet gateway.
    pub internet_gateway_id: Option<String>,
    /// The route table sending 0.0.0.0/0 to the gateway.
    pub route_table_id: Option<String>,
    /// A security group allowing SSH in.
    pub security_group_id: Option<String>,
}

/// Splits an IPv4 CIDR into `parts` (a power of two) equal blocks.
pub fn split_cidr(cidr: &str, parts: usize) -> Result<Vec<String>, String> {
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR block like 10.0.0.0/16"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
    let len: u32 = len
        .parse()
        .map_err(|_| format!("{len:?} is not a prefix length"))?;
    let bits = parts.trailing_zeros();
    if !parts.is_power_of_two() || !(16..=28 - bits).contains(&len) {
        return Err(format!(
            "{cidr}: a VPC needs a prefix from /16 to /{} to hold {parts} subnets",
            28 - bits
        ));
    }
    let base = u32::from(addr) & (u32::MAX << (32 - len));
    let sub = len + bits;
    Ok((0..parts as u32)
        .map(|i| format!("{}/{sub}", Ipv4Addr::from(base + (i << (32 - sub)))))
        .collect())
}

fn tag_spec(kind: ResourceType, name: &str, vpc: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key(tags::NAME).value(name).build())
        .tags(Tag::builder().key(VPC_TAG).value(vpc).build())
        .build()
}

impl AwsCloud {
    /// Finds the VPC named `name` (by its `spotkeeper:vpc` tag) or creates it:
    /// the VPC, a subnet in each of up to four zones (the range split in
    /// four), an internet gateway, a route table with a default route to it,
    /// and a security group allowing SSH from anywhere; all tagged at creation.
    pub(crate) async fn get_or_create_vpc_info(
        &self,
        name: &str,
        cidr: &str,
    ) -> Result<VpcInfo, CloudError> {
        if let Some(found) = self.find_vpc(name).await? {
            return Ok(found);
        }
        let blocks = split_cidr(cidr, VPC_SUBNETS)
            .map_err(|m| CloudError::other("CreateVpc", ErrorKind::InvalidRequest, m))?;
        let vpc = self
            .ec2
            .create_vpc()
            .cidr_block(cidr)
            .tag_specifications(tag_spec(ResourceType::Vpc, name, name))
            .send()
            .await
            .map_err(|e| sdk_error("CreateVpc", e))?;
        let vpc_id = vpc
            .vpc()
            .and_then(|v| v.vpc_id())
            .unwrap_or_default()
            .to_owned();
        let mut info = VpcInfo {
            name: name.into(),
            id: vpc_id.clone(),
            cidr: cidr.into(),
            subnets: vec![],
            internet_gateway_id: None,
            route_table_id: None,
            security_group_id: None,
        };
        // Anything below that fails leaves a tagged, findable VPC: the next
        // call completes it (the steps skip what exists) or delete_vpc removes it.
        self.complete_vpc(&mut info, &blocks).await?;
        Ok(info)
    }

    async fn complete_vpc(&self, info: &mut VpcInfo, blocks: &[String]) -> Result<(), CloudError> {
        self.add_subnets(info, blocks).await?;
        if info.internet_gateway_id.is_none() {
            self.add_gateway(info).await?;
        }
        if info.route_table_id.is_none() {
            self.add_routes(info).await?;
        }
        if info.security_group_id.is_none() {
            self.add_ssh_group(info).await?;
        }
        Ok(())
    }

    /// A public subnet per zone, from `blocks`, where the VPC has none yet.
    async fn add_subnets(&self, info: &mut VpcInfo, blocks: &[String]) -> Result<(), CloudError> {
        let (name, vpc_id) = (info.name.clone(), info.id.clone());
        let zones = self.zones().await?;
        for (block, zone) in blocks.iter().zip(zones.iter()) {
            if info.subnets.iter().any(|(_, z)| z == zone) {
                continue;
            }
            let sn = self
                .ec2
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(block)
                .availability_zone(zone)
                .tag_specifications(tag_spec(
                    ResourceType::Subnet,
                    &format!("{name}-{zone}"),
                    &name,
                ))
                .send()
                .await
                .map_err(|e| sdk_error("CreateSubnet", e))?;
            let id = sn
                .subnet()
                .and_then(|s| s.subnet_id())
                .unwrap_or_default()
                .to_owned();
            self.ec2
                .modify_subnet_attribute()
                .subnet_id(&id)
                .map_public_ip_on_launch(
                    aws_sdk_ec2::types::AttributeBooleanValue::builder()
                        .value(true)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_error("ModifySubnetAttribute", e))?;
            info.subnets.push((id, zone.clone()));
        }
        Ok(())
    }

    /// An internet gateway, attached.
    async fn add_gateway(&self, info: &mut VpcInfo) -> Result<(), CloudError> {
        let (name, vpc_id) = (info.name.clone(), info.id.clone());
        let igw = self
            .ec2
            .create_internet_gateway()
            .tag_specifications(tag_spec(ResourceType::InternetGateway, &name, &name))
            .send()
            .await
            .map_err(|e| sdk_error("CreateInternetGateway", e))?;
        let igw_id = igw
            .internet_gateway()
            .and_then(|g| g.internet_gateway_id())
            .unwrap_or_default()
            .to_owned();
        self.ec2
            .attach_internet_gateway()
            .internet_gateway_id(&igw_id)
            .vpc_id(&vpc_id)
            .send()
            .await
            .map_err(|e| sdk_error("AttachInternetGateway", e))?;
        info.internet_gateway_id = Some(igw_id);
        Ok(())
    }

    /// A route table with the default route through the gateway, on every subnet.
    async fn add_routes(&self, info: &mut VpcInfo) -> Result<(), CloudError> {
        let (name, vpc_id) = (info.name.clone(), info.id.clone());
        let rt = self
            .ec2
            .create_route_table()
            .vpc_id(&vpc_id)
            .tag_specifications(tag_spec(ResourceType::RouteTable, &name, &name))
            .send()
            .await
            .map_err(|e| sdk_error("CreateRouteTable", e))?;
        let rt_id = rt
            .route_table()
            .and_then(|r| r.route_table_id())
            .unwrap_or_default()
            .to_owned();
        self.ec2
            .create_route()
            .route_table_id(&rt_id)
            .destination_cidr_block("0.0.0.0/0")
            .set_gateway_id(info.internet_gateway_id.clone())
            .send()
            .await
            .map_err(|e| sdk_error("CreateRoute", e))?;
        for (subnet, _) in &info.subnets {
            self.ec2
                .associate_route_table()
                .route_table_id(&rt_id)
                .subnet_id(subnet)
                .send()
                .await
                .map_err(|e| sdk_error("AssociateRouteTable", e))?;
        }
        info.route_table_id = Some(rt_id);
        Ok(())
    }

    /// A security group letting SSH in.
    async fn add_ssh_group(&self, info: &mut VpcInfo) -> Result<(), CloudError> {
        let (name, vpc_id) = (info.name.clone(), info.id.clone());
        let sg = self
            .ec2
            .create_security_group()
            .group_name(format!("{name}-ssh"))
            .description("SSH in; made by spotkeeper")
            .vpc_id(&vpc_id)
            .tag_specifications(tag_spec(
                ResourceType::SecurityGroup,
                &format!("{name}-ssh"),
                &name,
            ))
            .send()
            .await
            .map_err(|e| sdk_error("CreateSecurityGroup", e))?;
        let sg_id = sg.group_id().unwrap_or_default().to_owned();
        self.ec2
            .authorize_security_group_ingress()
            .group_id(&sg_id)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(22)
                    .to_port(22)
                    .ip_ranges(
                        IpRange::builder()
                            .cidr_ip("0.0.0.0/0")
                            .description("SSH")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("AuthorizeSecurityGroupIngress", e))?;
        info.security_group_id = Some(sg_id);
        Ok(())
    }

    fn vpc_filter(name: &str) -> Filter {
        Filter::builder()
            .name(format!("tag:{VPC_TAG}"))
            .values(name)
            .build()
    }

    /// The VPC named `name` with what spotkeeper made in it, if it exists.
    pub(crate) async fn find_vpc(&self, name: &str) -> Result<Option<VpcInfo>, CloudError> {
        let vpcs = self
            .ec2
            .describe_vpcs()
            .filters(Self::vpc_filter(name))
            .send()
            .await
            .map_err(|e| sdk_error("DescribeVpcs", e))?;
        let Some(vpc) = vpcs
            .vpcs()
            .iter()
            .find(|v| tag_map(v.tags()).get(VPC_TAG).map(String::as_str) == Some(name))
        else {
            return Ok(None);
        };
        let vpc_id = vpc.vpc_id().unwrap_or_default().to_owned();
        let cidr = vpc.cidr_block().unwrap_or_default().to_owned();
        let mut info = self.vpc_info(name, vpc_id, cidr).await?;
        info.subnets.sort_by(|a, b| a.1.cmp(&b.1));
        // A creation cut short is finished here, so a found VPC is always whole.
        let complete = info.internet_gateway_id.is_some()
            && info.route_table_id.is_some()
            && info.security_group_id.is_some()
            && !info.subnets.is_empty();
        if !complete {
            let blocks = split_cidr(&info.cidr, VPC_SUBNETS)
                .map_err(|m| CloudError::other("CreateSubnet", ErrorKind::InvalidRequest, m))?;
            self.complete_vpc(&mut info, &blocks).await?;
        }
        Ok(Some(info))
    }

    /// The subnets, gateway, route table and security group of a VPC.
    async fn vpc_info(
        &self,
        name: &str,
        vpc_id: String,
        cidr: String,
    ) -> Result<VpcInfo, CloudError> {
        let in_vpc = Filter::builder().name("vpc-id").values(&vpc_id).build();
        let subnets = self
            .ec2
            .describe_subnets()
            .filters(in_vpc.clone())
            .send()
            .await
            .map_err(|e| sdk_error("DescribeSubnets", e))?;
        let igws = self
            .ec2
            .describe_internet_gateways()
            .filters(
                Filter::builder()
                    .name("attachment.vpc-id")
                    .values(&vpc_id)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("DescribeInternetGateways", e))?;
        let rts = self
            .ec2
            .describe_route_tables()
            .filters(in_vpc.clone())
            .filters(Self::vpc_filter(name))
            .send()
            .await
            .map_err(|e| sdk_error("DescribeRouteTables", e))?;
        let sgs = self
            .ec2
            .describe_security_groups()
            .filters(in_vpc)
            .filters(Self::vpc_filter(name))
            .send()
            .await
            .map_err(|e| sdk_error("DescribeSecurityGroups", e))?;
        Ok(VpcInfo {
            name: name.into(),
            id: vpc_id,
            cidr,
            subnets: subnets
                .subnets()
                .iter()
                .filter_map(|s| {
                    Some((s.subnet_id()?.to_owned(), s.availability_zone()?.to_owned()))
                })
                .collect(),
            internet_gateway_id: igws
                .internet_gateways()
                .first()
                .and_then(|g| g.internet_gateway_id())
                .map(str::to_owned),
            route_table_id: rts
                .route_tables()
                .first()
                .and_then(|r| r.route_table_id())
                .map(str::to_owned),
            security_group_id: sgs
                .security_groups()
                .first()
                .and_then(|g| g.group_id())
                .map(str::to_owned),
        })
    }

    /// Deletes a VPC and everything in it: terminates its instances (and
    /// waits), deletes leftover network interfaces, the security group, the
    /// route table, the internet gateway, the subnets and the VPC.
    pub async fn delete_vpc(&self, vpc: &VpcInfo) -> Result<(), CloudError> {
        self.empty_vpc(vpc).await?;
        if let Some(sg) = &vpc.security_group_id {
            ignore_not_found(
                self.ec2
                    .delete_security_group()
                    .group_id(sg)
                    .send()
                    .await
                    .map_err(|e| sdk_error("DeleteSecurityGroup", e)),
            )?;
        }
        if let Some(rt) = &vpc.route_table_id {
            self.delete_route_table(rt).await?;
        }
        if let Some(igw) = &vpc.internet_gateway_id {
            ignore_not_found(
                self.ec2
                    .detach_internet_gateway()
                    .internet_gateway_id(igw)
                    .vpc_id(&vpc.id)
                    .send()
                    .await
                    .map_err(|e| sdk_error("DetachInternetGateway", e)),
            )?;
            ignore_not_found(
                self.ec2
                    .delete_internet_gateway()
                    .internet_gateway_id(igw)
                    .send()
                    .await
                    .map_err(|e| sdk_error("DeleteInternetGateway", e)),
            )?;
        }
        for (subnet, _) in &vpc.subnets {
            ignore_not_found(
                self.ec2
                    .delete_subnet()
                    .subnet_id(subnet)
                    .send()
                    .await
                    .map_err(|e| sdk_error("DeleteSubnet", e)),
            )?;
        }
        ignore_not_found(
            self.ec2
                .delete_vpc()
                .vpc_id(&vpc.id)
                .send()
                .await
                .map_err(|e| sdk_error("DeleteVpc", e)),
        )?;
        Ok(())
    }

    /// Terminates the VPC's instances (waiting until they are gone) and
    /// deletes its network interfaces.
    async fn empty_vpc(&self, vpc: &VpcInfo) -> Result<(), CloudError> {
        let in_vpc = || Filter::builder().name("vpc-id").values(&vpc.id).build();
        let out = self
            .ec2
            .describe_instances()
            .filters(in_vpc())
            .send()
            .await
            .map_err(|e| sdk_error("DescribeInstances", e))?;
        let ids: Vec<InstanceId> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                i.state()
                    .and_then(|s| s.name())
                    .is_none_or(|n| n.as_str() != "terminated")
            })
            .filter_map(|i| i.instance_id().map(InstanceId::new))
            .collect();
        if !ids.is_empty() {
            self.terminate(&ids).await?;
            self.wait_terminated(&ids, Duration::from_secs(10 * 60))
                .await?;
        }
        let enis = self
            .ec2
            .describe_network_interfaces()
            .filters(in_vpc())
            .send()
            .await
            .map_err(|e| sdk_error("DescribeNetworkInterfaces", e))?;
        for eni in enis.network_interfaces() {
            if let Some(id) = eni.network_interface_id() {
                ignore_not_found(
                    self.ec2
                        .delete_network_interface()
                        .network_interface_id(id)
                        .send()
                        .await
                        .map_err(|e| sdk_error("DeleteNetworkInterface", e)),
                )?;
            }
        }
        Ok(())
    }

    /// Disassociates a route table from its subnets and deletes it.
    async fn delete_route_table(&self, rt: &str) -> Result<(), CloudError> {
        let rts = self
            .ec2
            .describe_route_tables()
            .route_table_ids(rt)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeRouteTables", e));
        if let Ok(rts) = rts {
            for assoc in rts.route_tables().iter().flat_map(|r| r.associations()) {
                if let (Some(id), false) = (
                    assoc.route_table_association_id(),
                    assoc.main().unwrap_or(false),
                ) {
                    ignore_not_found(
                        self.ec2
                            .disassociate_route_table()
                            .association_id(id)
                            .send()
                            .await
                            .map_err(|e| sdk_error("DisassociateRouteTable", e)),
                    )?;
                }
            }
        }
        ignore_not_found(
            self.ec2
                .delete_route_table()
                .route_table_id(rt)
                .send()
                .await
                .map_err(|e| sdk_error("DeleteRouteTable", e)),
        )?;
        Ok(())
    }

    /// Waits until every instance in `ids` is terminated (or unknown).
    pub async fn wait_terminated(
        &self,
        ids: &[InstanceId],
        within: Duration,
    ) -> Result<(), CloudError> {
        wait::until(
            "DescribeInstances",
            within,
            Duration::from_secs(2),
            || async {
                let mut left = 0;
                for id in ids {
                    if let Some(i) = self.instance(id).await?
                        && i.state != crate::model::InstanceState::Terminated
                    {
                        left += 1;
                    }
                }
                Ok(if left == 0 {
                    Look::Done(())
                } else {
                    Look::NotYet(format!("{left} instance(s) not terminated"))
                })
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_splits_into_equal_aligned_blocks() {
        assert_eq!(
            split_cidr("10.0.0.0/16", 4).expect("ok"),
            [
                "10.0.0.0/18",
                "10.0.64.0/18",
                "10.0.128.0/18",
                "10.0.192.0/18"
            ]
        );
        assert_eq!(
            split_cidr("192.168.1.7/24", 4).expect("ok")[1],
            "192.168.1.64/26"
        );
        assert!(split_cidr("10.0.0.0/27", 4).is_err());
        assert!(split_cidr("10.0.0.0", 4).is_err());
        assert!(split_cidr("10.0.0.0/8", 4).is_err());
    }
}
