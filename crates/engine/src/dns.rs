//! A box's name: its Route53 A record follows the live instance.
//!
//! Ownership is written beside the record, as external-dns does: a TXT
//! record `_spotkeeper.<name>` saying which owner and box the name belongs
//! to, created in the same change batch as the A record. spotkeeper changes
//! or deletes only a record it finds marked as its own; an unmarked one only
//! when the config says `dns.adopt = true` (it is then marked), another
//! owner's or box's never.

use spotkeeper_cloud::{
    Cloud, CloudError, DnsAction, DnsChange, DnsRecord, Instance, RecordType, fqdn,
};

use crate::config::{BoxSpec, DnsAddress, DnsSpec};

/// The prefix of every ownership mark.
const HERITAGE: &str = "heritage=spotkeeper";

/// Why the DNS step failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The hosted zone does not exist.
    #[error("hosted zone {0} not found in Route53 (dns.zone)")]
    NoZone(String),
    /// The instance has no address of the kind asked for.
    #[error("instance {id} has no {kind} address for {name}")]
    NoAddress {
        /// Instance.
        id: String,
        /// public / private.
        kind: &'static str,
        /// Record name.
        name: String,
    },
    /// The record is someone else's.
    #[error("DNS record {name} is not this box's to change: {by}")]
    NotOwned {
        /// Record name.
        name: String,
        /// Whose it is, and what to do about it.
        by: String,
    },
    /// An AWS call failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
}

/// Whose a name is, from its ownership mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Marked as this owner's and this box's.
    Ours,
    /// Marked as someone else's (the text says whose).
    Theirs(String),
    /// An A record without a mark: spotkeeper did not create it.
    Unmarked,
    /// Neither record nor mark.
    Free,
}

/// The name of the TXT record that marks `name` as spotkeeper's.
pub fn mark_name(name: &str) -> String {
    format!("_spotkeeper.{}", fqdn(name))
}

/// The mark's text for a box.
pub fn mark_text(owner: &str, box_name: &str) -> String {
    format!("{HERITAGE},spotkeeper/owner={owner},spotkeeper/box={box_name}")
}

/// Reads a mark: `(owner, box)` when it is spotkeeper's.
fn parse_mark(text: &str) -> Option<(String, String)> {
    let rest = text.strip_prefix(HERITAGE)?.strip_prefix(',')?;
    let (mut owner, mut box_name) = (None, None);
    for pair in rest.split(',') {
        match pair.split_once('=') {
            Some(("spotkeeper/owner", v)) => owner = Some(v.to_owned()),
            Some(("spotkeeper/box", v)) => box_name = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((owner?, box_name?))
}

/// The claim a mark (if any) and an A record (if any) make on the name.
pub fn claim(owner: &str, box_name: &str, mark: Option<&DnsRecord>, record: bool) -> Claim {
    let Some(mark) = mark else {
        return if record { Claim::Unmarked } else { Claim::Free };
    };
    let marks: Vec<_> = mark.values.iter().filter_map(|v| parse_mark(v)).collect();
    match marks.as_slice() {
        [(o, b)] if o == owner && b == box_name => Claim::Ours,
        [(o, b)] if o == owner => Claim::Theirs(format!("it belongs to box {b} of this owner")),
        [(o, _)] => Claim::Theirs(format!("it belongs to spotkeeper owner {o}")),
        _ => Claim::Theirs(format!(
            "{} holds a TXT record spotkeeper did not write",
            mark.name
        )),
    }
}

/// A box's record and its mark as they are now.
#[derive(Debug, Clone)]
struct Current {
    zone: String,
    record: Option<DnsRecord>,
    mark: Option<DnsRecord>,
    claim: Claim,
}

/// One record a box writes: in which zone (the private one or not) and
/// which of the instance's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The private hosted zone of the name (else the public one, or `zone_id`).
    pub private_zone: bool,
    /// Which address (public or private).
    pub address: DnsAddress,
}

/// The records a box writes: one, or with `address = "both"` the public
/// address in the public zone and the private one in the private zone of the
/// same name (split-horizon).
pub fn targets(dns: &DnsSpec) -> Vec<Target> {
    match dns.address {
        DnsAddress::Both => vec![
            Target {
                private_zone: false,
                address: DnsAddress::Public,
            },
            Target {
                private_zone: true,
                address: DnsAddress::Private,
            },
        ],
        address => vec![Target {
            private_zone: dns.private,
            address,
        }],
    }
}

async fn current(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    dns: &DnsSpec,
    target: Target,
) -> Result<Current, DnsError> {
    let zone = zone_for(cloud, dns, target.private_zone).await?;
    Ok(current_in(cloud, owner, box_name, dns, zone).await?)
}

/// The record and mark of the box's name in `zone`, and whose the name is.
async fn current_in(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    dns: &DnsSpec,
    zone: String,
) -> Result<Current, CloudError> {
    let record = cloud.dns_record(&zone, &dns.name, RecordType::A).await?;
    let mark = cloud
        .dns_record(&zone, &mark_name(&dns.name), RecordType::Txt)
        .await?;
    let claim = claim(owner, box_name, mark.as_ref(), record.is_some());
    Ok(Current {
        zone,
        record,
        mark,
        claim,
    })
}

/// The box's records marked as its own, each as (zone, record if any, the
/// batch deleting it and its mark): what `cleanup --all` removes. A zone
/// that does not exist holds nothing.
pub async fn owned(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    dns: &DnsSpec,
) -> Result<Vec<(String, Option<DnsRecord>, Vec<DnsChange>)>, CloudError> {
    let mut out = Vec::new();
    for target in targets(dns) {
        let zone = match &dns.zone_id {
            Some(id) => id.clone(),
            None => match cloud.dns_zone(&dns.zone, target.private_zone).await? {
                Some(z) => z,
                None => continue,
            },
        };
        let now = current_in(cloud, owner, box_name, dns, zone).await?;
        if now.claim == Claim::Ours {
            let changes = deletions(now.record.as_ref(), now.mark.as_ref());
            out.push((now.zone, now.record, changes));
        }
    }
    Ok(out)
}

/// What the record says and whether it matches the box.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DnsStatus {
    /// The record name.
    pub name: String,
    /// What it points at now.
    pub record: Option<DnsRecord>,
    /// The live instance's address (of the configured kind).
    pub instance_address: Option<String>,
    /// Whether the record points at exactly that address.
    pub matches: bool,
    /// Whether the name is marked as this box's.
    pub owned: bool,
    /// Whose it is when it is not this box's.
    pub owner_note: Option<String>,
}

