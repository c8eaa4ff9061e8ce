//! A box that leaves its home region when the home cannot host it
//! (`regions = [home, …]`), and comes back: where it lives now, its data
//! volume restored from the newest replica in the other region, and copied
//! back home before it returns.
//!
//! Where a box lives is read from AWS, not remembered: a home data volume
//! tagged [`AWAY_TAG`] names the region its data lives in now (written before
//! the first launch there); a box without a data volume lives where its live
//! instance is. A volume in another region tagged [`RETURNED_TAG`] gave its
//! data back home and is stale.
//!
//! AWS facts this relies on: EBS volumes, snapshots, AMIs, Elastic IPs,
//! subnets and key pairs are regional (a volume is made in the other region
//! only from a snapshot copied there; an AMI id names nothing there); Route
//! 53 is global (the DNS name follows the box); a snapshot holds what was on
//! the volume when it started (so the volume is snapshotted again after its
//! instance is terminated, when nothing writes to it any more); a copy
//! across regions completes later, and a volume is made only from a
//! completed snapshot.

use std::time::Duration;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    Cloud, CloudError, Instance, InstanceId, Market, SnapshotId, TagFilter, Volume,
};

use crate::boxes::BoxError;
use crate::config::BoxSpec;
use crate::persist::{self, PURPOSE_TAG, Role, VOLUME_TAG};
use crate::replicate::{self, COPY_OF_TAG, TAKEN_AT_TAG};

pub use crate::persist::{AWAY_TAG, RETURNED_TAG};
/// On the snapshots a return takes and copies home.
pub const RETURN_TAG: &str = "spotkeeper:return";
/// How long `stop` of a box away waits for its copy home to complete (AWS:
/// minutes to hours, by the data written since the last copy; the daemon's
/// return never waits: it looks again at the next pass).
pub const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Why a box never leaves its home region; `None` when it may.
pub fn blocked(spec: &BoxSpec) -> Option<String> {
    if spec.other_regions().is_empty() {
        return Some("it lists no other region".into());
    }
    if spec
        .data_volume
        .as_ref()
        .is_some_and(|v| v.replicate.is_none())
    {
        return Some(
            "its data volume is not replicated (data_volume.replicate): its data cannot follow"
                .into(),
        );
    }
    if spec.root_volume.is_some() {
        return Some("a persistent root volume is not replicated to other regions".into());
    }
    if !spec.subnets.is_empty() {
        return Some("its subnets are in the home region only".into());
    }
    None
}

/// The box's spec in `region`: its zones there (the home's names mean
/// nothing there), no Elastic IP (regional: DNS is the name that follows),
/// and an AMI id replaced by the box's image copied there.
pub fn spec_in(spec: &BoxSpec) -> BoxSpec {
    let mut s = spec.clone();
    s.launch.zones = None;
    s.elastic_ip = None;
    if matches!(s.launch.image, spotkeeper_cloud::ImageRef::Id(_)) {
        s.image_from_box = true;
    }
    s
}

/// Refuses a launch of `spec` in `ctx`'s region from an AMI id: an AMI id
/// names an image in one region only (AWS: AMIs are regional; `CopyImage`
/// gives the copy a new id). The box's own image, copied there when made,
/// stands in for it ([`spec_in`]).
pub async fn check_image(
    ctx: &crate::boxes::Ctx<'_>,
    spec: &BoxSpec,
    there: &BoxSpec,
) -> Result<(), BoxError> {
    let spotkeeper_cloud::ImageRef::Id(id) = &spec.launch.image else {
        return Ok(());
    };
    if crate::boxes::launch_image(ctx, there).await? == *id {
        return Err(BoxError::Failover {
            box_name: spec.name.clone(),
            why: format!(
                "no image of the box in {}: the AMI id {id} names an image of its home region \
                 only; `spotkeeper snapshot {}` makes an image that is copied to every region \
                 of the box",
                ctx.cloud.region(),
                spec.name
            ),
        });
    }
    Ok(())
}

