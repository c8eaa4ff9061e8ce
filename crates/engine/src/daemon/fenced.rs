//! The daemon's AWS handle: every call that changes AWS is made only while
//! the work's [`Fence`](crate::fence::Fence) holds (see [`crate::fence`]);
//! reads go straight through.

use async_trait::async_trait;
use spotkeeper_cloud::model::{
    DnsChange, DnsRecord, Image, ImageId, ImageRef, ImageVolumes, Instance, InstanceId, LaunchSpec,
    RecordType, Snapshot, SnapshotId, SpotPrice, SpotRequest, SpotRequestId, TagFilter, Volume,
    VolumeId,
};
use spotkeeper_cloud::{
    Cloud, CloudError, Compute, Dns, ErrorKind, Images, Network, Pricing, Storage,
};

use crate::fence::current;
use crate::store::Store;

/// A [`Cloud`] whose changing calls are made only while the work's fence
/// holds; reads go straight through.
#[derive(Clone, Copy)]
pub struct FencedCloud<'a> {
    inner: &'a dyn Cloud,
    store: &'a Store,
}

impl std::fmt::Debug for FencedCloud<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencedCloud")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<'a> FencedCloud<'a> {
    /// `inner`, checked against the leases in `store`.
    pub fn new(inner: &'a dyn Cloud, store: &'a Store) -> Self {
        Self { inner, store }
    }

    /// Refuses `operation` when the current work's fence no longer holds.
    /// A database that cannot say refuses too: acting without knowing is
    /// what fencing is against.
    async fn check(&self, operation: &'static str) -> Result<(), CloudError> {
        let Some(fence) = current() else {
            return Ok(());
        };
        match self.store.holds_lease(&fence).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(CloudError::other(
                operation,
                ErrorKind::Fenced,
                fence.to_string(),
            )),
            Err(e) => Err(CloudError::other(
                operation,
                ErrorKind::Other,
                format!(
                    "not sent: the lease on {} could not be checked: {e}",
                    fence.subject
                ),
            )),
        }
    }
}

#[async_trait]
impl Pricing for FencedCloud<'_> {
    fn region(&self) -> &str {
        self.inner.region()
    }

    async fn zones(&self) -> Result<Vec<String>, CloudError> {
        self.inner.zones().await
    }

    async fn spot_prices(
        &self,
        instance_types: &[String],
        zones: &[String],
    ) -> Result<Vec<SpotPrice>, CloudError> {
        self.inner.spot_prices(instance_types, zones).await
    }

    async fn on_demand_price(&self, instance_type: &str) -> Result<Option<f64>, CloudError> {
        self.inner.on_demand_price(instance_type).await
    }

    async fn placement_scores(
        &self,
        instance_types: &[String],
    ) -> Result<std::collections::BTreeMap<String, u8>, CloudError> {
        self.inner.placement_scores(instance_types).await
    }
}

