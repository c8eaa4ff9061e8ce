//! A box's persistent volumes: found by their `Name` tag (healing a move a
//! crash cut short), made or moved into the launch zone before the launch,
//! attached after it, and kept, snapshotted or deleted on `stop`.
//!
//! Moving a volume to another zone: snapshot → new volume in the new zone,
//! tagged `spotkeeper:moving-from = <old id>` → launch → attach the new one →
//! untag it → delete the old one. Until the new volume is attached the old
//! one is the truth, so a failure at any step loses nothing and a rerun
//! resumes (an unattached copy is thrown away and made again).

use std::collections::HashSet;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    Cloud, CloudError, ImageId, Instance, InstanceId, SnapshotId, TagFilter, Volume,
};

use crate::config::{BoxSpec, OnStop, VolumeSpec};

/// Where the data volume is attached.
pub const DATA_DEVICE: &str = "/dev/sdf";
/// Where the persistent root volume is attached.
pub const ROOT_DEVICE: &str = "/dev/sdg";
/// The volume name (also in `Name`) on volumes and their snapshots.
pub const VOLUME_TAG: &str = "spotkeeper:volume";
/// On a moved copy until its move completes: the id of the volume it copies.
pub const MOVING_FROM: &str = "spotkeeper:moving-from";
/// On snapshots: why it was taken (`move` or `stop`).
pub const PURPOSE_TAG: &str = "spotkeeper:purpose";
/// On the home data volume while the box lives in another region: that
/// region ([`crate::failover`]).
pub const AWAY_TAG: &str = "spotkeeper:away";
/// On a data volume whose data went to another region: stale, never the
/// box's volume again ([`crate::failover`]).
pub const RETURNED_TAG: &str = "spotkeeper:returned";
/// On a data volume spotkeeper created empty, until a box that used it got
/// ready: only such a volume may get a filesystem from the boot script.
pub const NEW_TAG: &str = "spotkeeper:new";

/// Which of a box's volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `data_volume`.
    Data,
    /// `root_volume`.
    Root,
}

impl Role {
    /// The device it is attached at.
    pub fn device(self) -> &'static str {
        match self {
            Role::Data => DATA_DEVICE,
            Role::Root => ROOT_DEVICE,
        }
    }

    /// Its config key.
    pub fn key(self) -> &'static str {
        match self {
            Role::Data => "data_volume",
            Role::Root => "root_volume",
        }
    }
}

/// Why a volume step failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Two volumes answer to one name.
    #[error("{key} name {name:?} matches {} volumes ({}); delete or rename all but one", .volumes.len(), .volumes.join(", "))]
    Ambiguous {
        /// Config key.
        key: &'static str,
        /// The name.
        name: String,
        /// The volumes, with their zones.
        volumes: Vec<String>,
    },
    /// The volumes sit in different zones and may not move.
    #[error(
        "the box's volumes are in different zones ({0}); set move_volume = true to let spotkeeper move them"
    )]
    SplitZones(String),
    /// The volume is attached to an instance that is not this box's.
    #[error(
        "volume {volume} ({name}) is attached to {instance}, which is not box {box_name}'s live instance"
    )]
    InUse {
        /// Volume id.
        volume: String,
        /// Its name.
        name: String,
        /// The instance holding it.
        instance: String,
        /// The box.
        box_name: String,
    },
    /// A volume of the configured name exists that spotkeeper did not create.
    #[error(
        "{key} {name:?}: volume {volume} has that name but was not created by spotkeeper (no {owner_tag} tag); \
         set adopt = true in {key} to use it (it is then tagged as this owner's), or rename it"
    )]
    NotOwned {
        /// Config key.
        key: &'static str,
        /// The name.
        name: String,
        /// The volume.
        volume: String,
        /// The owner tag's key.
        owner_tag: &'static str,
    },
    /// The volume is attached to a running instance spotkeeper does not own.
    #[error(
        "volume {volume} ({name}) is attached to {instance}, a running instance spotkeeper does not own; \
         it is never taken from it: detach it yourself, or name another volume"
    )]
    ForeignHolder {
        /// Volume id.
        volume: String,
        /// Its name.
        name: String,
        /// The instance holding it.
        instance: String,
    },
    /// The volume of that name belongs to another box.
    #[error(
        "{key} {name:?}: volume {volume} is box {other:?}'s (its {box_tag} tag); a volume belongs to one box: name another one"
    )]
    OtherBox {
        /// Config key.
        key: &'static str,
        /// The name.
        name: String,
        /// The volume.
        volume: String,
        /// The box it belongs to.
        other: String,
        /// The box tag's key.
        box_tag: &'static str,
    },
    /// The image has no root snapshot to make a root volume from.
    #[error("image {0} has no root snapshot to make the persistent root volume from")]
    NoRootSnapshot(ImageId),
    /// An AWS call failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
}