/// The box's `region_surcharge` for `region` (USD/hour, 0 unless set).
pub fn surcharge(spec: &BoxSpec, region: &str) -> f64 {
    spec.region_surcharge.get(region).copied().unwrap_or(0.0)
}

/// What an hour in `region` costs the box when regions are compared: its
/// offering's price there (nothing for on-demand, where the types are the
/// same everywhere) plus the region's surcharge.
pub fn adjusted(spec: &BoxSpec, region: &str, price: Option<f64>) -> f64 {
    price.unwrap_or(0.0) + surcharge(spec, region)
}

/// Where the box lives outside its home.
#[derive(Debug, Clone)]
pub struct Away {
    /// The region.
    pub region: String,
    /// Its live instance there.
    pub instance: Option<Instance>,
    /// Its data volume there (not returned).
    pub volume: Option<Volume>,
}

impl Away {
    /// Its data volume there, which a return copies home.
    pub fn data_volume(&self, spec: &BoxSpec) -> Result<&Volume, BoxError> {
        self.volume.as_ref().ok_or_else(|| BoxError::Failover {
            box_name: spec.name.clone(),
            why: format!("its data volume in {} is gone", self.region),
        })
    }
}

/// The home data volume, when it exists.
pub async fn home_volume(
    home: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
) -> Result<Option<Volume>, BoxError> {
    let Some(vs) = &spec.data_volume else {
        return Ok(None);
    };
    Ok(persist::find(home, owner, &spec.name, Role::Data, vs).await?)
}

/// Where the box lives outside its home, if it does: the region its home
/// volume names, else the first other region with a live instance of it.
pub async fn away(
    home_volume: Option<&Volume>,
    others: &[(String, &dyn Cloud)],
    owner: &str,
    spec: &BoxSpec,
) -> Result<Option<Away>, BoxError> {
    let named = home_volume.and_then(|v| v.tags.get(AWAY_TAG));
    for (region, cloud) in others {
        if named.is_some_and(|n| n != region) {
            continue;
        }
        let instance = live_instance(*cloud, owner, &spec.name).await?;
        let volume = match &spec.data_volume {
            Some(vs) => away_volume(*cloud, owner, &vs.name).await?,
            None => None,
        };
        if named.is_some() || instance.is_some() {
            return Ok(Some(Away {
                region: region.clone(),
                instance,
                volume,
            }));
        }
    }
    Ok(None)
}

async fn live_instance(
    cloud: &dyn Cloud,
    owner: &str,
    name: &str,
) -> Result<Option<Instance>, CloudError> {
    Ok(cloud
        .instances(&crate::ownership::box_filter(owner, name))
        .await?
        .into_iter()
        .find(|i| i.state.is_live() && i.tag(tags::STOPPED).is_none()))
}

/// The box's data volume in another region that still holds its data.
async fn away_volume(
    cloud: &dyn Cloud,
    owner: &str,
    volume: &str,
) -> Result<Option<Volume>, CloudError> {
    Ok(named_volumes(cloud, owner, volume)
        .await?
        .into_iter()
        .find(|v| !v.tags.contains_key(RETURNED_TAG)))
}

async fn named_volumes(
    cloud: &dyn Cloud,
    owner: &str,
    volume: &str,
) -> Result<Vec<Volume>, CloudError> {
    Ok(cloud
        .volumes(&TagFilter::default().with(tags::NAME, volume))
        .await?
        .into_iter()
        .filter(|v| v.tags.get(tags::OWNER).map(String::as_str) == Some(owner))
        .filter(|v| v.state != "deleting" && v.state != "deleted")
        .collect())
}

