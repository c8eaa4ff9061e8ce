//! `spotkeeper drill BOX [--rebalance | --fis ROLE_ARN] [--wait 10m]`: sends
//! the box's live instance a spot warning shaped like EventBridge's through
//! the box's own queue (or has AWS Fault Injection Service interrupt it for
//! real), follows the daemon's recovery and prints its timeline and the
//! verdict against `slo = { recover_within }` (see
//! `spotkeeper_engine::drill`). Exit 0 when the box recovered (within the
//! SLO), 1 when not.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::prelude::*;
use spotkeeper_cloud::{AwsCloud, FisDrill, FisRequest, Instance, InstanceState};
use spotkeeper_engine::config::{BoxSpec, Config};
use spotkeeper_engine::drill::{self, Step, Timeline, Verdict};
use spotkeeper_engine::event_kind::EventKind;
use spotkeeper_engine::store::Store;
use tokio::time::Instant;

use crate::Failure;
use crate::cli::Args;
use crate::{context, output};

/// How often the drill looks.
const POLL: Duration = Duration::from_millis(250);

pub async fn run(
    args: &Args,
    box_name: &str,
    rebalance: bool,
    wait: Option<&str>,
    fis: Option<&str>,
) -> Result<ExitCode, Failure> {
    if let Some(role) = fis
        && let Some(warning) =
            drill::fis_role(role).map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?
    {
        eprintln!("warning: {warning}");
    }
    let (config, spec, cloud) = super::open_box(args, box_name).await?;
    let wait = match wait {
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| Failure::Usage(anyhow::anyhow!("--wait {w:?}: {e}")))?,
        // Room for a slow recovery beyond the SLO, to say how late it was.
        None => spec.slo.map_or(Duration::from_secs(10 * 60), |s| {
            (s * 2).max(Duration::from_secs(60))
        }),
    };
    let path = context::state_path(args, &config)?;
    let (store, _) = context::open_store(&path, &config, Default::default()).await?;
    let old = spotkeeper_engine::boxes::live_instance(&cloud, &config.owner, box_name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("box {box_name} has no live instance: `up` it first"))?;
    if old.market != spotkeeper_cloud::Market::Spot {
        return Err(Failure::Failed(anyhow::anyhow!(
            "box {box_name} runs {} on {}: AWS sends spot warnings only to spot instances, \
             and the daemon ignores one for any other",
            old.market,
            old.id
        )));
    }
    let since = store
        .for_owner(&config.owner)
        .events(Some(box_name), 1)
        .await
        .context("reading the event log")?
        .first()
        .map_or(0, |e| e.id);
    let sent = Sent {
        store: &store,
        config: &config,
        box_name,
        old: &old,
    };
    let experiment = match fis {
        None => {
            sent.warning(&cloud, rebalance).await?;
            None
        }
        Some(role) => Some(sent.through_fis(&cloud, role).await?),
    };
    let timeline = follow(&cloud, &store, &config, &spec, &old, since, wait).await;
    if let Some(x) = &experiment {
        sent.fis_done(&cloud, x, timeline.as_ref().is_ok_and(Timeline::complete))
            .await;
    }
    let timeline = timeline?;
    let verdict = timeline.verdict(spec.slo);
    report(args, box_name, &timeline, &verdict)?;
    say(
        &store,
        &config,
        box_name,
        &format!("drill of {}: {}", old.id, verdict.describe()),
    )
    .await;
    Ok(if verdict.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What a drill starts from: the box, its live instance, where it says so.
struct Sent<'a> {
    store: &'a Store,
    config: &'a Config,
    box_name: &'a str,
    old: &'a Instance,
}