/// A volume ready in the launch zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Which one.
    pub role: Role,
    /// The volume to attach.
    pub volume: Volume,
    /// Made by this `up` (blank or from a snapshot): safe to throw away.
    pub fresh: bool,
    /// The volume this one is a moved copy of, deleted once this is attached.
    pub moved_from: Option<Volume>,
}

/// The box's volume settings, root first.
pub fn volume_specs(spec: &BoxSpec) -> Vec<(Role, &VolumeSpec)> {
    let mut v = Vec::new();
    if let Some(r) = &spec.root_volume {
        v.push((Role::Root, r));
    }
    if let Some(d) = &spec.data_volume {
        v.push((Role::Data, d));
    }
    v
}

/// The tags of a box's volume `name`: owner, box, volume name, `Name`.
pub fn volume_tags(owner: &str, box_name: &str, name: &str) -> Vec<(String, String)> {
    vec![
        (tags::NAME.to_owned(), name.to_owned()),
        (VOLUME_TAG.to_owned(), name.to_owned()),
        (tags::OWNER.to_owned(), owner.to_owned()),
        (tags::BOX.to_owned(), box_name.to_owned()),
    ]
}

/// Finishes or undoes the moves a crash cut short (a copy tagged with the
/// volume it was made from) and returns the volumes without copies.
async fn finish_moves(
    cloud: &dyn Cloud,
    owner: &str,
    all: Vec<Volume>,
) -> Result<Vec<Volume>, PersistError> {
    let (copies, mut originals): (Vec<Volume>, Vec<Volume>) = all
        .into_iter()
        .partition(|v| v.tags.contains_key(MOVING_FROM));
    for copy in copies {
        let from = copy.tags.get(MOVING_FROM).cloned().unwrap_or_default();
        let original = originals.iter().position(|o| o.id.as_str() == from);
        if !copy.attachments.is_empty() || original.is_none() {
            // The copy was attached (or is all that is left): the move happened.
            if let Some(i) = original {
                let old = originals.remove(i);
                release(cloud, owner, &old, &HashSet::new()).await?;
                cloud.delete_volume(&old.id).await?;
            }
            cloud.untag(&[copy.id.to_string()], &[MOVING_FROM]).await?;
            originals.push(copy);
        } else {
            // Never attached: the original still holds the truth.
            cloud.delete_volume(&copy.id).await?;
        }
    }
    Ok(originals)
}

/// A volume a box wants: its role, its settings and the volume found for it.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// Data or root.
    pub role: Role,
    /// Its settings.
    pub spec: &'a VolumeSpec,
    /// The volume of that name, if one exists.
    pub existing: Option<&'a Volume>,
}

