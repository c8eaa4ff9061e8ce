//! Settling a running box: its volumes attached and its DNS record pointing
//! at it, healed level-triggered (a crash after a launch may have left
//! either undone), and what the daemon remembers of it: which instance was
//! settled lately (a pass makes no call for it until
//! [`SETTLE_AGAIN_AFTER`]), and the DNS record as it was left (the API shows
//! that instead of asking Route 53).

use std::collections::HashSet;

use spotkeeper_cloud::{Instance, InstanceId};

use super::Daemon;
use super::boxes::SETTLE_AGAIN_AFTER;
use super::tasks::{Done, TaskError, TaskResult};
use crate::boxes::BoxError;
use crate::config::BoxSpec;
use crate::event_kind::EventKind;

impl Daemon<'_> {
    /// Level-triggered healing of a running box: a crash after the launch
    /// may have left the volume unattached or the name pointing elsewhere.
    pub(super) async fn settle(&self, spec: &BoxSpec, instance: &Instance) -> TaskResult {
        let name = spec.name.as_str();
        match self.heal(spec, instance).await {
            Ok(dns) => {
                self.settled(spec, &instance.id);
                // What the heal found, when it left the name alone.
                if let Some(dns) = dns {
                    self.seen.set_dns(name, dns);
                }
                self.remember_launch(spec, &instance.id).await;
            }
            Err(e) if self.stopped_by_fence(Some(name), &e).await => return Err(TaskError::Quiet),
            Err(e) => return Err(TaskError::failed(EventKind::HealFailed, e)),
        }
        // A settled box's scheduled image, in the same task (the box's one).
        if spec.images.every.is_some() && self.image_check_due(name) {
            return self.image(spec, instance).await;
        }
        Ok(Done::default())
    }

    /// Returns the DNS record's state when it was left as found (it
    /// matched, or the instance has no address to point it at).
    async fn heal(
        &self,
        spec: &BoxSpec,
        instance: &Instance,
    ) -> Result<Option<super::seen::DnsSeen>, BoxError> {
        let doomed: HashSet<InstanceId> = self
            .owned()
            .doomed()
            .await?
            .into_iter()
            .map(InstanceId::new)
            .collect();
        for note in crate::persist::ensure_attached(
            &self.cloud,
            &self.config.owner,
            spec,
            instance,
            &doomed,
        )
        .await?
        {
            self.record(Some(&spec.name), EventKind::Healed, &note)
                .await;
        }
        let Some(status) =
            crate::dns::status(&self.cloud, &self.config.owner, spec, Some(instance)).await?
        else {
            return Ok(None);
        };
        if status.matches || status.instance_address.is_none() {
            return Ok(Some(super::seen::DnsSeen {
                instance: instance.id.clone(),
                name: status.name,
                matches: status.matches,
                owned: status.owned,
            }));
        }
        // The name moves only to an instance that answers (a restart may
        // have dropped the replacement's own ready wait).
        crate::ready::wait_ready(&spec.ready, instance, self.timing.poll)
            .await
            .map_err(|source| BoxError::NotReady {
                id: instance.id.clone(),
                source,
            })?;
        let dns = spec.dns.as_ref().expect("status implies dns");
        let address =
            crate::dns::point(&self.cloud, &self.config.owner, &spec.name, dns, instance).await?;
        self.record(
            Some(&spec.name),
            EventKind::Healed,
            &format!("DNS {} → {address}", dns.name),
        )
        .await;
        Ok(None)
    }

    pub(super) fn settled_instance(&self, name: &str) -> Option<InstanceId> {
        let m = self.lock_memory();
        m.settled
            .get(name)
            .filter(|(_, at)| at.elapsed() < SETTLE_AGAIN_AFTER)
            .map(|(id, _)| id.clone())
    }

    /// `spec`'s box runs settled on `id`: its volumes attached and its DNS
    /// record pointing there (kept for the API, which then asks Route 53
    /// nothing).
    pub(super) fn settled(&self, spec: &BoxSpec, id: &InstanceId) {
        self.lock_memory()
            .settled
            .insert(spec.name.clone(), (id.clone(), tokio::time::Instant::now()));
        if let Some(dns) = &spec.dns {
            self.seen.set_dns(
                &spec.name,
                super::seen::DnsSeen {
                    instance: id.clone(),
                    name: dns.name.clone(),
                    matches: true,
                    owned: true,
                },
            );
        }
    }
}
