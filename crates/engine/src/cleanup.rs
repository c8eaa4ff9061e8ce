//! `cleanup --all`: everything this owner has in AWS, listed, then removed:
//! instances (marked, then terminated), spot requests, volumes (per their
//! box's `on_stop`; kept when the box is not in the config), images and DNS
//! records of the configured boxes.

use std::time::Duration;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    Cloud, CloudError, DnsChange, DnsRecord, Image, Instance, SpotRequest, SpotRequestState,
    Volume, fqdn,
};

use crate::boxes::owner_filter;
use crate::config::{Config, OnStop};
use crate::persist::VOLUME_TAG;

/// What `cleanup --all` would remove.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Instances not yet terminated.
    pub instances: Vec<Instance>,
    /// Open or active spot requests.
    pub spot_requests: Vec<SpotRequest>,
    /// Volumes with their fate.
    pub volumes: Vec<VolumeFate>,
    /// Images.
    pub images: Vec<Image>,
    /// DNS names of configured boxes marked as theirs.
    pub records: Vec<OwnedName>,
}

/// A volume and what `cleanup` does with it.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeFate {
    /// The volume.
    pub volume: Volume,
    /// Its box's `on_stop` (retain when no box claims it).
    pub on_stop: OnStop,
    /// Stop snapshots to keep, with `on_stop = "snapshot"`.
    pub keep: usize,
    /// Why, for the person.
    pub why: String,
}

/// A box's DNS name that is marked as the box's: the record and its mark.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedName {
    /// Hosted zone id.
    pub zone: String,
    /// The name.
    pub name: String,
    /// The A record, if there is one.
    pub record: Option<DnsRecord>,
    /// The batch that deletes the record and its mark.
    pub deletions: Vec<DnsChange>,
}

impl Inventory {
    /// Whether there is nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.spot_requests.is_empty()
            && self.volumes.is_empty()
            && self.images.is_empty()
            && self.records.is_empty()
    }

    /// One line per resource, for the person to confirm.
    pub fn lines(&self) -> Vec<String> {
        let mut l = Vec::new();
        for i in &self.instances {
            let of = match (i.tag(tags::BOX), i.tag(tags::POOL)) {
                (Some(b), _) => format!("box {b}"),
                (None, Some(p)) => format!("pool {p}"),
                (None, None) => "no box".to_owned(),
            };
            l.push(format!("terminate instance {} ({of}, {})", i.id, i.state));
        }
        for r in &self.spot_requests {
            l.push(format!(
                "cancel spot request {} ({})",
                r.id,
                r.state.as_str()
            ));
        }
        for VolumeFate {
            volume: v,
            on_stop,
            why,
            ..
        } in &self.volumes
        {
            let verb = match on_stop {
                OnStop::Retain => "keep",
                OnStop::Snapshot => "snapshot, then delete",
                OnStop::Delete => "delete",
            };
            l.push(format!("{verb} volume {} ({why})", v.id));
        }
        for i in &self.images {
            l.push(format!(
                "deregister image {} ({}) and its snapshots",
                i.id,
                i.name.as_deref().unwrap_or("-")
            ));
        }
        for n in &self.records {
            l.push(format!(
                "delete DNS record {} ({}) and its ownership mark",
                n.name,
                n.record
                    .as_ref()
                    .map_or("-".to_owned(), |r| r.values.join(", "))
            ));
        }
        l
    }
}