/// The cheapest zone of `cloud`'s region with an allowed offering at or
/// under the ceiling (on-demand boxes: the first zone), and the prices read.
pub async fn zone_for(
    cloud: &dyn Cloud,
    spec: &BoxSpec,
) -> Result<(String, Vec<spotkeeper_cloud::SpotPrice>), BoxError> {
    let zones = match &spec.launch.zones {
        Some(z) => z.clone(),
        None => cloud.zones().await?,
    };
    if spec.market == Market::OnDemand {
        let zone = zones.first().cloned().ok_or_else(|| BoxError::Failover {
            box_name: spec.name.clone(),
            why: format!("{} lists no zone", cloud.region()),
        })?;
        return Ok((zone, Vec::new()));
    }
    let prices = cloud.spot_prices(&spec.instance_types, &zones).await?;
    let best = crate::plan::candidates(
        &prices,
        &spec.instance_types,
        &zones,
        spec.max_price,
        &Default::default(),
    )?;
    Ok((best[0].zone.clone(), prices))
}

/// Makes the box's data volume in `cloud`'s region, in `zone`, from the
/// newest completed replica there (stale returned volumes there are deleted
/// first). Returns the volume and the replica's age in seconds.
pub async fn restore(
    cloud: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
    zone: &str,
    now: i64,
) -> Result<(Volume, i64), BoxError> {
    let Some(vs) = &spec.data_volume else {
        return Err(BoxError::Failover {
            box_name: spec.name.clone(),
            why: "it has no data volume to restore".into(),
        });
    };
    delete_stale(cloud, owner, &vs.name).await?;
    let replicas = replicate::replicas(cloud, owner, &vs.name).await?;
    let newest = replicas
        .iter()
        .find(|r| r.completed)
        .ok_or_else(|| BoxError::Failover {
            box_name: spec.name.clone(),
            why: format!(
                "{} has no completed replica of {} to restore from",
                cloud.region(),
                vs.name
            ),
        })?;
    let volume = cloud
        .create_volume(
            zone,
            vs.size_gb,
            &vs.kind,
            Some(&newest.snapshot),
            &persist::volume_tags(owner, &spec.name, &vs.name),
        )
        .await?;
    Ok((volume, now - newest.taken_at))
}

/// [`RETURN_TAG`] on a copy made while the box still runs, so the last one
/// has less to carry (AWS copies a snapshot incrementally when the
/// destination holds an earlier copy of the same volume).
pub const PRE_COPY: &str = "pre";
/// [`RETURN_TAG`] on the copy the home volume is made from (taken once
/// nothing writes to the volume any more).
pub const LAST_COPY: &str = "true";
/// [`RETURN_TAG`] on return copies once the return is through.
pub const DONE_COPY: &str = "done";

/// Starts a copy home of the box's data volume `volume` in `from`: a
/// snapshot there (waited for: it holds the volume as it was when it
/// started), copied into the home (`home`'s cloud) and tagged
/// [`RETURN_TAG`] = `kind`. Returns the copy's id at once (a copy across
/// regions completes later).
pub async fn start_copy_home(
    from: &dyn Cloud,
    home: &crate::boxes::Ctx<'_>,
    spec: &BoxSpec,
    volume: &Volume,
    kind: &str,
) -> Result<SnapshotId, BoxError> {
    let (owner, now) = (home.owner, crate::store::unix_now());
    let vs_name = volume
        .tags
        .get(VOLUME_TAG)
        .cloned()
        .unwrap_or_else(|| volume.id.to_string());
    let mut t = vec![
        (tags::OWNER.to_owned(), owner.to_owned()),
        (tags::BOX.to_owned(), spec.name.clone()),
        (VOLUME_TAG.to_owned(), vs_name.clone()),
        (PURPOSE_TAG.to_owned(), replicate::PURPOSE.to_owned()),
        (TAKEN_AT_TAG.to_owned(), now.to_string()),
        (RETURN_TAG.to_owned(), kind.to_owned()),
        (tags::NAME.to_owned(), format!("{vs_name} return")),
    ];
    let source = from.snapshot_volume(&volume.id, &t).await?;
    t.push((
        COPY_OF_TAG.to_owned(),
        format!("{}/{source}", from.region()),
    ));
    Ok(home.cloud.copy_snapshot(from.region(), &source, &t).await?)
}