/// The volume named `vs.name` (by its `Name` tag, so a volume made by hand
/// counts), after finishing or undoing a move a crash cut short. An error if
/// the name matches more than one volume.
pub async fn find(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    role: Role,
    vs: &VolumeSpec,
) -> Result<Option<Volume>, PersistError> {
    let mut all: Vec<Volume> = cloud
        .volumes(&TagFilter::default().with(tags::NAME, &vs.name))
        .await?
        .into_iter()
        .filter(|v| v.state != "deleting" && v.state != "deleted")
        // One whose data went to another region is stale ([`crate::failover`]).
        .filter(|v| !v.tags.contains_key(RETURNED_TAG))
        // Another installation's volume of the same name is not ours.
        .filter(|v| v.tags.get(tags::OWNER).is_none_or(|o| o == owner))
        .collect();
    // One spotkeeper did not create: only when the config says to adopt it,
    // and then it is tagged as ours first.
    for v in all.iter_mut().filter(|v| !v.tags.contains_key(tags::OWNER)) {
        if !vs.adopt {
            return Err(PersistError::NotOwned {
                key: role.key(),
                name: vs.name.clone(),
                volume: v.id.to_string(),
                owner_tag: tags::OWNER,
            });
        }
        let t = volume_tags(owner, box_name, &vs.name);
        cloud.tag(&[v.id.to_string()], &t).await?;
        v.tags.extend(t);
    }
    not_another_boxs(&all, box_name, role, vs)?;
    let mut originals = finish_moves(cloud, owner, all).await?;
    for v in &originals {
        for (holder, _) in &v.attachments {
            if let Some(i) = cloud.instance(holder).await?
                && i.state.is_live()
                && i.tag(tags::OWNER) != Some(owner)
            {
                return Err(PersistError::ForeignHolder {
                    volume: v.id.to_string(),
                    name: vs.name.clone(),
                    instance: holder.to_string(),
                });
            }
        }
    }
    // A move that died between untagging the copy and deleting the
    // original leaves two of them in different zones: the attached one is
    // the box's disk now (it was made from the other and used since).
    if let [a, b] = originals.as_slice()
        && a.zone != b.zone
        && a.attachments.is_empty() != b.attachments.is_empty()
    {
        let stale = if a.attachments.is_empty() { 0 } else { 1 };
        let old = originals.remove(stale);
        cloud.delete_volume(&old.id).await?;
    }
    if originals.len() > 1 {
        return Err(PersistError::Ambiguous {
            key: role.key(),
            name: vs.name.clone(),
            volumes: originals
                .iter()
                .map(|v| format!("{} in {}", v.id, v.zone))
                .collect(),
        });
    }
    Ok(originals.pop())
}

/// A volume tagged for another box is never this box's: taking it would
/// detach it from that box's instance.
fn not_another_boxs(
    found: &[Volume],
    box_name: &str,
    role: Role,
    vs: &VolumeSpec,
) -> Result<(), PersistError> {
    match found.iter().find_map(|v| {
        v.tags
            .get(tags::BOX)
            .filter(|b| *b != box_name)
            .map(|b| (v, b))
    }) {
        Some((v, other)) => Err(PersistError::OtherBox {
            key: role.key(),
            name: vs.name.clone(),
            volume: v.id.to_string(),
            other: other.clone(),
            box_tag: tags::BOX,
        }),
        None => Ok(()),
    }
}

/// The zone the box must launch in because its volumes are there (`None`:
/// no volume yet, or `move_volume` lets them follow the instance).
pub fn pinned_zone(
    found: &[(Role, Option<Volume>)],
    move_volume: bool,
) -> Result<Option<String>, PersistError> {
    if move_volume {
        return Ok(None);
    }
    let zones: Vec<&str> = found
        .iter()
        .filter_map(|(_, v)| v.as_ref().map(|v| v.zone.as_str()))
        .collect();
    match zones.split_first() {
        None => Ok(None),
        Some((first, rest)) if rest.iter().all(|z| z == first) => Ok(Some((*first).to_owned())),
        Some(_) => Err(PersistError::SplitZones(zones.join(", "))),
    }
}