impl Sent<'_> {
    /// The box's event queue and its account (from the queue's URL).
    async fn queue(&self, cloud: &AwsCloud) -> Result<(String, String, Option<String>), Failure> {
        let (queue, _) = context::event_queue(cloud, self.config).await?;
        let url = cloud.queue_url(&queue).await?.ok_or_else(|| {
            anyhow::anyhow!("there is no event queue {queue}: run `spotkeeper setup`")
        })?;
        let account = spotkeeper_cloud::queue_account(&url);
        Ok((queue, url, account))
    }

    /// A warning of our own, shaped like EventBridge's, into the box's queue.
    async fn warning(&self, cloud: &AwsCloud, rebalance: bool) -> Result<(), Failure> {
        let (queue, url, account) = self.queue(cloud).await?;
        let sent = drill::Drill::new(
            self.old.id.as_str(),
            cloud.region(),
            account.as_deref(),
            rebalance,
        );
        let what = sent.what;
        let line = format!("{what} for {} sent to {queue}", self.old.id);
        say(
            self.store,
            self.config,
            self.box_name,
            &format!("drill: {line} (event {})", sent.id),
        )
        .await;
        cloud.send_message(&url, &sent.body).await?;
        eprintln!("Drill of box {}: {line}", self.box_name);
        Ok(())
    }

    /// A real interruption: FIS interrupts the instance; EC2 sends the
    /// warning (EventBridge carries it to the box's queue).
    async fn through_fis(&self, cloud: &AwsCloud, role: &str) -> Result<FisDrill, Failure> {
        let (queue, _, account) = self.queue(cloud).await?;
        let account = account.ok_or_else(|| {
            anyhow::anyhow!(
                "the event queue {queue}'s URL names no account: FIS needs the instance's ARN"
            )
        })?;
        let id = format!(
            "{}{}",
            drill::DRILL_PREFIX,
            spotkeeper_cloud::model::random_token()
        );
        let tags = vec![
            (tags::OWNER.to_owned(), self.config.owner.clone()),
            (tags::BOX.to_owned(), self.box_name.to_owned()),
            ("spotkeeper:drill".to_owned(), id.clone()),
        ];
        let description = format!(
            "spotkeeper drill of box {}: interrupt {}",
            self.box_name, self.old.id
        );
        let started = cloud
            .fis_interrupt(&FisRequest {
                instance_arn: &drill::instance_arn(cloud.region(), &account, self.old.id.as_str()),
                role_arn: role,
                description: &description,
                tags: &tags,
                client_token: &id,
            })
            .await?;
        let line = format!(
            "FIS experiment {} (template {}) interrupts {} in two minutes; its warning goes to {queue}",
            started.experiment, started.template, self.old.id
        );
        say(
            self.store,
            self.config,
            self.box_name,
            &format!("drill: {line}"),
        )
        .await;
        eprintln!("Drill of box {}: {line}", self.box_name);
        Ok(started)
    }

    /// After the drill: why FIS failed, if the recovery is incomplete and it
    /// did; the template goes either way.
    async fn fis_done(&self, cloud: &AwsCloud, x: &FisDrill, complete: bool) {
        if !complete {
            match cloud.fis_experiment_state(&x.experiment).await {
                Ok((state, reason)) => eprintln!(
                    "FIS experiment {}: {state}{}",
                    x.experiment,
                    reason.map(|r| format!(" ({r})")).unwrap_or_default()
                ),
                Err(e) => eprintln!("FIS experiment {}: {e}", x.experiment),
            }
        }
        if let Err(e) = cloud.delete_fis_template(&x.template).await {
            eprintln!(
                "warning: the experiment template {} is left: {e} (delete it with \
                 `aws fis delete-experiment-template --id {}`)",
                x.template, x.template
            );
        }
    }
}

async fn say(store: &Store, config: &Config, box_name: &str, what: &str) {
    if let Err(e) = store
        .for_owner(&config.owner)
        .record_event(Some(box_name), EventKind::Drill, what)
        .await
    {
        tracing::warn!("cannot record the drill: {e}");
    }
}