#[async_trait]
impl Compute for FencedCloud<'_> {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, CloudError> {
        self.check("RunInstances").await?;
        self.inner.launch(spec).await
    }

    async fn launch_many(
        &self,
        spec: &LaunchSpec,
        count: u32,
    ) -> Result<Vec<Instance>, CloudError> {
        self.check("RunInstances").await?;
        self.inner.launch_many(spec, count).await
    }

    async fn instances(&self, filter: &TagFilter) -> Result<Vec<Instance>, CloudError> {
        self.inner.instances(filter).await
    }

    async fn instance(&self, id: &InstanceId) -> Result<Option<Instance>, CloudError> {
        self.inner.instance(id).await
    }

    async fn spot_requests(&self, filter: &TagFilter) -> Result<Vec<SpotRequest>, CloudError> {
        self.inner.spot_requests(filter).await
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<(), CloudError> {
        self.check("TerminateInstances").await?;
        self.inner.terminate(ids).await
    }

    async fn cancel_spot_requests(&self, ids: &[SpotRequestId]) -> Result<(), CloudError> {
        self.check("CancelSpotInstanceRequests").await?;
        self.inner.cancel_spot_requests(ids).await
    }

    async fn tag(
        &self,
        resource_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<(), CloudError> {
        self.check("CreateTags").await?;
        self.inner.tag(resource_ids, tags).await
    }

    async fn untag(&self, resource_ids: &[String], keys: &[&str]) -> Result<(), CloudError> {
        self.check("DeleteTags").await?;
        self.inner.untag(resource_ids, keys).await
    }
}

#[async_trait]
impl Storage for FencedCloud<'_> {
    async fn volumes(&self, filter: &TagFilter) -> Result<Vec<Volume>, CloudError> {
        self.inner.volumes(filter).await
    }

    async fn volume(&self, id: &VolumeId) -> Result<Option<Volume>, CloudError> {
        self.inner.volume(id).await
    }

    async fn create_volume(
        &self,
        zone: &str,
        size_gb: Option<i32>,
        kind: &str,
        snapshot: Option<&SnapshotId>,
        tags: &[(String, String)],
    ) -> Result<Volume, CloudError> {
        self.check("CreateVolume").await?;
        self.inner
            .create_volume(zone, size_gb, kind, snapshot, tags)
            .await
    }

    async fn attach_volume(
        &self,
        volume: &VolumeId,
        instance: &InstanceId,
        device: &str,
    ) -> Result<Volume, CloudError> {
        self.check("AttachVolume").await?;
        self.inner.attach_volume(volume, instance, device).await
    }

    async fn detach_volume(
        &self,
        volume: &VolumeId,
        instance: &InstanceId,
    ) -> Result<Volume, CloudError> {
        self.check("DetachVolume").await?;
        self.inner.detach_volume(volume, instance).await
    }

    async fn delete_volume(&self, volume: &VolumeId) -> Result<(), CloudError> {
        self.check("DeleteVolume").await?;
        self.inner.delete_volume(volume).await
    }

    async fn copy_snapshot(
        &self,
        source_region: &str,
        source: &SnapshotId,
        tags: &[(String, String)],
    ) -> Result<SnapshotId, CloudError> {
        self.check("CopySnapshot").await?;
        self.inner.copy_snapshot(source_region, source, tags).await
    }

    async fn snapshot_volume(
        &self,
        volume: &VolumeId,
        tags: &[(String, String)],
    ) -> Result<SnapshotId, CloudError> {
        self.check("CreateSnapshot").await?;
        self.inner.snapshot_volume(volume, tags).await
    }

    async fn snapshots(&self, filter: &TagFilter) -> Result<Vec<Snapshot>, CloudError> {
        self.inner.snapshots(filter).await
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), CloudError> {
        self.check("DeleteSnapshot").await?;
        self.inner.delete_snapshot(id).await
    }
}

#[async_trait]
impl Images for FencedCloud<'_> {
    async fn resolve_image(&self, image: &ImageRef) -> Result<ImageId, CloudError> {
        self.inner.resolve_image(image).await
    }

    async fn image_root_snapshot(&self, image: &ImageId) -> Result<Option<SnapshotId>, CloudError> {
        self.inner.image_root_snapshot(image).await
    }

    async fn images(&self, filter: &TagFilter) -> Result<Vec<Image>, CloudError> {
        self.inner.images(filter).await
    }

    async fn create_image(
        &self,
        instance: &InstanceId,
        name: &str,
        tags: &[(String, String)],
        volumes: ImageVolumes,
    ) -> Result<Image, CloudError> {
        self.check("CreateImage").await?;
        self.inner.create_image(instance, name, tags, volumes).await
    }

    async fn copy_image(
        &self,
        source_region: &str,
        source: &ImageId,
        name: &str,
        tags: &[(String, String)],
        client_token: &str,
    ) -> Result<ImageId, CloudError> {
        self.check("CopyImage").await?;
        self.inner
            .copy_image(source_region, source, name, tags, client_token)
            .await
    }

    async fn delete_image(&self, id: &ImageId) -> Result<Vec<SnapshotId>, CloudError> {
        self.check("DeregisterImage").await?;
        self.inner.delete_image(id).await
    }
}

#[async_trait]
impl Network for FencedCloud<'_> {
    async fn subnet_zone(&self, subnet_id: &str) -> Result<String, CloudError> {
        self.inner.subnet_zone(subnet_id).await
    }

    async fn security_group_ids(
        &self,
        groups: &[String],
        subnet: Option<&str>,
    ) -> Result<Vec<String>, CloudError> {
        self.inner.security_group_ids(groups, subnet).await
    }

    async fn associate_address(
        &self,
        allocation_id: &str,
        instance: &InstanceId,
        reassociate: bool,
    ) -> Result<(), CloudError> {
        self.check("AssociateAddress").await?;
        self.inner
            .associate_address(allocation_id, instance, reassociate)
            .await
    }

    async fn address_holder(&self, allocation_id: &str) -> Result<Option<InstanceId>, CloudError> {
        self.inner.address_holder(allocation_id).await
    }
}

