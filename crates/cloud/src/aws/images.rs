//! Images: alias look-up (public SSM parameters, DescribeImages fallback),
//! instance → AMI (`CreateImage`), and deleting an AMI with its snapshots.

use std::time::Duration;

use aws_sdk_ec2::types::{BlockDeviceMapping, Filter, ResourceType};

use async_trait::async_trait;

use super::{AwsCloud, absent, sdk_error, tag_filters, tag_map, tagged_at_creation};
use crate::error::{CloudError, ErrorKind};
use crate::model::{
    Arch, Image, ImageId, ImageRef, ImageVolumes, InstanceId, SnapshotId, TagFilter,
};
use crate::prelude::*;
use crate::wait::{self, Look};

/// Canonical's AWS account: the owner of the official Ubuntu images.
pub const CANONICAL_OWNER: &str = "099720109477";

/// How long [`AwsCloud::snapshot`] waits for a new AMI to become available:
/// AMIs of large volumes can take well over ten minutes.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const IMAGE_POLL: Duration = Duration::from_secs(5);

/// The public SSM parameter that names the newest Ubuntu server AMI of a
/// release. Canonical's images are gp3 from 23.10 on and gp2 before (16.04,
/// the persistent-root tools' default, to 23.04), and the parameter's path
/// says which; a release it does not fit is found by DescribeImages.
pub fn ubuntu_parameter(release: &str, arch: Arch) -> String {
    let disk = match release.split_once('.').map(|(y, m)| (y.parse(), m.parse())) {
        Some((Ok(year), Ok(month))) if (year, month) < (23u32, 10u32) => "ebs-gp2",
        _ => "ebs-gp3",
    };
    format!(
        "/aws/service/canonical/ubuntu/server/{release}/stable/current/{}/hvm/{disk}/ami-id",
        arch.ubuntu_name()
    )
}

/// The public SSM parameter that names the newest Amazon Linux 2023 AMI.
pub fn al2023_parameter(arch: Arch) -> String {
    format!(
        "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{}",
        arch.ec2_name()
    )
}

impl AwsCloud {
    /// The newest Canonical Ubuntu server AMI of `release` (e.g. `"24.04"`) for
    /// `arch`: from Canonical's public SSM parameter, or, where the parameter
    /// is missing, from `DescribeImages` (Canonical's images, newest first).
    pub async fn latest_ubuntu(&self, release: &str, arch: Arch) -> Result<ImageId, CloudError> {
        if let Some(id) = self.parameter(&ubuntu_parameter(release, arch)).await? {
            return Ok(ImageId::new(id));
        }
        let pattern = format!(
            "ubuntu/images/hvm-ssd*/ubuntu-*-{release}-{}-server-*",
            arch.ubuntu_name()
        );
        self.newest_image(CANONICAL_OWNER, &pattern, arch).await?.ok_or_else(|| {
            CloudError::other(
                "DescribeImages",
                ErrorKind::NotFound,
                format!("no Ubuntu {release} {} image in {} (SSM parameter and DescribeImages both empty)", arch.ubuntu_name(), self.region()),
            )
        })
    }

    /// The newest Canonical daily build of an Ubuntu release (Canonical's
    /// `ubuntu/images-testing/…/ubuntu-CODENAME-daily-ARCH-server-*`).
    pub async fn latest_ubuntu_daily(
        &self,
        release: &str,
        arch: Arch,
    ) -> Result<ImageId, CloudError> {
        let codename = crate::model::ubuntu_release_codename(release).ok_or_else(|| {
            CloudError::other(
                "DescribeImages",
                ErrorKind::InvalidRequest,
                format!("no codename known for Ubuntu {release}"),
            )
        })?;
        let pattern = format!(
            "ubuntu/images-testing/hvm-ssd*/ubuntu-{codename}-daily-{}-server-*",
            arch.ubuntu_name()
        );
        self.newest_image(CANONICAL_OWNER, &pattern, arch)
            .await?
            .ok_or_else(|| {
                CloudError::other(
                    "DescribeImages",
                    ErrorKind::NotFound,
                    format!(
                        "no Ubuntu {release} daily {} image in {}",
                        arch.ubuntu_name(),
                        self.region()
                    ),
                )
            })
    }

    /// The newest Amazon Linux 2023 AMI for `arch`, from its public SSM parameter.
    pub async fn latest_al2023(&self, arch: Arch) -> Result<ImageId, CloudError> {
        let name = al2023_parameter(arch);
        self.parameter(&name)
            .await?
            .map(ImageId::new)
            .ok_or_else(|| {
                CloudError::other(
                    "GetParameter",
                    ErrorKind::NotFound,
                    format!("public parameter {name} not found in {}", self.region()),
                )
            })
    }

