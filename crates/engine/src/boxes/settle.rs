//! What follows `running`: attach the box's volumes (or heal a missed
//! attach), associate its Elastic IP, wait for the ready check, point DNS at
//! it; and the duplicates and marks `up` and `stop` share.

use std::collections::HashSet;
use std::time::SystemTime;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{CloudError, ErrorKind, Instance, InstanceId};

use super::{BoxError, Ctx};
use crate::config::BoxSpec;
use crate::event_kind::EventKind;
use crate::persist;
use crate::ready;

/// What follows `running`: attach the volumes (or heal a missed attach),
/// associate the Elastic IP, wait for the ready check, point DNS at the box.
pub(super) async fn settle(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    mut instance: Instance,
    prepared: &[persist::Prepared],
    doomed: &HashSet<InstanceId>,
) -> Result<Instance, BoxError> {
    if prepared.is_empty() {
        for note in persist::ensure_attached(ctx.cloud, ctx.owner, spec, &instance, doomed).await? {
            ctx.progress.note(&note);
        }
    }
    for p in prepared {
        ctx.progress.start(&format!(
            "Attaching {} {} at {}",
            p.role.key(),
            p.volume.id,
            p.role.device()
        ));
        persist::attach(ctx.cloud, ctx.owner, p, &instance.id, doomed).await?;
        ctx.progress.finish("attached.");
    }
    if let Some(alloc) = &spec.elastic_ip {
        let reassociate = elastic_ip_reassociation(ctx, spec, alloc, Some(&instance.id)).await?;
        ctx.cloud
            .associate_address(alloc, &instance.id, reassociate)
            .await?;
        if let Some(fresh) = ctx.cloud.instance(&instance.id).await? {
            instance = fresh;
        }
        ctx.progress.note(&format!(
            "Associated {alloc} with {} ({})",
            instance.id,
            instance.public_ip.as_deref().unwrap_or("?")
        ));
    }
    check_ready(ctx, spec, &instance).await?;
    super::agent_install::install_agent(ctx, spec, &instance).await;
    // The box got ready on its data volume: from now on the boot script
    // never makes a filesystem on it.
    let used: Vec<String> = prepared
        .iter()
        .filter(|p| p.role == persist::Role::Data && p.volume.tags.contains_key(persist::NEW_TAG))
        .map(|p| p.volume.id.to_string())
        .collect();
    if !used.is_empty() {
        ctx.cloud.untag(&used, &[persist::NEW_TAG]).await?;
    }
    if let Some(dns) = &spec.dns {
        let address = crate::dns::point(ctx.cloud, ctx.owner, &spec.name, dns, &instance).await?;
        ctx.progress.note(&format!("DNS {} → {address}", dns.name));
        ctx.owned()
            .record_event(
                Some(&spec.name),
                EventKind::Dns,
                &format!("{} → {address} ({})", dns.name, instance.id),
            )
            .await?;
    }
    Ok(instance)
}

/// Whether associating the box's Elastic IP must take it from another
/// instance: from the box's own (old) instances, yes; from anyone else's only
/// when the config adopts the address, else an error (before the launch, when
/// `instance` is `None`).
pub(super) async fn elastic_ip_reassociation(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    alloc: &str,
    instance: Option<&InstanceId>,
) -> Result<bool, BoxError> {
    let holder = match ctx.cloud.address_holder(alloc).await? {
        None => return Ok(false),
        Some(h) if Some(&h) == instance => return Ok(false),
        Some(h) => h,
    };
    let ours = ctx.cloud.instance(&holder).await?.is_some_and(|h| {
        h.tag(tags::OWNER) == Some(ctx.owner) && h.tag(tags::BOX) == Some(spec.name.as_str())
    });
    if !ours && !spec.adopt_elastic_ip {
        return Err(BoxError::Cloud(CloudError::other(
            "AssociateAddress",
            ErrorKind::InvalidRequest,
            format!(
                "Elastic IP {alloc} is on {holder}, which is not box {}'s; \
                 set adopt_elastic_ip = true to let spotkeeper take it",
                spec.name
            ),
        )));
    }
    Ok(true)
}

/// Terminates the box's live instances other than `keep` (marked first).
pub(super) async fn terminate_extras(
    ctx: &Ctx<'_>,
    name: &str,
    live: &[Instance],
    keep: &Instance,
) -> Result<(), BoxError> {
    let extras: Vec<InstanceId> = live
        .iter()
        .filter(|i| i.id != keep.id)
        .map(|i| i.id.clone())
        .collect();
    if extras.is_empty() {
        return Ok(());
    }
    let list = extras
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    ctx.progress.note(&format!(
        "Box {name} has duplicate instances ({list}); keeping {} and terminating the rest",
        keep.id
    ));
    mark_stopped(
        ctx,
        &extras
            .iter()
            .map(|i| i.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .await?;
    ctx.cloud.terminate(&extras).await?;
    ctx.owned()
        .record_event(
            Some(name),
            EventKind::DuplicateTerminated,
            &format!("terminated {list}, kept {}", keep.id),
        )
        .await?;
    Ok(())
}

/// Marks instances and requests as stopped: no `up` or daemon takes them.
pub(super) async fn mark_stopped(ctx: &Ctx<'_>, ids: &[String]) -> Result<(), CloudError> {
    let when = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    ctx.cloud
        .tag(ids, &[(tags::STOPPED.to_owned(), when)])
        .await
}

/// Waits for the box's ready check.
async fn check_ready(ctx: &Ctx<'_>, spec: &BoxSpec, instance: &Instance) -> Result<(), BoxError> {
    if spec.ready == crate::config::ReadyCheck::None {
        return Ok(());
    }
    ctx.progress.start(&format!(
        "Waiting for server to come up ({})",
        ready::describe(&spec.ready, instance)
    ));
    match ready::wait_ready(&spec.ready, instance, ctx.timing.poll).await {
        Ok(()) => {
            ctx.progress.finish("Server is up!");
            Ok(())
        }
        Err(source) => {
            ctx.progress.finish("not ready");
            Err(BoxError::NotReady {
                id: instance.id.clone(),
                source,
            })
        }
    }
}
