//! `FakeCloud`'s images: aliases resolved from what the test registered,
//! images made of instances, deregistered with their snapshots.

use async_trait::async_trait;

use super::FakeCloud;
use crate::cloud::Images;
use crate::error::CloudError;
use crate::model::*;

#[async_trait]
impl Images for FakeCloud {
    async fn resolve_image(&self, image: &ImageRef) -> Result<ImageId, CloudError> {
        self.pause("ResolveImage").await;
        let _s = self.enter("ResolveImage")?;
        // Aliases resolve to a fixed id derived from their text.
        Ok(match image {
            ImageRef::Id(id) => id.clone(),
            other => ImageId::new(format!(
                "ami-fake-{}",
                other.to_string().replace([':', '.'], "-")
            )),
        })
    }

    async fn image_root_snapshot(&self, image: &ImageId) -> Result<Option<SnapshotId>, CloudError> {
        self.pause("DescribeImages").await;
        let _s = self.enter("DescribeImages")?;
        Ok(Some(SnapshotId::new(format!("snap-root-of-{image}"))))
    }

    async fn images(&self, filter: &TagFilter) -> Result<Vec<Image>, CloudError> {
        self.pause("DescribeImages").await;
        let s = self.enter("DescribeImages")?;
        let mut all: Vec<Image> = s
            .images
            .values()
            .filter(|i| filter.matches(&i.tags))
            .cloned()
            .collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(all)
    }

    async fn create_image(
        &self,
        instance: &InstanceId,
        name: &str,
        tags: &[(String, String)],
        volumes: ImageVolumes,
    ) -> Result<Image, CloudError> {
        self.pause("CreateImage").await;
        let mut s = self.enter("CreateImage")?;
        if !s.instances.contains_key(instance) {
            return Err(CloudError::from_code(
                "CreateImage",
                "InvalidInstanceID.NotFound",
                format!("{instance} does not exist"),
            ));
        }
        let n = self.next(&mut s);
        let image = register(&mut s, n, name, tags.iter().cloned().collect());
        s.image_volumes.insert(image.id.clone(), volumes);
        Ok(image)
    }

    /// The copy is available at once, with a snapshot of its own; the
    /// source, in another region, is not this fake's to see.
    async fn copy_image(
        &self,
        source_region: &str,
        source: &ImageId,
        name: &str,
        tags: &[(String, String)],
        _client_token: &str,
    ) -> Result<ImageId, CloudError> {
        self.pause("CopyImage").await;
        let mut s = self.enter("CopyImage")?;
        let n = self.next(&mut s);
        let mut tags: std::collections::BTreeMap<String, String> = tags.iter().cloned().collect();
        tags.insert(
            "fake:copied-from".into(),
            format!("{source_region}/{source}"),
        );
        Ok(register(&mut s, n, name, tags).id)
    }

    async fn delete_image(&self, id: &ImageId) -> Result<Vec<SnapshotId>, CloudError> {
        self.pause("DeregisterImage").await;
        let Some(image) = self.enter("DeregisterImage")?.images.remove(id) else {
            return Ok(Vec::new());
        };
        // As AWS: deregistered first, then each snapshot (which may fail).
        for snap in &image.snapshot_ids {
            self.pause("DeleteSnapshot").await;
            self.enter("DeleteSnapshot")?.snapshots.remove(snap);
        }
        Ok(image.snapshot_ids)
    }
}

/// An available image numbered `n` with one snapshot, both tagged with
/// `tags` at creation, as the AWS backend does.
fn register(
    s: &mut super::State,
    n: u64,
    name: &str,
    tags: std::collections::BTreeMap<String, String>,
) -> Image {
    let snapshot = Snapshot {
        id: SnapshotId::new(format!("snap-img-{n:x}")),
        volume_id: None,
        state: "completed".into(),
        started_at: Some(format!("{n:020}")),
        tags: tags.clone(),
    };
    let image = Image {
        id: ImageId::new(format!("ami-{n:017x}")),
        name: Some(name.to_owned()),
        state: "available".into(),
        created_at: Some(format!("{n:020}")),
        snapshot_ids: vec![snapshot.id.clone()],
        tags,
    };
    s.snapshots.insert(snapshot.id.clone(), snapshot);
    s.images.insert(image.id.clone(), image.clone());
    image
}
