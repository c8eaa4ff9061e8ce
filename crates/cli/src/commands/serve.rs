//! `spotkeeper serve`: the daemon and its HTTP API. SIGTERM or SIGINT: stop
//! taking new work, drop what is in flight (the next daemon resumes it from
//! AWS and the state file), exit 0 within seconds; a second signal exits at
//! once.

use std::process::ExitCode;
use std::sync::Arc;

use spotkeeper_engine::api::{self, ApiState};
use spotkeeper_engine::config::Config;
use spotkeeper_engine::daemon::{CancellationToken, Daemon, SqsQueue};
use spotkeeper_engine::event_kind::EventKind;
use spotkeeper_engine::store::{Connections, Store};
use tokio::signal::unix::{SignalKind, signal};

use crate::Failure;
use crate::cli::Args;
use crate::context;

/// Exit status after a second signal: 128 + SIGINT, as shells report it.
const INTERRUPTED: i32 = 130;

pub async fn run(args: &Args, insecure_listen: bool) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, true)?;
    // The token travels in every request: in clear text only over loopback.
    if !config.api_listen.ip().is_loopback() && !insecure_listen {
        return Err(Failure::Usage(anyhow::anyhow!(
            "[api] listen {} is not a loopback address and the API speaks plain HTTP: \
             the token would cross the network in clear text. Put a TLS proxy in front and \
             pass --insecure-listen, or listen on 127.0.0.1",
            config.api_listen
        )));
    }
    if !config.api_listen.ip().is_loopback() {
        tracing::warn!(
            "the API listens on {} without TLS (--insecure-listen)",
            config.api_listen
        );
    }
    let cloud = context::connect(&config).await?;
    let state = context::state_path(args, &config)?;
    let connections = Connections::daemon(config.max_tasks);
    let (store, locks) = context::open_store(&state, &config, connections).await?;
    let token_file = state.with_file_name("api-token");
    let token = api::load_or_make_token(
        &config,
        std::env::var("SPOTKEEPER_API_TOKEN").ok(),
        &token_file,
    )
    .map_err(|e| {
        Failure::Failed(anyhow::anyhow!(
            "cannot read or make the API token file {}: {e}",
            token_file.display()
        ))
    })?;
    // Sinks with a secret_env that is not set: refused before anything runs.
    let deliverers = config
        .notify
        .iter()
        .map(|sink| spotkeeper_engine::notify::Deliverer::new(sink.clone(), &config.owner))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Usage(anyhow::anyhow!("{e}")))?;
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .map_err(|e| {
            Failure::Failed(anyhow::anyhow!(
                "cannot listen on {}: {e}",
                config.api_listen
            ))
        })?;

    let stop = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot watch SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot watch SIGINT: {e}")))?;
    let signalled = stop.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping: dropping the work in flight; the next daemon resumes it");
        signalled.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(INTERRUPTED);
    });

    let preferred = std::env::var("SPOTKEEPER_DAEMON_ID")
        .ok()
        .filter(|id| !id.trim().is_empty());
    let (id, _identity) =
        spotkeeper_engine::daemon::leases::identity(&store, &config.owner, preferred.as_deref())
            .await
            .map_err(|e| Failure::Usage(anyhow::anyhow!("{e}")))?;
    check_connections(&store, &config, &id, connections).await?;
    warn_of_other_owners(&store, &config).await;
    let aws = config.aws.clone();
    let daemon = Daemon::new(&cloud, &store, &config, &locks)
        .with_id(id)
        .with_regions(Arc::new(move |region| {
            let mut aws = aws.clone();
            aws.region = Some(region);
            Box::pin(async move {
                Ok(Arc::new(spotkeeper_cloud::AwsCloud::connect(&aws).await?)
                    as Arc<dyn spotkeeper_cloud::Cloud>)
            })
        }))
        .with_demand(Box::new(
            spotkeeper_engine::pools::demand::LiveDemand::guarded_by(
                Some(Arc::new(cloud.clone())),
                config.api_demand_hosts.clone(),
            ),
        ));
    let api_state = ApiState {
        cloud: Arc::new(cloud.clone()),
        store: store.clone(),
        config: Arc::new(config.clone()),
        token,
        lock_dir: locks.clone(),
        wake: daemon.waker(),
        metrics: daemon.metrics(),
        daemon_id: daemon.id().to_owned(),
        health: daemon.health(),
        dns_cache: Default::default(),
        seen: daemon.seen(),
        queue: Default::default(),
    };
    let queue_slot = api_state.queue.clone();
    tracing::info!(
        state = %context::database_url(&config)?.map_or_else(|| state.display().to_string(), |u| u.to_string()),
        daemon = %daemon.id(),
        api = %config.api_listen,
        "spotkeeper daemon started (owner {}; API token in [api] token, $SPOTKEEPER_API_TOKEN or {})",
        config.owner,
        token_file.display()
    );
    // The API and /healthz first: a daemon that cannot reach AWS yet says
    // so there rather than exiting into a crash loop.
    let daemon_side = async {
        let Some(queue) = queue_when_aws_answers(&cloud, &config, &daemon, &stop).await? else {
            return Ok::<_, Failure>(tokio::task::JoinSet::new());
        };
        let sinks = notify(&daemon, &store, deliverers, &stop);
        let queue: Arc<dyn spotkeeper_cloud::EventQueue> = Arc::new(queue);
        let _ = queue_slot.set(queue.clone());
        let away = away_queues(&config).await;
        daemon.run_with(queue.as_ref(), &away, stop.clone()).await;
        Ok(sinks)
    };
    let api = api::serve(listener, api_state, stop.clone());
    tokio::pin!(daemon_side, api);
    let mut sinks = tokio::select! {
        // Stopped (the API follows), or a failure that ends `serve`.
        ran = &mut daemon_side => {
            let sinks = ran?;
            if let Err(e) = api.await {
                tracing::warn!("the API server stopped with an error: {e}");
            }
            sinks
        }
        served = &mut api => {
            if let Err(e) = served {
                tracing::warn!("the API server stopped with an error: {e}");
            }
            daemon_side.await?
        }
    };
    // The sinks stop with the rest; a delivery under way gets a moment to
    // be recorded, so the next daemon does not send it again.
    let stopped = async { while sinks.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(2), stopped)
        .await
        .is_err()
    {
        tracing::warn!("a notification sink did not stop within 2 s; its delivery may repeat");
    }
    tracing::info!("spotkeeper daemon stopped");
    Ok(ExitCode::SUCCESS)
}

