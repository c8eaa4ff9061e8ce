//! EBS volumes: create (tagged at creation), describe, attach at the next free
//! device name, detach, delete; snapshots of volumes.

use std::time::Duration;

use aws_sdk_ec2::types::{ResourceType, VolumeType};

use async_trait::async_trait;

use super::{
    AwsCloud, absent, ignore_not_found, sdk_error, tag_filters, tag_map, tagged_at_creation,
};
use crate::error::{CloudError, ErrorKind};
use crate::model::{InstanceId, Snapshot, SnapshotId, TagFilter, Volume, VolumeId};
use crate::prelude::*;
use crate::wait::{self, Look};

/// Volume state changes (create, attach, detach) take seconds; a stuck one
/// after this long needs a person.
const VOLUME_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const VOLUME_POLL: Duration = Duration::from_millis(1500);
/// How long a snapshot may take to complete (a large volume takes long).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

/// Device names offered to added volumes, in order (`/dev/sdf` … `/dev/sdz`,
/// the range AWS recommends for EBS data volumes).
pub fn data_device_names() -> impl Iterator<Item = String> {
    ('f'..='z').map(|c| format!("/dev/sd{c}"))
}

/// The first of `/dev/sd[f-z]` not used by `used` (names compared without the
/// `/dev/` prefix and with `xvd` read as `sd`, since Xen renames them).
pub fn next_free_device(used: &[String]) -> Option<String> {
    let norm = |d: &str| d.trim_start_matches("/dev/").replacen("xvd", "sd", 1);
    let used: Vec<String> = used.iter().map(|d| norm(d)).collect();
    data_device_names().find(|d| {
        let n = norm(d);
        !used.iter().any(|u| {
            u == &n || u.starts_with(&n) && u[n.len()..].chars().all(|c| c.is_ascii_digit())
        })
    })
}

impl AwsCloud {
    /// Marks the volume attached at `device` to be deleted when the instance terminates.
    pub async fn delete_on_termination(
        &self,
        instance: &InstanceId,
        device: &str,
    ) -> Result<(), CloudError> {
        use aws_sdk_ec2::types::{
            EbsInstanceBlockDeviceSpecification, InstanceBlockDeviceMappingSpecification,
        };
        self.ec2
            .modify_instance_attribute()
            .instance_id(instance.as_str())
            .block_device_mappings(
                InstanceBlockDeviceMappingSpecification::builder()
                    .device_name(device)
                    .ebs(
                        EbsInstanceBlockDeviceSpecification::builder()
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("ModifyInstanceAttribute", e))?;
        Ok(())
    }

    /// The device names in use on an instance (its block device mappings).
    pub async fn used_devices(&self, instance: &InstanceId) -> Result<Vec<String>, CloudError> {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(instance.as_str())
            .send()
            .await
            .map_err(|e| sdk_error("DescribeInstances", e))?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|b| b.device_name().map(str::to_owned))
            .collect())
    }

    async fn wait_volume(
        &self,
        id: &VolumeId,
        done: impl Fn(&Volume) -> bool,
    ) -> Result<Volume, CloudError> {
        wait::until("DescribeVolumes", VOLUME_TIMEOUT, VOLUME_POLL, || async {
            match self.volume(id).await? {
                Some(v) if done(&v) => Ok(Look::Done(v)),
                Some(v) if v.state == "error" => Err(CloudError::other(
                    "DescribeVolumes",
                    ErrorKind::Other,
                    format!("volume {id} is in state error"),
                )),
                _ => Ok(Look::NotYet(format!("volume {id} did not settle"))),
            }
        })
        .await
    }
}

fn convert_volume(v: &aws_sdk_ec2::types::Volume) -> Volume {
    Volume {
        id: VolumeId::new(v.volume_id().unwrap_or_default()),
        zone: v.availability_zone().unwrap_or_default().to_owned(),
        size_gb: v.size().unwrap_or_default(),
        kind: v
            .volume_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        state: v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        attachments: v
            .attachments()
            .iter()
            .filter(|a| a.state().is_none_or(|s| s.as_str() != "detached"))
            .filter_map(|a| {
                Some((
                    InstanceId::new(a.instance_id()?),
                    a.device().unwrap_or_default().to_owned(),
                ))
            })
            .collect(),
        snapshot_id: v
            .snapshot_id()
            .filter(|s| !s.is_empty())
            .map(SnapshotId::new),
        tags: tag_map(v.tags()),
    }
}