/// The copies home of the box's data volume that a return made, newest
/// first, with their kind ([`PRE_COPY`], [`LAST_COPY`], [`DONE_COPY`]).
pub async fn return_copies(
    home: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
) -> Result<Vec<(String, spotkeeper_cloud::Snapshot)>, BoxError> {
    let Some(vs) = &spec.data_volume else {
        return Ok(Vec::new());
    };
    let mut all: Vec<(String, spotkeeper_cloud::Snapshot)> = home
        .snapshots(
            &crate::ownership::owner_filter(owner)
                .with(VOLUME_TAG, &vs.name)
                .with(PURPOSE_TAG, replicate::PURPOSE),
        )
        .await?
        .into_iter()
        .filter(|s| s.tags.contains_key(COPY_OF_TAG))
        .filter_map(|s| Some((s.tags.get(RETURN_TAG)?.clone(), s)))
        .collect();
    all.sort_by_key(|(_, s)| {
        std::cmp::Reverse(
            s.tags
                .get(TAKEN_AT_TAG)
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(0),
        )
    });
    Ok(all)
}

/// Where a return stands after [`return_step`].
#[derive(Debug, Clone, PartialEq)]
pub enum Return {
    /// A copy home is under way (said): a later pass looks again.
    Copying(String),
    /// The home volume holds the data written away: launch at home (said).
    Home(String),
}

/// One step of a box's return with its data volume (`copies`: its
/// [`return_copies`], read by the caller), as far as it goes without
/// waiting for a copy: a first copy home while the box still runs,
/// then (once it completed) the instance away terminated and the last copy
/// started, then (once that completed) the volumes away and at home marked
/// stale and the home volume made from the copy. Each pass calls it again;
/// what AWS holds says where the return stands, so a restarted daemon
/// resumes it.
pub async fn return_step(
    home: &crate::boxes::Ctx<'_>,
    away_cloud: &dyn Cloud,
    spec: &BoxSpec,
    away: &Away,
    (home_volume, copies): (Option<&Volume>, &[(String, spotkeeper_cloud::Snapshot)]),
) -> Result<Return, BoxError> {
    let newest = |kind: &str| copies.iter().find(|(k, _)| k == kind).map(|(_, s)| s);
    if let Some(last) = newest(LAST_COPY) {
        return match last.state.as_str() {
            "completed" => finish_return(home, away_cloud, spec, away, home_volume, copies)
                .await
                .map(Return::Home),
            "error" => Err(BoxError::Failover {
                box_name: spec.name.clone(),
                why: format!("the copy {} home failed", last.id),
            }),
            _ => Ok(Return::Copying(format!(
                "the last copy home {} is under way",
                last.id
            ))),
        };
    }
    let volume = away.data_volume(spec)?;
    if let Some(i) = &away.instance {
        match newest(PRE_COPY) {
            None => {
                let id = start_copy_home(away_cloud, home, spec, volume, PRE_COPY).await?;
                return Ok(Return::Copying(format!(
                    "copying {} home while the box still runs ({id})",
                    volume.id
                )));
            }
            Some(pre) if pre.state != "completed" => {
                return Ok(Return::Copying(format!(
                    "the first copy home {} is under way",
                    pre.id
                )));
            }
            Some(_) => {
                let away_ctx = crate::boxes::Ctx {
                    cloud: away_cloud,
                    ..*home
                };
                quiesce(&away_ctx, &i.id).await?;
            }
        }
    }
    let id = start_copy_home(away_cloud, home, spec, volume, LAST_COPY).await?;
    Ok(Return::Copying(format!(
        "the box is down in {}; the last copy home {id} is under way",
        away.region
    )))
}