/// The hosted zone id (`zone_id`, else the public or private zone of that
/// name), or an error naming the missing zone.
pub async fn zone_for(cloud: &dyn Cloud, dns: &DnsSpec, private: bool) -> Result<String, DnsError> {
    if let Some(id) = &dns.zone_id {
        return Ok(id.clone());
    }
    cloud.dns_zone(&dns.zone, private).await?.ok_or_else(|| {
        DnsError::NoZone(if private {
            format!("{} (private)", dns.zone)
        } else {
            dns.zone.clone()
        })
    })
}

/// The address a record of kind `address` holds for `instance`.
pub fn address_of(address: DnsAddress, instance: &Instance) -> Option<String> {
    match address {
        DnsAddress::Public | DnsAddress::Both => instance.public_ip.clone(),
        DnsAddress::Private => instance.private_ip.clone(),
    }
}

/// The address the box's (first) record should hold for `instance`.
pub fn address_for(dns: &DnsSpec, instance: &Instance) -> Option<String> {
    address_of(targets(dns)[0].address, instance)
}

/// Why the box may not take the name, if it may not.
fn refusal(dns: &DnsSpec, claim: &Claim) -> Option<DnsError> {
    let by = match claim {
        Claim::Ours | Claim::Free => return None,
        Claim::Unmarked if dns.adopt => return None,
        Claim::Unmarked => "spotkeeper did not create it; set adopt = true in dns to take it over \
                            (it is then marked as this box's)"
            .to_owned(),
        Claim::Theirs(by) => by.clone(),
    };
    Some(DnsError::NotOwned {
        name: fqdn(&dns.name),
        by,
    })
}

/// Checks, before a launch, that the zones exist and the box may write the name.
pub async fn check(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    dns: &DnsSpec,
) -> Result<(), DnsError> {
    for target in targets(dns) {
        let now = current(cloud, owner, box_name, dns, target).await?;
        if let Some(no) = refusal(dns, &now.claim) {
            return Err(no);
        }
    }
    Ok(())
}

/// Points the box's records at the instance's addresses, marking the name
/// as the box's in the same batch; returns the addresses. Refuses a name
/// that is not the box's (see the module) before changing any.
pub async fn point(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    dns: &DnsSpec,
    instance: &Instance,
) -> Result<String, DnsError> {
    let mut planned = Vec::new();
    for target in targets(dns) {
        let address = address_of(target.address, instance).ok_or_else(|| DnsError::NoAddress {
            id: instance.id.to_string(),
            kind: match target.address {
                DnsAddress::Private => "private",
                DnsAddress::Public | DnsAddress::Both => "public",
            },
            name: dns.name.clone(),
        })?;
        let now = current(cloud, owner, box_name, dns, target).await?;
        if let Some(no) = refusal(dns, &now.claim) {
            return Err(no);
        }
        planned.push((now, address));
    }
    let mut said = Vec::new();
    for (now, address) in planned {
        point_one(cloud, owner, box_name, dns, &now, &address).await?;
        said.push(address);
    }
    Ok(said.join(", "))
}

async fn point_one(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    dns: &DnsSpec,
    now: &Current,
    address: &str,
) -> Result<(), DnsError> {
    // A free name is created, so that a record someone writes meanwhile
    // fails the batch rather than being overwritten.
    let action = if now.claim == Claim::Free {
        DnsAction::Create
    } else {
        DnsAction::Upsert
    };
    let mut changes = vec![DnsChange {
        action,
        kind: RecordType::A,
        record: DnsRecord {
            name: fqdn(&dns.name),
            values: vec![address.to_owned()],
            ttl: dns.ttl,
        },
    }];
    if now.claim != Claim::Ours {
        changes.push(DnsChange {
            action,
            kind: RecordType::Txt,
            record: DnsRecord {
                name: mark_name(&dns.name),
                values: vec![mark_text(owner, box_name)],
                ttl: dns.ttl,
            },
        });
    }
    cloud.change_dns(&now.zone, &changes).await?;
    Ok(())
}