#[async_trait]
impl Storage for AwsCloud {
    /// Volumes whose tags match `filter`.
    async fn volumes(&self, filter: &TagFilter) -> Result<Vec<Volume>, CloudError> {
        let mut all = Vec::new();
        let mut pages = self
            .ec2
            .describe_volumes()
            .set_filters(Some(tag_filters(filter)))
            .into_paginator()
            .send();
        while let Some(out) = pages.next().await {
            let out = out.map_err(|e| sdk_error("DescribeVolumes", e))?;
            all.extend(out.volumes().iter().map(convert_volume));
        }
        all.retain(|v| filter.matches(&v.tags));
        Ok(all)
    }

    /// One volume; `None` when it does not exist.
    async fn volume(&self, id: &VolumeId) -> Result<Option<Volume>, CloudError> {
        Ok(absent(
            self.ec2
                .describe_volumes()
                .volume_ids(id.as_str())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeVolumes", e)),
        )?
        .and_then(|out| out.volumes().first().map(convert_volume)))
    }

    /// Creates a volume in `zone` (from `snapshot` when given), tagged at
    /// creation, and waits until it is `available`.
    async fn create_volume(
        &self,
        zone: &str,
        size_gb: Option<i32>,
        kind: &str,
        snapshot: Option<&SnapshotId>,
        tags: &[(String, String)],
    ) -> Result<Volume, CloudError> {
        const OP: &str = "CreateVolume";
        let req = self
            .ec2
            .create_volume()
            .availability_zone(zone)
            .volume_type(VolumeType::from(kind))
            .set_size(size_gb)
            .set_snapshot_id(snapshot.map(|s| s.to_string()))
            .set_tag_specifications(tagged_at_creation(&[ResourceType::Volume], tags));
        let out = req.send().await.map_err(|e| sdk_error(OP, e))?;
        let id = out
            .volume_id()
            .map(VolumeId::new)
            .ok_or_else(|| CloudError::other(OP, ErrorKind::Other, "AWS returned no volume id"))?;
        self.wait_volume(&id, |v| v.state == "available").await
    }

    /// Attaches a volume to an instance at `device` and waits until it is in use.
    async fn attach_volume(
        &self,
        volume: &VolumeId,
        instance: &InstanceId,
        device: &str,
    ) -> Result<Volume, CloudError> {
        self.ec2
            .attach_volume()
            .volume_id(volume.as_str())
            .instance_id(instance.as_str())
            .device(device)
            .send()
            .await
            .map_err(|e| sdk_error("AttachVolume", e))?;
        self.wait_volume(volume, |v| {
            v.state == "in-use" && v.attachments.iter().any(|(i, _)| i == instance)
        })
        .await
    }

    /// Detaches a volume from `instance` and waits until it is available.
    async fn detach_volume(
        &self,
        volume: &VolumeId,
        instance: &InstanceId,
    ) -> Result<Volume, CloudError> {
        self.ec2
            .detach_volume()
            .volume_id(volume.as_str())
            .instance_id(instance.as_str())
            .send()
            .await
            .map_err(|e| sdk_error("DetachVolume", e))?;
        self.wait_volume(volume, |v| v.state == "available").await
    }

    /// Deletes a volume; one already gone is not an error.
    async fn delete_volume(&self, volume: &VolumeId) -> Result<(), CloudError> {
        ignore_not_found(
            self.ec2
                .delete_volume()
                .volume_id(volume.as_str())
                .send()
                .await
                .map_err(|e| sdk_error("DeleteVolume", e)),
        )
    }