/// Watches the box until every step was seen or `wait` passed.
async fn follow(
    cloud: &AwsCloud,
    store: &Store,
    config: &Config,
    spec: &BoxSpec,
    old: &Instance,
    since: i64,
    wait: Duration,
) -> Result<Timeline, Failure> {
    let volumes = spec.data_volume.is_some() || spec.root_volume.is_some();
    let address = spec.dns.is_some() || spec.elastic_ip.is_some();
    let mut timeline = Timeline::new(volumes, address, spec.on_interruption.is_some());
    let started = Instant::now();
    let mut new: Option<Instance> = None;
    while !timeline.complete() && started.elapsed() < wait {
        let at = started.elapsed();
        for e in store
            .for_owner(&config.owner)
            .events(Some(&spec.name), 100)
            .await
            .context("reading the event log")?
            .iter()
            .filter(|e| e.id > since)
        {
            match e.kind.as_str() {
                "launch" => timeline.saw(Step::Requested, at),
                "replaced" => timeline.saw(Step::Ready, at),
                "hook" | "hook-failed" if e.message.contains(old.id.as_str()) => {
                    timeline.saw(Step::Hook, at)
                }
                "dns"
                    if new
                        .as_ref()
                        .is_some_and(|n| e.message.contains(n.id.as_str())) =>
                {
                    timeline.saw(Step::Address, at)
                }
                _ => {}
            }
        }
        let instances = cloud
            .instances(&spotkeeper_engine::boxes::box_filter(
                &config.owner,
                &spec.name,
            ))
            .await?;
        if let Some(n) = instances
            .iter()
            .find(|i| i.id != old.id && i.state == InstanceState::Running)
        {
            timeline.saw(Step::Running, at);
            new = Some(n.clone());
        }
        if instances
            .iter()
            .find(|i| i.id == old.id)
            .is_none_or(|i| !i.state.is_live())
        {
            timeline.saw(Step::OldGone, at);
        }
        if let Some(n) = &new {
            if volumes && attached(cloud, config, spec, n).await? {
                timeline.saw(Step::Volumes, at);
            }
            if spec.dns.is_none()
                && let Some(alloc) = &spec.elastic_ip
                && cloud.address_holder(alloc).await?.as_ref() == Some(&n.id)
            {
                timeline.saw(Step::Address, at);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(timeline)
}

/// Whether every volume of the box is attached to `instance`.
async fn attached(
    cloud: &AwsCloud,
    config: &Config,
    spec: &BoxSpec,
    instance: &Instance,
) -> Result<bool, Failure> {
    for (role, vs) in spotkeeper_engine::persist::volume_specs(spec) {
        let v = spotkeeper_engine::persist::find(cloud, &config.owner, &spec.name, role, vs)
            .await
            .map_err(anyhow::Error::from)?;
        if !v.is_some_and(|v| v.attachments.iter().any(|(i, _)| i == &instance.id)) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn report(
    args: &Args,
    box_name: &str,
    timeline: &Timeline,
    verdict: &Verdict,
) -> Result<(), Failure> {
    if args.json {
        let steps: Vec<serde_json::Value> = timeline
            .steps
            .iter()
            .map(|(s, at)| serde_json::json!({ "step": s, "seconds": at.map(|d| d.as_secs_f64()) }))
            .collect();
        output::print_json(&serde_json::json!({
            "box": box_name,
            "steps": steps,
            "verdict": verdict,
            "passed": verdict.passed(),
        }))?;
        return Ok(());
    }
    println!("  {:>8}  warning sent", "+0.0 s");
    let mut seen: Vec<_> = timeline.steps.iter().filter(|(_, w)| w.is_some()).collect();
    seen.sort_by_key(|(_, w)| *w);
    for (step, at) in seen {
        let at = at.expect("seen");
        println!(
            "  {:>8}  {}",
            format!("+{:.1} s", at.as_secs_f64()),
            step.describe()
        );
    }
    for (step, _) in timeline.steps.iter().filter(|(_, w)| w.is_none()) {
        println!("  {:>8}  {} (not seen)", "-", step.describe());
    }
    println!("{}", verdict.describe());
    Ok(())
}