    /// An SSM parameter's value; `None` when it does not exist.
    async fn parameter(&self, name: &str) -> Result<Option<String>, CloudError> {
        Ok(absent(
            self.ssm()
                .get_parameter()
                .name(name)
                .send()
                .await
                .map_err(|e| sdk_error("GetParameter", e)),
        )?
        .and_then(|out| out.parameter().and_then(|p| p.value()).map(str::to_owned)))
    }

    async fn newest_image(
        &self,
        owner: &str,
        name_pattern: &str,
        arch: Arch,
    ) -> Result<Option<ImageId>, CloudError> {
        let out = self
            .ec2
            .describe_images()
            .owners(owner)
            .filters(Filter::builder().name("name").values(name_pattern).build())
            .filters(
                Filter::builder()
                    .name("architecture")
                    .values(arch.ec2_name())
                    .build(),
            )
            .filters(Filter::builder().name("state").values("available").build())
            .send()
            .await
            .map_err(|e| sdk_error("DescribeImages", e))?;
        // CreationDate is RFC 3339 in UTC, so text order is time order.
        let newest = out
            .images()
            .iter()
            .filter(|i| i.owner_id().is_none_or(|o| o == owner))
            .max_by(|a, b| {
                a.creation_date()
                    .unwrap_or("")
                    .cmp(b.creation_date().unwrap_or(""))
                    .then(a.name().cmp(&b.name()))
            });
        Ok(newest.and_then(|i| i.image_id()).map(ImageId::new))
    }

    /// The device name of an image's root volume (`/dev/xvda`, `/dev/sda1` …).
    pub(crate) async fn root_device_name(&self, image: &ImageId) -> Result<String, CloudError> {
        let img = self.image(image).await?.ok_or_else(|| {
            CloudError::from_code(
                "DescribeImages",
                "InvalidAMIID.NotFound",
                format!("image {image} not found"),
            )
        })?;
        Ok(img.1.unwrap_or_else(|| "/dev/xvda".to_owned()))
    }

    /// One image by id, with its root device name; `None` when unknown.
    async fn image(&self, id: &ImageId) -> Result<Option<(Image, Option<String>)>, CloudError> {
        Ok(absent(
            self.ec2
                .describe_images()
                .image_ids(id.as_str())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeImages", e)),
        )?
        .and_then(|out| {
            out.images()
                .first()
                .map(|i| (convert_image(i), i.root_device_name().map(str::to_owned)))
        }))
    }

    /// The devices of an instance other than its root device.
    async fn non_root_devices(&self, instance: &InstanceId) -> Result<Vec<String>, CloudError> {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(instance.as_str())
            .send()
            .await
            .map_err(|e| sdk_error("DescribeInstances", e))?;
        let Some(i) = out.reservations().iter().flat_map(|r| r.instances()).next() else {
            return Err(CloudError::from_code(
                "DescribeInstances",
                "InvalidInstanceID.NotFound",
                format!("instance {instance} not found"),
            ));
        };
        let root = i.root_device_name();
        Ok(i.block_device_mappings()
            .iter()
            .filter_map(|b| b.device_name())
            .filter(|d| Some(*d) != root)
            .map(str::to_owned)
            .collect())
    }

    async fn wait_image_available(&self, id: &ImageId) -> Result<Image, CloudError> {
        wait::until("CreateImage", IMAGE_TIMEOUT, IMAGE_POLL, || async {
            match self.image(id).await? {
                Some((image, _)) if image.state == "available" => Ok(Look::Done(image)),
                Some((image, _))
                    if matches!(
                        image.state.as_str(),
                        "failed" | "error" | "invalid" | "deregistered"
                    ) =>
                {
                    Err(CloudError::other(
                        "CreateImage",
                        ErrorKind::Other,
                        format!("image {id} ended {}", image.state),
                    ))
                }
                _ => Ok(Look::NotYet(format!("image {id} not available"))),
            }
        })
        .await
    }
}

fn convert_image(i: &aws_sdk_ec2::types::Image) -> Image {
    Image {
        id: ImageId::new(i.image_id().unwrap_or_default()),
        name: i.name().map(str::to_owned),
        state: i.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        created_at: i.creation_date().map(str::to_owned),
        snapshot_ids: i
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()))
            .map(SnapshotId::new)
            .collect(),
        tags: tag_map(i.tags()),
    }
}

#[async_trait]
impl Images for AwsCloud {
    /// Resolves an [`ImageRef`] to an AMI id.
    async fn resolve_image(&self, image: &ImageRef) -> Result<ImageId, CloudError> {
        match image {
            ImageRef::Id(id) => Ok(id.clone()),
            ImageRef::Ubuntu { release, arch } => self.latest_ubuntu(release, *arch).await,
            ImageRef::UbuntuDaily { release, arch } => {
                self.latest_ubuntu_daily(release, *arch).await
            }
            ImageRef::AmazonLinux2023 { arch } => self.latest_al2023(*arch).await,
        }
    }