    /// Snapshots a volume, tagged at creation, and waits until it completes.
    async fn snapshot_volume(
        &self,
        volume: &VolumeId,
        tags: &[(String, String)],
    ) -> Result<SnapshotId, CloudError> {
        const OP: &str = "CreateSnapshot";
        let req = self
            .ec2
            .create_snapshot()
            .volume_id(volume.as_str())
            .set_tag_specifications(tagged_at_creation(&[ResourceType::Snapshot], tags));
        let out = req.send().await.map_err(|e| sdk_error(OP, e))?;
        let id = out.snapshot_id().map(SnapshotId::new).ok_or_else(|| {
            CloudError::other(OP, ErrorKind::Other, "AWS returned no snapshot id")
        })?;
        let id = &id;
        wait::until(OP, SNAPSHOT_TIMEOUT, VOLUME_POLL, || async move {
            let out = self
                .ec2
                .describe_snapshots()
                .snapshot_ids(id.as_str())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeSnapshots", e))?;
            match out
                .snapshots()
                .first()
                .and_then(|s| s.state())
                .map(|s| s.as_str())
            {
                Some("completed") => Ok(Look::Done(id.clone())),
                Some("error") => Err(CloudError::other(
                    OP,
                    ErrorKind::Other,
                    format!("snapshot {id} failed"),
                )),
                _ => Ok(Look::NotYet(format!("snapshot {id} did not complete"))),
            }
        })
        .await
    }

    async fn copy_snapshot(
        &self,
        source_region: &str,
        source: &SnapshotId,
        tags: &[(String, String)],
    ) -> Result<SnapshotId, CloudError> {
        const OP: &str = "CopySnapshot";
        // Called on the destination region's client, as AWS requires; the
        // copy keeps the source's encryption (an encrypted source is copied
        // with the destination's default key).
        let out = self
            .ec2
            .copy_snapshot()
            .source_region(source_region)
            .source_snapshot_id(source.as_str())
            .description(format!("spotkeeper copy of {source_region}/{source}"))
            .set_tag_specifications(tagged_at_creation(&[ResourceType::Snapshot], tags))
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        out.snapshot_id()
            .map(SnapshotId::new)
            .ok_or_else(|| CloudError::other(OP, ErrorKind::Other, "AWS returned no snapshot id"))
    }

    /// Snapshots this account owns whose tags match `filter`, newest first.
    async fn snapshots(&self, filter: &TagFilter) -> Result<Vec<Snapshot>, CloudError> {
        let out = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(tag_filters(filter)))
            .send()
            .await
            .map_err(|e| sdk_error("DescribeSnapshots", e))?;
        let mut all: Vec<Snapshot> = out
            .snapshots()
            .iter()
            .map(|s| Snapshot {
                id: SnapshotId::new(s.snapshot_id().unwrap_or_default()),
                volume_id: s.volume_id().filter(|v| !v.is_empty()).map(VolumeId::new),
                state: s.state().map(|x| x.as_str().to_owned()).unwrap_or_default(),
                started_at: s.start_time().map(|t| t.to_string()),
                tags: tag_map(s.tags()),
            })
            .filter(|s| filter.matches(&s.tags))
            .collect();
        all.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(all)
    }

    /// Deletes a snapshot; one already gone is not an error.
    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), CloudError> {
        ignore_not_found(
            self.ec2
                .delete_snapshot()
                .snapshot_id(id.as_str())
                .send()
                .await
                .map_err(|e| sdk_error("DeleteSnapshot", e)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_free_device_skips_used_names_in_either_spelling() {
        assert_eq!(next_free_device(&[]), Some("/dev/sdf".into()));
        assert_eq!(
            next_free_device(&["/dev/sda1".into(), "/dev/sdf".into()]),
            Some("/dev/sdg".into())
        );
        assert_eq!(
            next_free_device(&["/dev/xvdf".into(), "xvdg".into()]),
            Some("/dev/sdh".into())
        );
        let all: Vec<String> = data_device_names().collect();
        assert_eq!(next_free_device(&all), None);
        assert_eq!(all.len(), 21);
    }
}
