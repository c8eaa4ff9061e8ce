//! Network interfaces for the library: create one in a subnet and attach it,
//! read them, delete one.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use super::{AwsCloud, absent, ignore_not_found, sdk_error, tag_map};
use crate::error::{CloudError, ErrorKind};
use crate::model::{InstanceId, NetworkInterface};

impl AwsCloud {
    /// Creates a network interface in `subnet` (tagged at creation) and
    /// attaches it to `instance` at `device_index`.
    pub async fn attach_new_network_interface(
        &self,
        instance: &InstanceId,
        subnet: &str,
        device_index: i32,
        security_groups: &[String],
        tags: &[(String, String)],
    ) -> Result<NetworkInterface, CloudError> {
        let mut spec = TagSpecification::builder().resource_type(ResourceType::NetworkInterface);
        for (k, v) in tags {
            spec = spec.tags(Tag::builder().key(k).value(v).build());
        }
        let mut req = self
            .ec2
            .create_network_interface()
            .subnet_id(subnet)
            .tag_specifications(spec.build());
        if !security_groups.is_empty() {
            req = req.set_groups(Some(security_groups.to_vec()));
        }
        let eni = req
            .send()
            .await
            .map_err(|e| sdk_error("CreateNetworkInterface", e))?;
        let id = eni
            .network_interface()
            .and_then(|n| n.network_interface_id())
            .unwrap_or_default()
            .to_owned();
        let att = self
            .ec2
            .attach_network_interface()
            .network_interface_id(&id)
            .instance_id(instance.as_str())
            .device_index(device_index)
            .send()
            .await
            .map_err(|e| sdk_error("AttachNetworkInterface", e))?;
        if let Some(attachment) = att.attachment_id() {
            // Deleted with the instance, as volumes added to it are.
            self.ec2
                .modify_network_interface_attribute()
                .network_interface_id(&id)
                .attachment(
                    aws_sdk_ec2::types::NetworkInterfaceAttachmentChanges::builder()
                        .attachment_id(attachment)
                        .delete_on_termination(true)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_error("ModifyNetworkInterfaceAttribute", e))?;
        }
        self.network_interface(&id).await?.ok_or_else(|| {
            CloudError::other(
                "DescribeNetworkInterfaces",
                ErrorKind::NotFound,
                format!("network interface {id} vanished"),
            )
        })
    }

    /// One network interface; `None` when it does not exist.
    pub async fn network_interface(
        &self,
        id: &str,
    ) -> Result<Option<NetworkInterface>, CloudError> {
        Ok(absent(
            self.ec2
                .describe_network_interfaces()
                .network_interface_ids(id)
                .send()
                .await
                .map_err(|e| sdk_error("DescribeNetworkInterfaces", e)),
        )?
        .and_then(|out| out.network_interfaces().first().map(convert_eni)))
    }

    /// Network interfaces attached to an instance, by device index.
    pub async fn instance_network_interfaces(
        &self,
        instance: &InstanceId,
    ) -> Result<Vec<NetworkInterface>, CloudError> {
        let out = self
            .ec2
            .describe_network_interfaces()
            .filters(
                Filter::builder()
                    .name("attachment.instance-id")
                    .values(instance.as_str())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("DescribeNetworkInterfaces", e))?;
        let mut all: Vec<NetworkInterface> =
            out.network_interfaces().iter().map(convert_eni).collect();
        all.sort_by_key(|n| n.attachment.as_ref().map(|a| a.1));
        Ok(all)
    }

    /// Deletes a network interface; one already gone is not an error.
    pub async fn delete_network_interface(&self, id: &str) -> Result<(), CloudError> {
        ignore_not_found(
            self.ec2
                .delete_network_interface()
                .network_interface_id(id)
                .send()
                .await
                .map_err(|e| sdk_error("DeleteNetworkInterface", e)),
        )
    }
}

fn convert_eni(n: &aws_sdk_ec2::types::NetworkInterface) -> NetworkInterface {
    NetworkInterface {
        id: n.network_interface_id().unwrap_or_default().to_owned(),
        subnet_id: n.subnet_id().map(str::to_owned),
        private_ip: n.private_ip_address().map(str::to_owned),
        attachment: n
            .attachment()
            .and_then(|a| Some((InstanceId::new(a.instance_id()?), a.device_index()?))),
        tags: tag_map(n.tag_set()),
    }
}