    /// The snapshot behind an image's root device: what a persistent root
    /// volume is first created from.
    async fn image_root_snapshot(&self, image: &ImageId) -> Result<Option<SnapshotId>, CloudError> {
        let Some(out) = absent(
            self.ec2
                .describe_images()
                .image_ids(image.as_str())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeImages", e)),
        )?
        else {
            return Ok(None);
        };
        let Some(img) = out.images().first() else {
            return Ok(None);
        };
        let root = img.root_device_name();
        let snap = img
            .block_device_mappings()
            .iter()
            .find(|b| root.is_none() || b.device_name() == root)
            .and_then(|b| b.ebs())
            .and_then(|e| e.snapshot_id())
            .map(SnapshotId::new);
        Ok(snap)
    }

    /// Images this account owns whose tags match `filter`, newest first.
    async fn images(&self, filter: &TagFilter) -> Result<Vec<Image>, CloudError> {
        let out = self
            .ec2
            .describe_images()
            .owners("self")
            .set_filters(Some(tag_filters(filter)))
            .send()
            .await
            .map_err(|e| sdk_error("DescribeImages", e))?;
        let mut images: Vec<Image> = out
            .images()
            .iter()
            .map(convert_image)
            .filter(|i| filter.matches(&i.tags))
            .collect();
        images.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(images)
    }

    /// Makes an AMI of a running instance and waits until it is `available`.
    /// Uses `NoReboot`: a one-time spot instance cannot be stopped, and a
    /// reboot would interrupt whatever the box is doing. The image is tagged at
    /// creation with `tags`; its snapshots are tagged once they exist. With
    /// [`ImageVolumes::RootOnly`] every device of the instance but its root
    /// (as DescribeInstances lists them) is mapped to `NoDevice`: AWS would
    /// otherwise snapshot each into the image and create it again at every
    /// launch from it.
    async fn create_image(
        &self,
        instance: &InstanceId,
        name: &str,
        tags: &[(String, String)],
        volumes: ImageVolumes,
    ) -> Result<Image, CloudError> {
        const OP: &str = "CreateImage";
        let mut req = self
            .ec2
            .create_image()
            .instance_id(instance.as_str())
            .name(name)
            .no_reboot(true);
        if volumes == ImageVolumes::RootOnly {
            for device in self.non_root_devices(instance).await? {
                req = req.block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(device)
                        .no_device("")
                        .build(),
                );
            }
        }
        // The snapshots too, at creation: a policy that lets spotkeeper tag
        // only what it owns could not tag them afterwards.
        let req = req.set_tag_specifications(tagged_at_creation(
            &[ResourceType::Image, ResourceType::Snapshot],
            tags,
        ));
        let out = req.send().await.map_err(|e| sdk_error(OP, e))?;
        let id = out.image_id().map(ImageId::new).ok_or_else(|| {
            CloudError::other(
                OP,
                ErrorKind::Other,
                "AWS accepted CreateImage but returned no image id",
            )
        })?;
        let image = self.wait_image_available(&id).await?;
        let snaps: Vec<String> = image.snapshot_ids.iter().map(|s| s.to_string()).collect();
        self.tag(&snaps, tags).await?;
        Ok(image)
    }

    async fn copy_image(
        &self,
        source_region: &str,
        source: &ImageId,
        name: &str,
        tags: &[(String, String)],
        client_token: &str,
    ) -> Result<ImageId, CloudError> {
        const OP: &str = "CopyImage";
        // Called on the destination region's client, as AWS requires.
        let req = self
            .ec2
            .copy_image()
            .source_region(source_region)
            .source_image_id(source.as_str())
            .name(name)
            .client_token(client_token)
            .set_tag_specifications(tagged_at_creation(
                &[ResourceType::Image, ResourceType::Snapshot],
                tags,
            ));
        let out = req.send().await.map_err(|e| sdk_error(OP, e))?;
        out.image_id().map(ImageId::new).ok_or_else(|| {
            CloudError::other(
                OP,
                ErrorKind::Other,
                "AWS accepted CopyImage but returned no image id",
            )
        })
    }

    /// Deregisters an AMI and deletes the snapshots behind it. An image that
    /// no longer exists is not an error (the delete may be a retry).
    async fn delete_image(&self, id: &ImageId) -> Result<Vec<SnapshotId>, CloudError> {
        let Some((image, _)) = self.image(id).await? else {
            return Ok(Vec::new());
        };
        self.ec2
            .deregister_image()
            .image_id(id.as_str())
            .send()
            .await
            .map_err(|e| sdk_error("DeregisterImage", e))?;
        for snap in &image.snapshot_ids {
            if let Err(e) = self
                .ec2
                .delete_snapshot()
                .snapshot_id(snap.as_str())
                .send()
                .await
            {
                let err = sdk_error("DeleteSnapshot", e);
                if err.kind != ErrorKind::NotFound {
                    return Err(err);
                }
            }
        }
        Ok(image.snapshot_ids)
    }
}