/// What [`remove`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Removal {
    /// The box's record (and its mark) are gone; the record as it was.
    Deleted(Option<DnsRecord>),
    /// The record is not the box's and was left as it is.
    LeftAlone(DnsRecord, String),
    /// There was nothing.
    Absent,
}

/// Deletes the box's records and their marks, each only if the name is
/// marked as the box's in that zone.
pub async fn remove(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    dns: &DnsSpec,
) -> Result<Vec<Removal>, DnsError> {
    let mut out = Vec::new();
    for target in targets(dns) {
        out.push(remove_one(cloud, owner, box_name, dns, target).await?);
    }
    Ok(out)
}

async fn remove_one(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
    dns: &DnsSpec,
    target: Target,
) -> Result<Removal, DnsError> {
    let now = current(cloud, owner, box_name, dns, target).await?;
    match (&now.claim, now.record) {
        (Claim::Ours, record) => {
            let changes = deletions(record.as_ref(), now.mark.as_ref());
            cloud.change_dns(&now.zone, &changes).await?;
            Ok(Removal::Deleted(record))
        }
        (_, None) => Ok(Removal::Absent),
        (Claim::Theirs(by), Some(r)) => Ok(Removal::LeftAlone(r, by.clone())),
        (Claim::Unmarked | Claim::Free, Some(r)) => Ok(Removal::LeftAlone(
            r,
            "spotkeeper did not create it".to_owned(),
        )),
    }
}

/// The batch that deletes a record and its mark as they are now.
pub fn deletions(record: Option<&DnsRecord>, mark: Option<&DnsRecord>) -> Vec<DnsChange> {
    let a = record.map(|r| DnsChange {
        action: DnsAction::Delete,
        kind: RecordType::A,
        record: r.clone(),
    });
    let txt = mark.map(|m| DnsChange {
        action: DnsAction::Delete,
        kind: RecordType::Txt,
        record: m.clone(),
    });
    a.into_iter().chain(txt).collect()
}

/// The box's record, whether it is the box's, and whether it points at the live instance.
pub async fn status(
    cloud: &dyn Cloud,
    owner: &str,
    spec: &BoxSpec,
    live: Option<&Instance>,
) -> Result<Option<DnsStatus>, DnsError> {
    let Some(dns) = &spec.dns else {
        return Ok(None);
    };
    // The first record is shown; every record must point at the instance.
    let mut matches = true;
    let mut first = None;
    for target in targets(dns) {
        let now = current(cloud, owner, &spec.name, dns, target).await?;
        let want = live.and_then(|i| address_of(target.address, i));
        matches &= match (&now.record, &want) {
            (Some(r), Some(a)) => r.values == [a.clone()],
            _ => false,
        };
        first.get_or_insert(now);
    }
    let Some(now) = first else {
        return Ok(None);
    };
    let instance_address = live.and_then(|i| address_for(dns, i));
    let owner_note = match &now.claim {
        Claim::Ours | Claim::Free => None,
        Claim::Unmarked => Some("not created by spotkeeper".to_owned()),
        Claim::Theirs(by) => Some(by.clone()),
    };
    Ok(Some(DnsStatus {
        name: dns.name.clone(),
        record: now.record,
        instance_address,
        matches,
        owned: now.claim == Claim::Ours,
        owner_note,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(values: &[&str]) -> DnsRecord {
        DnsRecord {
            name: "_spotkeeper.dev.example.com.".into(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            ttl: 60,
        }
    }

    #[test]
    fn the_mark_says_whose_the_name_is() {
        let ours = txt(&[&mark_text("team", "dev")]);
        assert_eq!(claim("team", "dev", Some(&ours), true), Claim::Ours);
        assert_eq!(claim("team", "dev", Some(&ours), false), Claim::Ours);
        assert!(
            matches!(claim("team", "web", Some(&ours), true), Claim::Theirs(b) if b.contains("box dev"))
        );
        assert!(
            matches!(claim("other", "dev", Some(&ours), true), Claim::Theirs(b) if b.contains("owner team"))
        );
        assert_eq!(claim("team", "dev", None, true), Claim::Unmarked);
        assert_eq!(claim("team", "dev", None, false), Claim::Free);
        // Someone else's TXT at the mark's name, or a forged second mark: not ours.
        assert!(matches!(
            claim("team", "dev", Some(&txt(&["v=spf1 -all"])), false),
            Claim::Theirs(_)
        ));
        let two = txt(&[&mark_text("team", "dev"), &mark_text("evil", "dev")]);
        assert!(matches!(
            claim("team", "dev", Some(&two), true),
            Claim::Theirs(_)
        ));
        // A prefix trick does not parse as a mark.
        assert_eq!(
            parse_mark("heritage=spotkeeperx,spotkeeper/owner=team,spotkeeper/box=dev"),
            None
        );
    }
}