/// The event queues `setup` made in the boxes' other regions (where a box
/// that failed over hears its spot warnings); one that cannot be opened is
/// said and left out (the passes still see the box's instance go).
async fn away_queues(config: &Config) -> Vec<Arc<dyn spotkeeper_cloud::EventQueue>> {
    let regions = context::other_regions(config, None, |b| {
        spotkeeper_engine::failover::blocked(b).is_none()
    });
    let mut queues: Vec<Arc<dyn spotkeeper_cloud::EventQueue>> = Vec::new();
    for region in regions {
        let opened = async {
            let mut aws = config.aws.clone();
            aws.region = Some(region.clone());
            let there = spotkeeper_cloud::AwsCloud::connect(&aws).await?;
            let (name, _) = context::event_queue(&there, config).await?;
            SqsQueue::open(&there, &name).await
        };
        match opened.await {
            Ok(q) => {
                tracing::info!(region = %region, "reading the event queue of {region} too");
                queues.push(Arc::new(q));
            }
            Err(e) => tracing::warn!(
                "the event queue in {region} cannot be read ({e}): a box that fails over there \
                 is replaced when a pass sees its instance gone, not at its warning"
            ),
        }
    }
    queues
}

/// The event queue, once AWS answers. Until then `/healthz` says the daemon
/// is degraded and why (one `aws-unreachable` event), and it asks again
/// with a growing pause; a queue AWS says does not exist stops `serve`
/// (`setup` makes it). `None`: stopped while waiting.
async fn queue_when_aws_answers(
    cloud: &spotkeeper_cloud::AwsCloud,
    config: &spotkeeper_engine::config::Config,
    daemon: &Daemon<'_>,
    stop: &CancellationToken,
) -> Result<Option<SqsQueue>, Failure> {
    let mut failures = 0u32;
    loop {
        let opened = async {
            let (name, legacy) = context::event_queue(cloud, config).await?;
            if legacy {
                tracing::warn!("{}", context::legacy_queue_note(config));
            }
            tracing::info!(queue = %name, "reading the event queue");
            SqsQueue::open(cloud, &name).await
        };
        let err = match opened.await {
            Ok(queue) => return Ok(Some(queue)),
            Err(e) if e.kind == spotkeeper_cloud::ErrorKind::NotFound => return Err(e.into()),
            Err(e) => e,
        };
        failures += 1;
        let pause = std::time::Duration::from_secs((1u64 << failures.min(5)).min(30));
        tracing::warn!(
            "the event queue cannot be read ({failures} in a row; next try in {pause:?}): {err}"
        );
        daemon
            .unreachable(&format!("the event queue cannot be read: {err}"))
            .await;
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Says at start when daemons of another owner use this database: the
/// configs then name two installations (easy to get: `setup` writes a
/// generated owner into the copy it runs on, another machine's copy keeps
/// none), which act on their own boxes only and ignore each other's events.
async fn warn_of_other_owners(
    store: &spotkeeper_engine::store::Store,
    config: &spotkeeper_engine::config::Config,
) {
    let since = spotkeeper_engine::store::unix_now()
        .saturating_sub(i64::try_from(config.lease.as_secs() * 3).unwrap_or(i64::MAX))
        * 1000;
    let others = match store
        .for_owner(&config.owner)
        .other_owners_daemons(since)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("cannot read the daemons of this database: {e}");
            return;
        }
    };
    for (owner, id, host) in others {
        let what = format!(
            "daemon {id} on {host} uses this database as owner {owner:?}, this one as owner {:?}: \
             they are two installations that ignore each other's boxes and events; if they are \
             meant to be one, give every config the same owner",
            config.owner
        );
        tracing::warn!("{what}");
        if let Err(e) = store
            .for_owner(&config.owner)
            .record_event(None, EventKind::OwnerMismatch, &what)
            .await
        {
            tracing::warn!("cannot record an event: {e}");
        }
    }
}

