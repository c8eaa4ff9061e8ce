//! `cleanup --all`: everything this owner has in AWS, listed, then removed:
//! instances (marked, then terminated), spot requests, volumes (per their
//! box's `on_stop`; kept when the box is not in the config), images and DNS
//! records of the configured boxes.

use std::time::Duration;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    Cloud, CloudError, DnsRecord, Image, Instance, SpotRequest, SpotRequestState, Volume,
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
    /// Volumes with their fate: (volume, on_stop, why).
    pub volumes: Vec<(Volume, OnStop, String)>,
    /// Images.
    pub images: Vec<Image>,
    /// DNS records of configured boxes: (zone id, record).
    pub records: Vec<(String, DnsRecord)>,
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
        for (v, fate, why) in &self.volumes {
            let verb = match fate {
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
        for (_, r) in &self.records {
            l.push(format!(
                "delete DNS record {} ({})",
                r.name,
                r.values.join(", ")
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
        match configured {
            Some(vs) => volumes.push((
                v.clone(),
                vs.on_stop,
                format!("{}, on_stop = {:?}", vs.name, vs.on_stop),
            )),
            None => volumes.push((
                v.clone(),
                OnStop::Retain,
                "no box in the config claims it".into(),
            )),
        }
    }
    let images = cloud.images(&mine).await?;
    let mut records = Vec::new();
    for spec in config.boxes.values() {
        if let Some(dns) = &spec.dns
            && let Some(zone) = cloud.dns_zone(&dns.zone).await?
            && let Some(r) = cloud.dns_record(&zone, &dns.name).await?
        {
            records.push((zone, r));
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
    for (v, fate, _) in &inv.volumes {
        let Some(current) = cloud.volume(&v.id).await? else {
            continue;
        };
        for (instance, _) in &current.attachments {
            if *fate != OnStop::Retain {
                cloud.detach_volume(&v.id, instance).await?;
            }
        }
        match fate {
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
    for (zone, r) in &inv.records {
        cloud.delete_dns(zone, r).await?;
        done.push(format!("deleted DNS record {}", r.name));
    }
    Ok(done)
}