#[async_trait]
impl Dns for FencedCloud<'_> {
    async fn dns_zone(&self, name: &str, private: bool) -> Result<Option<String>, CloudError> {
        self.inner.dns_zone(name, private).await
    }

    async fn dns_record(
        &self,
        zone_id: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<DnsRecord>, CloudError> {
        self.inner.dns_record(zone_id, name, kind).await
    }

    async fn change_dns(&self, zone_id: &str, changes: &[DnsChange]) -> Result<(), CloudError> {
        self.check("ChangeResourceRecordSets").await?;
        self.inner.change_dns(zone_id, changes).await
    }
}

#[cfg(test)]
mod tests {
    use spotkeeper_cloud::fake::FakeCloud;
    use spotkeeper_cloud::model::{DnsAction, DnsChange, DnsRecord, RecordType};
    use spotkeeper_cloud::{Compute, Dns, ErrorKind, Storage};

    use super::FencedCloud;
    use crate::fence::{Fence, scope};
    use crate::store::Store;

    fn upsert(ip: &str) -> DnsChange {
        DnsChange {
            action: DnsAction::Upsert,
            kind: RecordType::A,
            record: DnsRecord {
                name: "dev.example.com.".into(),
                values: vec![ip.into()],
                ttl: 60,
            },
        }
    }

    #[tokio::test]
    async fn changes_go_through_only_while_the_fence_holds_and_reads_always_do() {
        let fake = FakeCloud::new(&["us-east-1a"]);
        let store = Store::memory().await.expect("store");
        let cloud = FencedCloud::new(&fake, &store);
        let now = store.clock_ms().await.expect("clock");
        let generation = store
            .for_owner("o")
            .take_lease("box:dev", "a", now, now + 60_000)
            .await
            .expect("take")
            .expect("free");
        let fence = Fence {
            owner: "o".into(),
            subject: "box:dev".into(),
            holder: "a".into(),
            generation,
            offset_ms: 0,
        };
        let zone = fake.add_dns_zone("example.com");
        let volume = scope(Some(fence.clone()), async {
            cloud
                .change_dns(&zone, &[upsert("198.51.100.1")])
                .await
                .expect("held: the record moves");
            cloud
                .create_volume("us-east-1a", Some(1), "gp3", None, &[])
                .await
                .expect("held: a volume")
        })
        .await;

        // Another daemon takes the lease over (a's expired on the
        // database's clock): a's work changes nothing from now on.
        let later = now + 120_000;
        store
            .for_owner("o")
            .take_lease("box:dev", "b", later, later + 60_000)
            .await
            .expect("take over")
            .expect("expired: taken");
        let before = fake.calls().len();
        let refused = scope(Some(fence.clone()), async {
            vec![
                cloud
                    .change_dns(&zone, &[upsert("198.51.100.2")])
                    .await
                    .err(),
                cloud.delete_volume(&volume.id).await.err(),
                cloud.terminate(&[]).await.err(),
                cloud.cancel_spot_requests(&[]).await.err(),
                cloud.tag(&[volume.id.to_string()], &[]).await.err(),
            ]
        })
        .await;
        for e in &refused {
            let e = e.as_ref().expect("refused");
            assert_eq!(e.kind, ErrorKind::Fenced, "{e}");
            assert!(e.to_string().contains("no longer holds box:dev"), "{e}");
        }
        assert_eq!(fake.calls().len(), before, "no call reached AWS");
        // Reads are not fenced, and work outside any fence (the CLI) is not
        // checked.
        scope(Some(fence), async {
            assert!(cloud.volume(&volume.id).await.expect("read").is_some());
        })
        .await;
        cloud.delete_volume(&volume.id).await.expect("unfenced");
        assert_eq!(
            fake.all_records()
                .iter()
                .find(|(_, r)| r.name == "dev.example.com.")
                .map(|(_, r)| r.values.clone()),
            Some(vec!["198.51.100.1".to_owned()]),
            "the record stayed where the holder put it"
        );
    }
}