/// How long to wait for the instance holding a volume to go away before
/// taking the volume: a spot warning gives two minutes; retirement more.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Detaches a volume from whatever holds it, once the holder is gone (a
/// replacement may start while the interrupted instance still has its two
/// minutes: its disk is taken only when it is down).
async fn release(
    cloud: &dyn Cloud,
    owner: &str,
    v: &Volume,
    doomed: &HashSet<InstanceId>,
) -> Result<(), CloudError> {
    for (instance, _) in &v.attachments {
        // A volume is never taken from a live instance spotkeeper does not
        // own: that is someone else's machine using it.
        let holder = cloud.instance(instance).await?;
        if let Some(holder) = &holder
            && holder.state.is_live()
            && holder.tag(tags::OWNER) != Some(owner)
        {
            return Err(CloudError::other(
                "DetachVolume",
                spotkeeper_cloud::ErrorKind::InvalidRequest,
                format!(
                    "volume {} is attached to {instance}, a running instance spotkeeper does not own; \
                     it is never detached from it",
                    v.id
                ),
            ));
        }
        // A doomed holder (its replacement runs now) is let go at once, or
        // once its `on_interruption` hook has finished or run out of time
        // (the gate its runner tagged; see `crate::hook`).
        if doomed.contains(instance) {
            if let Some(holder) = holder.as_ref().filter(|h| h.state.is_live()) {
                crate::hook::wait(cloud, holder).await?;
            }
            cloud.terminate(std::slice::from_ref(instance)).await?;
        }
        let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
        while let Some(holder) = cloud.instance(instance).await? {
            if holder.state.is_gone() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        // Termination detaches it by itself; only a volume still held needs the call.
        let still = cloud
            .volume(&v.id)
            .await?
            .is_some_and(|now| now.attachments.iter().any(|(i, _)| i == instance));
        if still {
            match cloud.detach_volume(&v.id, instance).await {
                Err(e) if e.kind != spotkeeper_cloud::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Makes the volume available in `zone`: the existing one, a moved copy of
/// it, one restored from its newest stop snapshot, or a new one (blank for
/// data; from the image's root snapshot for a root volume).
pub async fn prepare(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    want: Wanted<'_>,
    zone: &str,
    image: &ImageId,
) -> Result<Prepared, PersistError> {
    let Wanted {
        role,
        spec: vs,
        existing,
    } = want;
    let tags = volume_tags(owner, box_name, &vs.name);
    if let Some(v) = existing {
        if v.zone == zone {
            // Taken from its holder at attach time, after the holder is gone.
            return Ok(Prepared {
                role,
                volume: v.clone(),
                fresh: false,
                moved_from: None,
            });
        }
        return move_by_snapshot(cloud, owner, role, v, zone, tags).await;
    }
    let volume = match role {
        Role::Data => {
            let stops = cloud
                .snapshots(
                    &TagFilter::default()
                        .with(VOLUME_TAG, &vs.name)
                        .with(tags::OWNER, owner)
                        .with(PURPOSE_TAG, "stop"),
                )
                .await?;
            match stops.first() {
                Some(s) => {
                    cloud
                        .create_volume(zone, vs.size_gb, &vs.kind, Some(&s.id), &tags)
                        .await?
                }
                None => {
                    let mut tags = tags.clone();
                    tags.push((NEW_TAG.to_owned(), "true".to_owned()));
                    cloud
                        .create_volume(zone, vs.size_gb, &vs.kind, None, &tags)
                        .await?
                }
            }
        }
        Role::Root => {
            let snap = cloud
                .image_root_snapshot(image)
                .await?
                .ok_or_else(|| PersistError::NoRootSnapshot(image.clone()))?;
            cloud
                .create_volume(zone, vs.size_gb, &vs.kind, Some(&snap), &tags)
                .await?
        }
    };
    Ok(Prepared {
        role,
        volume,
        fresh: true,
        moved_from: None,
    })
}

/// A copy of `v` in `zone`, made from a snapshot of it (tagged with where it
/// came from until it is attached, so a crash can be finished or undone).
async fn move_by_snapshot(
    cloud: &dyn Cloud,
    owner: &str,
    role: Role,
    v: &Volume,
    zone: &str,
    tags: Vec<(String, String)>,
) -> Result<Prepared, PersistError> {
    release(cloud, owner, v, &HashSet::new()).await?;
    let mut snap_tags = tags.clone();
    snap_tags.push((PURPOSE_TAG.to_owned(), "move".to_owned()));
    let snapshot = cloud.snapshot_volume(&v.id, &snap_tags).await?;
    let mut copy_tags = tags;
    copy_tags.push((MOVING_FROM.to_owned(), v.id.to_string()));
    if v.tags.contains_key(NEW_TAG) {
        // Still never used: the copy is as new as the original.
        copy_tags.push((NEW_TAG.to_owned(), "true".to_owned()));
    }
    let copy = cloud
        .create_volume(zone, None, &v.kind, Some(&snapshot), &copy_tags)
        .await?;
    Ok(Prepared {
        role,
        volume: copy,
        fresh: false,
        moved_from: Some(v.clone()),
    })
}

/// Undoes [`prepare`] after a launch in its zone failed: a fresh volume or a
/// moved copy is deleted (the data is still in the original or the snapshot).
pub async fn discard(cloud: &dyn Cloud, p: &Prepared) -> Result<(), CloudError> {
    if p.fresh || p.moved_from.is_some() {
        cloud.delete_volume(&p.volume.id).await?;
    }
    Ok(())
}

/// Attaches a prepared volume; completes a move (untag the copy, delete the
/// original, keep only the newest move snapshot).
pub async fn attach(
    cloud: &dyn Cloud,
    owner: &str,
    p: &Prepared,
    instance: &InstanceId,
    doomed: &HashSet<InstanceId>,
) -> Result<Volume, CloudError> {
    let attached = match cloud.volume(&p.volume.id).await? {
        Some(current) if current.attachments.iter().any(|(i, _)| i == instance) => current,
        current => {
            if let Some(current) = current {
                release(cloud, owner, &current, doomed).await?;
            }
            attach_once(cloud, &p.volume.id, instance, p.role.device()).await?
        }
    };
    if let Some(old) = &p.moved_from {
        cloud
            .untag(&[p.volume.id.to_string()], &[MOVING_FROM])
            .await?;
        cloud.delete_volume(&old.id).await?;
        let name = p.volume.tags.get(VOLUME_TAG).cloned().unwrap_or_default();
        let moves = cloud
            .snapshots(
                &TagFilter::default()
                    .with(VOLUME_TAG, &name)
                    .with(tags::OWNER, owner)
                    .with(PURPOSE_TAG, "move"),
            )
            .await?;
        let keep = p.volume.snapshot_id.clone();
        for s in moves
            .iter()
            .skip(1)
            .filter(|s| Some(&s.id) != keep.as_ref())
        {
            cloud.delete_snapshot(&s.id).await?;
        }
    }
    Ok(attached)
}

/// Attaches a volume to `instance`; one that is attached to it already (a
/// task of the daemon settled the box meanwhile) is fine: AWS answers
/// `VolumeInUse` to an AttachVolume of an attached volume, even to the same
/// instance.
async fn attach_once(
    cloud: &dyn Cloud,
    volume: &spotkeeper_cloud::VolumeId,
    instance: &InstanceId,
    device: &str,
) -> Result<Volume, CloudError> {
    match cloud.attach_volume(volume, instance, device).await {
        Err(e) if e.code.as_deref() == Some("VolumeInUse") => match cloud.volume(volume).await? {
            Some(v) if v.attachments.iter().any(|(i, _)| i == instance) => Ok(v),
            _ => Err(e),
        },
        attached => attached,
    }
}

/// For a box that is already up: attaches its volumes if a crash left them
/// unattached in its zone, or still held by an instance going away
/// (`doomed`: warned or replaced; it is terminated and the volume taken
/// once it is down). Returns notes for the person.
pub async fn ensure_attached(
    cloud: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
    instance: &Instance,
    doomed: &HashSet<InstanceId>,
) -> Result<Vec<String>, PersistError> {
    let mut notes = Vec::new();
    for (role, vs) in volume_specs(spec) {
        let Some(v) = find(cloud, owner, &spec.name, role, vs).await? else {
            notes.push(format!(
                "{} {:?} does not exist; stop and up the box to create it",
                role.key(),
                vs.name
            ));
            continue;
        };
        if v.attachments.iter().any(|(i, _)| i == &instance.id) {
            continue;
        }
        if let Some((other, _)) = v.attachments.first()
            && !doomed.contains(other)
        {
            return Err(PersistError::InUse {
                volume: v.id.to_string(),
                name: vs.name.clone(),
                instance: other.to_string(),
                box_name: spec.name.clone(),
            });
        }
        if instance.zone.as_deref() == Some(v.zone.as_str()) {
            let p = Prepared {
                role,
                volume: v,
                fresh: false,
                moved_from: None,
            };
            attach(cloud, owner, &p, &instance.id, doomed).await?;
            notes.push(format!(
                "Attached {} {} to {}",
                role.key(),
                p.volume.id,
                instance.id
            ));
        } else {
            notes.push(format!(
                "{} {} is in {}, the instance in {:?}; stop and up the box to move it",
                role.key(),
                v.id,
                v.zone,
                instance.zone
            ));
        }
    }
    Ok(notes)
}

/// After the box's instances are gone: applies each volume's `on_stop`.
/// Returns what was done, one line each.
pub async fn on_stop(
    cloud: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
) -> Result<Vec<String>, PersistError> {
    let mut done = Vec::new();
    for (role, vs) in volume_specs(spec) {
        let Some(v) = find(cloud, owner, &spec.name, role, vs).await? else {
            continue;
        };
        match vs.on_stop {
            OnStop::Retain => done.push(format!(
                "Kept {} {} ({}) in {}",
                role.key(),
                v.id,
                vs.name,
                v.zone
            )),
            OnStop::Snapshot => {
                release(cloud, owner, &v, &HashSet::new()).await?;
                let mut t = volume_tags(owner, &spec.name, &vs.name);
                t.push((PURPOSE_TAG.to_owned(), "stop".to_owned()));
                let snap = cloud.snapshot_volume(&v.id, &t).await?;
                cloud.delete_volume(&v.id).await?;
                done.push(format!(
                    "Saved {} {} as {snap} and deleted the volume; the next up restores it",
                    role.key(),
                    v.id
                ));
                let pruned = prune_stop_snapshots(cloud, owner, &vs.name, vs.keep, &snap).await?;
                if !pruned.is_empty() {
                    done.push(format!(
                        "Deleted {} older stop snapshot(s) of {} (keep = {}): {}",
                        pruned.len(),
                        vs.name,
                        vs.keep,
                        pruned
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            OnStop::Delete => {
                release(cloud, owner, &v, &HashSet::new()).await?;
                cloud.delete_volume(&v.id).await?;
                done.push(format!("Deleted {} {} ({})", role.key(), v.id, vs.name));
            }
        }
    }
    Ok(done)
}

/// Deletes the owner's stop snapshots of volume `name` beyond the newest
/// `keep`, never `newest` (the one just taken, which a describe may not list
/// yet). Returns what it deleted.
pub async fn prune_stop_snapshots(
    cloud: &dyn Cloud,
    owner: &str,
    name: &str,
    keep: usize,
    newest: &SnapshotId,
) -> Result<Vec<SnapshotId>, CloudError> {
    let stops = cloud
        .snapshots(
            &TagFilter::default()
                .with(VOLUME_TAG, name)
                .with(tags::OWNER, owner)
                .with(PURPOSE_TAG, "stop"),
        )
        .await?;
    let mut deleted = Vec::new();
    // Newest first; `newest` counts as one of the kept.
    for s in stops
        .iter()
        .filter(|s| &s.id != newest)
        .skip(keep.saturating_sub(1))
    {
        cloud.delete_snapshot(&s.id).await?;
        deleted.push(s.id.clone());
    }
    Ok(deleted)
}
