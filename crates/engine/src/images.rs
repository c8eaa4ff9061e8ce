//! Fresh images of a box: `image create` (CreateImage with NoReboot, tagged
//! with the box and the time), retention (`images.keep`), the newest image for
//! `image = "box:latest"`, and the scheduled refresh (`images.every`) the
//! daemon calls.

use std::time::{Duration, SystemTime};

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{Cloud, CloudError, Image, ImageId, ImageVolumes, Instance, TagFilter};

use crate::config::BoxSpec;

/// When the image was made (RFC 3339), set by spotkeeper.
pub const CREATED_TAG: &str = "spotkeeper:created";

fn box_images_filter(owner: &str, box_name: &str) -> TagFilter {
    TagFilter::default()
        .with(tags::OWNER, owner)
        .with(tags::BOX, box_name)
        .with_key(CREATED_TAG)
}

fn created(image: &Image) -> Option<SystemTime> {
    image
        .tags
        .get(CREATED_TAG)
        .and_then(|t| humantime::parse_rfc3339(t).ok())
}

/// The box's images, newest first (by their `spotkeeper:created` tag).
pub async fn box_images(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
) -> Result<Vec<Image>, CloudError> {
    let mut all = cloud.images(&box_images_filter(owner, box_name)).await?;
    all.retain(|i| i.state != "deregistered" && i.state != "failed");
    all.sort_by(|a, b| created(b).cmp(&created(a)).then_with(|| b.id.cmp(&a.id)));
    Ok(all)
}

/// The newest available image of the box, for `image = "box:latest"`.
pub async fn latest(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
) -> Result<Option<Image>, CloudError> {
    Ok(box_images(cloud, owner, box_name)
        .await?
        .into_iter()
        .find(|i| i.state == "available"))
}

/// Makes an image of the box's running instance (no reboot: a one-time spot
/// instance cannot be stopped), then deregisters images beyond `images.keep`.
/// Returns the new image and the ids it pruned.
pub async fn create(
    cloud: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
    instance: &Instance,
    now: SystemTime,
) -> Result<(Image, Vec<ImageId>), CloudError> {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let name = format!("spotkeeper-{}-{}", spec.name, stamp.replace([':', '-'], ""));
    let t = vec![
        (tags::OWNER.to_owned(), owner.to_owned()),
        (tags::BOX.to_owned(), spec.name.clone()),
        (tags::NAME.to_owned(), name.clone()),
        (CREATED_TAG.to_owned(), stamp),
    ];
    // The box's own volumes (data, root, `volume add`) stay out of its
    // image: a launch from it would otherwise bring stale copies of them.
    let image = cloud
        .create_image(&instance.id, &name, &t, ImageVolumes::RootOnly)
        .await?;
    let pruned = match spec.images.keep {
        Some(keep) => prune(cloud, owner, &spec.name, keep, now).await?,
        None => Vec::new(),
    };
    Ok((image, pruned))
}

/// On copies of an image in another region: the image they copy
/// (`REGION/ami-…`).
pub const COPY_OF_TAG: &str = "spotkeeper:copy-of";

/// Copies a box's new `image` (made in `home_region`) to each of `others`
/// with the image's own tags, so `image = "box:latest"` has it there too,
/// and prunes each region to `images.keep`. Returns the copies and the
/// regions whose copy or pruning failed, and why (the others go on).
pub async fn copy_to_regions(
    others: &[(String, &dyn Cloud)],
    home_region: &str,
    owner: &str,
    spec: &BoxSpec,
    image: &Image,
    now: SystemTime,
) -> (Vec<(String, ImageId)>, Vec<(String, String)>) {
    let mut tags: Vec<(String, String)> = image
        .tags
        .iter()
        .filter(|(k, _)| !k.starts_with("aws:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tags.push((
        COPY_OF_TAG.to_owned(),
        format!("{home_region}/{}", image.id),
    ));
    let name = image
        .name
        .clone()
        .unwrap_or_else(|| format!("spotkeeper-{}", spec.name));
    let (mut copies, mut failed) = (Vec::new(), Vec::new());
    for (region, cloud) in others {
        // One token per source image and region: a retried copy is the same.
        let token = format!("{}-{region}", image.id);
        match cloud
            .copy_image(home_region, &image.id, &name, &tags, &token)
            .await
        {
            Ok(id) => copies.push((region.clone(), id)),
            Err(e) => {
                failed.push((region.clone(), e.to_string()));
                continue;
            }
        }
        if let Some(keep) = spec.images.keep
            && let Err(e) = prune(*cloud, owner, &spec.name, keep, now).await
        {
            failed.push((region.clone(), e.to_string()));
        }
    }
    (copies, failed)
}