/// Lists what this owner has.
pub async fn inventory(cloud: &dyn Cloud, config: &Config) -> Result<Inventory, CloudError> {
    let mine = owner_filter(&config.owner);
    let instances = cloud
        .instances(&mine)
        .await?
        .into_iter()
        .filter(|i| !i.state.is_gone())
        .collect();
    let spot_requests = cloud
        .spot_requests(&mine)
        .await?
        .into_iter()
        .filter(|r| matches!(r.state, SpotRequestState::Open | SpotRequestState::Active))
        .collect();
    let mut volumes = Vec::new();
    for v in cloud.volumes(&mine).await? {
        let name = v.tags.get(VOLUME_TAG).cloned();
        let spec = v.tags.get(tags::BOX).and_then(|b| config.boxes.get(b));
        let configured = spec.and_then(|s| {
            [s.data_volume.as_ref(), s.root_volume.as_ref()]
                .into_iter()
                .flatten()
                .find(|vs| Some(&vs.name) == name.as_ref())
        });
        volumes.push(match configured {
            Some(vs) => VolumeFate {
                volume: v.clone(),
                on_stop: vs.on_stop,
                keep: vs.keep,
                why: format!("{}, on_stop = {:?}", vs.name, vs.on_stop),
            },
            None => VolumeFate {
                volume: v.clone(),
                on_stop: OnStop::Retain,
                keep: crate::config::DEFAULT_STOP_SNAPSHOTS,
                why: "no box in the config claims it".into(),
            },
        });
    }
    let images = cloud.images(&mine).await?;
    let mut records = Vec::new();
    // Only names marked as the box's: a record spotkeeper did not write stays.
    for spec in config.boxes.values() {
        let Some(dns) = &spec.dns else { continue };
        for (zone, record, deletions) in
            crate::dns::owned(cloud, &config.owner, &spec.name, dns).await?
        {
            records.push(OwnedName {
                zone,
                name: fqdn(&dns.name),
                record,
                deletions,
            });
        }
    }
    Ok(Inventory {
        instances,
        spot_requests,
        volumes,
        images,
        records,
    })
}

/// Removes what the inventory lists; returns what was done, one line each.
pub async fn remove(cloud: &dyn Cloud, inv: &Inventory) -> Result<Vec<String>, CloudError> {
    let mut done = Vec::new();
    let ids: Vec<String> = inv
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .chain(inv.spot_requests.iter().map(|r| r.id.to_string()))
        .collect();
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    cloud.tag(&ids, &[(tags::STOPPED.to_owned(), when)]).await?;
    let requests: Vec<_> = inv.spot_requests.iter().map(|r| r.id.clone()).collect();
    cloud.cancel_spot_requests(&requests).await?;
    done.extend(requests.iter().map(|r| format!("cancelled {r}")));
    let instances: Vec<_> = inv.instances.iter().map(|i| i.id.clone()).collect();
    cloud.terminate(&instances).await?;
    done.extend(instances.iter().map(|i| format!("terminated {i}")));
    // Volumes are detached once their instances are terminated.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10 * 60);
    for id in &instances {
        while let Some(i) = cloud.instance(id).await? {
            if i.state == spotkeeper_cloud::InstanceState::Terminated
                || tokio::time::Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    for fate in &inv.volumes {
        let v = &fate.volume;
        let Some(current) = cloud.volume(&v.id).await? else {
            continue;
        };
        for (instance, _) in &current.attachments {
            if fate.on_stop != OnStop::Retain {
                cloud.detach_volume(&v.id, instance).await?;
            }
        }
        match fate.on_stop {
            OnStop::Retain => done.push(format!("kept {}", v.id)),
            OnStop::Snapshot => {
                let mut t: Vec<(String, String)> = v
                    .tags
                    .iter()
                    .filter(|(k, _)| k.starts_with("spotkeeper:") || k.as_str() == tags::NAME)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                t.push((crate::persist::PURPOSE_TAG.to_owned(), "stop".to_owned()));
                let snap = cloud.snapshot_volume(&v.id, &t).await?;
                cloud.delete_volume(&v.id).await?;
                done.push(format!("saved {} as {snap} and deleted it", v.id));
                if let (Some(name), Some(owner)) = (v.tags.get(VOLUME_TAG), v.tags.get(tags::OWNER))
                {
                    for old in
                        crate::persist::prune_stop_snapshots(cloud, owner, name, fate.keep, &snap)
                            .await?
                    {
                        done.push(format!("deleted older stop snapshot {old}"));
                    }
                }
            }
            OnStop::Delete => {
                cloud.delete_volume(&v.id).await?;
                done.push(format!("deleted {}", v.id));
            }
        }
    }
    for i in &inv.images {
        cloud.delete_image(&i.id).await?;
        done.push(format!("deregistered {}", i.id));
    }
    for n in &inv.records {
        cloud.change_dns(&n.zone, &n.deletions).await?;
        done.push(format!("deleted DNS record {}", n.name));
    }
    Ok(done)
}