/// The last copy home completed: the volumes away and at home are stale,
/// the home volume is made from the copy, the return's copies are marked
/// done. Says what came home.
async fn finish_return(
    home: &crate::boxes::Ctx<'_>,
    away_cloud: &dyn Cloud,
    spec: &BoxSpec,
    away: &Away,
    home_volume: Option<&Volume>,
    copies: &[(String, spotkeeper_cloud::Snapshot)],
) -> Result<String, BoxError> {
    let stale = [(RETURNED_TAG.to_owned(), "true".to_owned())];
    if let Some(v) = &away.volume {
        away_cloud.tag(&[v.id.to_string()], &stale).await?;
    }
    if let Some(v) = home_volume {
        home.cloud.tag(&[v.id.to_string()], &stale).await?;
    }
    let last = copies.iter().find(|(k, _)| k == LAST_COPY).map(|(_, s)| s);
    if let Some(copy) = last {
        restore_copy(home.cloud, home.owner, spec, copy).await?;
    }
    let pre: Vec<String> = copies
        .iter()
        .filter(|(k, _)| k == PRE_COPY)
        .map(|(_, s)| s.id.to_string())
        .collect();
    if !pre.is_empty() {
        home.cloud
            .tag(&pre, &[(RETURN_TAG.to_owned(), DONE_COPY.to_owned())])
            .await?;
    }
    Ok(format!(
        "the data written in {} came with it ({})",
        away.region,
        last.map(|l| l.id.to_string()).unwrap_or_default()
    ))
}

/// A copy home ([`start_copy_home`]) waited for until completed (`stop`,
/// which has nothing else to do meanwhile). Returns the copy's id.
pub async fn copy_home(
    from: &dyn Cloud,
    home: &crate::boxes::Ctx<'_>,
    spec: &BoxSpec,
    volume: &Volume,
) -> Result<SnapshotId, BoxError> {
    let copy = start_copy_home(from, home, spec, volume, LAST_COPY).await?;
    let deadline = tokio::time::Instant::now() + COPY_TIMEOUT;
    loop {
        let state = return_copies(home.cloud, home.owner, spec)
            .await?
            .into_iter()
            .find(|(_, s)| s.id == copy)
            .map(|(_, s)| s.state);
        match state.as_deref() {
            Some("completed") => return Ok(copy),
            Some("error") => {
                return Err(BoxError::Failover {
                    box_name: spec.name.clone(),
                    why: format!("the copy {copy} to {} failed", home.cloud.region()),
                });
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(BoxError::Timeout {
                    what: format!("the copy {copy} to {} to complete", home.cloud.region()),
                    after: COPY_TIMEOUT,
                });
            }
            _ => tokio::time::sleep(home.timing.poll).await,
        }
    }
}

/// Terminates `instance` (in `cloud`'s region) and waits until it is gone,
/// so its volume holds everything it wrote.
pub async fn quiesce(ctx: &crate::boxes::Ctx<'_>, instance: &InstanceId) -> Result<(), BoxError> {
    ctx.cloud.terminate(std::slice::from_ref(instance)).await?;
    crate::boxes::wait_terminated(ctx, std::slice::from_ref(instance)).await
}

/// The region of an availability zone (`us-west-2a` → `us-west-2`, a Local
/// Zone `us-west-2-lax-1a` → `us-west-2-lax-1`: its parent region's name is
/// its prefix, which is enough to tell regions apart in a report).
pub fn region_of_zone(zone: &str) -> &str {
    zone.trim_end_matches(|c: char| c.is_ascii_lowercase())
}

/// Brings the data of a box that lives in `away_cloud`'s region home (its
/// instance there already gone), waiting for the copy (`stop`): the volume
/// there snapshotted and copied home, then what [`return_step`] does once
/// its last copy completed. Says what came home.
pub async fn come_home(
    home: &crate::boxes::Ctx<'_>,
    away_cloud: &dyn Cloud,
    spec: &BoxSpec,
    away: &Away,
    home_volume: Option<&Volume>,
) -> Result<String, BoxError> {
    let started = tokio::time::Instant::now();
    let volume = away.data_volume(spec)?;
    copy_home(away_cloud, home, spec, volume).await?;
    let copies = return_copies(home.cloud, home.owner, spec).await?;
    let said = finish_return(home, away_cloud, spec, away, home_volume, &copies).await?;
    Ok(format!(
        "{said}, copied in {} s",
        started.elapsed().as_secs()
    ))
}