/// One task per sink (`serve` waits for them at shutdown): a
/// receiver that hangs delays only its own notifications.
fn notify(
    daemon: &Daemon<'_>,
    store: &spotkeeper_engine::store::Store,
    deliverers: Vec<spotkeeper_engine::notify::Deliverer>,
    stop: &CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut sinks = tokio::task::JoinSet::new();
    for mut d in deliverers {
        d.gate = Some(daemon.fleet_gate());
        let (store, metrics, stop) = (store.clone(), daemon.metrics(), stop.clone());
        sinks.spawn(async move {
            loop {
                match d
                    .run(store.clone(), metrics.clone(), stop.cancelled())
                    .await
                {
                    Ok(()) => break,
                    // The state store failed: the cursor there is the truth, start again from it.
                    Err(e) => tracing::error!(sink = %d.name(), "notifications paused: {e}"),
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                }
            }
        });
    }
    sinks
}

/// Refuses to start (PostgreSQL) when what this daemon may open and what
/// the live daemons on the database may open do not fit in the server's
/// `max_connections`: under a wave every one of them may use all of its
/// connections, and the server refuses the next ("too many clients") in
/// the middle of a launch.
async fn check_connections(
    store: &Store,
    config: &Config,
    id: &str,
    mine: Connections,
) -> Result<(), Failure> {
    let failed = |e: spotkeeper_engine::store::StoreError| {
        Failure::Failed(anyhow::anyhow!(
            "reading the database's connection limit: {e}"
        ))
    };
    let lease = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
    let since = store
        .clock_ms()
        .await
        .map_err(failed)?
        .saturating_sub(lease);
    let Some(budget) = store
        .check_connections((&config.owner, id), since)
        .await
        .map_err(failed)?
    else {
        return Ok(());
    };
    let allowed = budget.max_connections - budget.reserved;
    if budget.fits() {
        tracing::info!(
            mine = budget.mine,
            others = budget.others,
            allowed,
            "PostgreSQL connections: this daemon may open {}, the {} other live daemon(s) {}, the server allows {allowed}",
            budget.mine,
            budget.other_daemons,
            budget.others
        );
        return Ok(());
    }
    Err(Failure::Usage(anyhow::anyhow!(
        "not starting: this daemon may open {} connections to PostgreSQL ({} for queries, \
         [daemon] max_tasks {} + 2 for box locks, {} for the wake-up listener) and the {} other \
         live daemon(s) on the database {}: {} in all, over the {allowed} the server allows \
         (max_connections {} less {} reserved for superusers). Each daemon needs max_tasks + {}: \
         lower [daemon] max_tasks, or raise max_connections on the server",
        budget.mine,
        mine.queries,
        config.max_tasks,
        mine.listener,
        budget.other_daemons,
        budget.others,
        budget.mine + budget.others,
        budget.max_connections,
        budget.reserved,
        (mine.total() as usize).saturating_sub(config.max_tasks),
    )))
}