/// Deregisters (with their snapshots) all but the `keep` newest images of a
/// box, then deletes snapshots left behind by earlier deletions.
pub async fn prune(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    keep: usize,
    now: SystemTime,
) -> Result<Vec<ImageId>, CloudError> {
    let mut pruned = Vec::new();
    for old in box_images(cloud, owner, box_name)
        .await?
        .into_iter()
        .skip(keep)
    {
        match cloud.delete_image(&old.id).await {
            Ok(_) => {}
            // Deregistered, a snapshot not deleted (AWS may call it in use
            // for a while after): the sweep below and later prunes retry it.
            Err(e) if e.operation == "DeleteSnapshot" => {
                tracing::warn!(image = %old.id, error = %e, "a snapshot of a deregistered image is left; retried later");
            }
            Err(e) => return Err(e),
        }
        pruned.push(old.id);
    }
    sweep_snapshots(cloud, owner, box_name, now).await?;
    Ok(pruned)
}

/// Snapshots younger than this are never swept: their image may not be
/// listed yet right after `CreateImage`.
const SWEEP_GRACE: Duration = Duration::from_secs(10 * 60);

/// Deletes the box's image snapshots whose image is gone (a delete that
/// failed or was cut short after the deregistration). An image's snapshots
/// carry its `spotkeeper:created` stamp (tagged at creation), so a snapshot
/// whose stamp no image of the box has is left over. Returns what it deleted.
pub async fn sweep_snapshots(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    now: SystemTime,
) -> Result<Vec<spotkeeper_cloud::SnapshotId>, CloudError> {
    let images = cloud.images(&box_images_filter(owner, box_name)).await?;
    let stamps: std::collections::HashSet<&str> = images
        .iter()
        .filter(|i| i.state != "deregistered")
        .filter_map(|i| i.tags.get(CREATED_TAG).map(String::as_str))
        .collect();
    let mut deleted = Vec::new();
    for snap in cloud.snapshots(&box_images_filter(owner, box_name)).await? {
        let Some(stamp) = snap.tags.get(CREATED_TAG) else {
            continue;
        };
        let old_enough = humantime::parse_rfc3339(stamp)
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= SWEEP_GRACE);
        if stamps.contains(stamp.as_str())
            || !old_enough
            || snap.tags.contains_key(crate::persist::PURPOSE_TAG)
        {
            continue;
        }
        match cloud.delete_snapshot(&snap.id).await {
            Ok(()) => deleted.push(snap.id),
            Err(e) if e.kind == spotkeeper_cloud::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(snapshot = %snap.id, error = %e, "could not delete a left-over image snapshot; retried later");
            }
        }
    }
    Ok(deleted)
}

/// When the next scheduled image is due: never without `images.every`; now
/// when the box has no image; else the newest image's time plus `every`.
pub fn next_due(spec: &BoxSpec, newest: Option<&Image>) -> Option<SystemTime> {
    let every: Duration = spec.images.every?;
    match newest.and_then(created) {
        None => Some(SystemTime::UNIX_EPOCH),
        Some(t) => Some(t + every),
    }
}

/// Makes a fresh image if one is due at `now` (what the daemon calls each pass).
pub async fn refresh_if_due(
    cloud: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
    instance: &Instance,
    now: SystemTime,
) -> Result<Option<(Image, Vec<ImageId>)>, CloudError> {
    let newest = box_images(cloud, owner, &spec.name)
        .await?
        .into_iter()
        .next();
    match next_due(spec, newest.as_ref()) {
        Some(due) if due <= now => Ok(Some(create(cloud, owner, spec, instance, now).await?)),
        _ => Ok(None),
    }
}