/// No home data volume: a copy a return brought home and that never became
/// the volume (a crash in between) is made the volume now, in the cheapest
/// zone at home. Returns whether it made one.
pub async fn restore_returned(
    home: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
) -> Result<bool, BoxError> {
    let copies = return_copies(home, owner, spec).await?;
    let Some((_, copy)) = copies
        .iter()
        .find(|(k, s)| k == LAST_COPY && s.state == "completed")
    else {
        return Ok(false);
    };
    restore_copy(home, owner, spec, copy).await?;
    Ok(true)
}

/// Makes the home data volume from `copy` (a completed last copy home), in
/// the cheapest zone at home, and marks the copy done: an ordinary replica
/// from now on.
async fn restore_copy(
    home: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
    copy: &spotkeeper_cloud::Snapshot,
) -> Result<(), BoxError> {
    let Some(vs) = &spec.data_volume else {
        return Ok(());
    };
    let (zone, _) = zone_for(home, spec).await?;
    home.create_volume(
        &zone,
        vs.size_gb,
        &vs.kind,
        Some(&copy.id),
        &persist::volume_tags(owner, &spec.name, &vs.name),
    )
    .await?;
    home.tag(
        &[copy.id.to_string()],
        &[(RETURN_TAG.to_owned(), DONE_COPY.to_owned())],
    )
    .await?;
    Ok(())
}

/// Before `stop` at home: a box that lives in another region is taken down
/// there and its data brought home (so the volume's `on_stop` applies at
/// home, and nothing of the box is left running away). Says what it did.
pub async fn stop_away(
    home: &crate::boxes::Ctx<'_>,
    others: &[(String, &dyn Cloud)],
    spec: &BoxSpec,
) -> Result<Option<String>, BoxError> {
    if blocked(spec).is_some() {
        return Ok(None);
    }
    let home_volume = home_volume(home.cloud, home.owner, spec).await?;
    let Some(away) = away(home_volume.as_ref(), others, home.owner, spec).await? else {
        return Ok(None);
    };
    let cloud = others
        .iter()
        .find(|(r, _)| *r == away.region)
        .map(|(_, c)| *c)
        .ok_or_else(|| BoxError::Failover {
            box_name: spec.name.clone(),
            why: format!("no handle to {}", away.region),
        })?;
    let away_ctx = crate::boxes::Ctx { cloud, ..*home };
    if let Some(i) = &away.instance {
        quiesce(&away_ctx, &i.id).await?;
    }
    let data = match spec.data_volume {
        Some(_) => come_home(home, cloud, spec, &away, home_volume.as_ref()).await?,
        None => "it has no data volume".to_owned(),
    };
    clear_stale(home.cloud, cloud, home.owner, spec).await;
    Ok(Some(format!(
        "box {} lived in {}: taken down there; {data}",
        spec.name, away.region
    )))
}

/// Deletes the box's stale data volumes (their data went to another
/// region) at home and away; a failure is logged, and the next return or
/// stop deletes them.
pub async fn clear_stale(home: &dyn Cloud, away: &dyn Cloud, owner: &str, spec: &BoxSpec) {
    let Some(vs) = &spec.data_volume else {
        return;
    };
    for c in [home, away] {
        if let Err(e) = delete_stale(c, owner, &vs.name).await {
            tracing::warn!(box_name = %spec.name, "deleting stale volumes in {}: {e}", c.region());
        }
    }
}

/// Deletes the unattached volumes named `volume` in `cloud`'s region whose
/// data went to another region ([`RETURNED_TAG`]).
async fn delete_stale(cloud: &dyn Cloud, owner: &str, volume: &str) -> Result<(), CloudError> {
    for stale in named_volumes(cloud, owner, volume).await? {
        if stale.tags.contains_key(RETURNED_TAG) && stale.attachments.is_empty() {
            cloud.delete_volume(&stale.id).await?;
        }
    }
    Ok(())
}

/// "37 min" for a data age in seconds.
pub fn minutes(seconds: i64) -> String {
    format!("{} min", (seconds.max(0) + 59) / 60)
}
