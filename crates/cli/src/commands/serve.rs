//! `spotkeeper serve`: the daemon and its HTTP API. SIGTERM or SIGINT: stop
//! taking new work, drop what is in flight (the next daemon resumes it from
//! AWS and the state file), exit 0 within seconds; a second signal exits at
//! once.

use std::process::ExitCode;
use std::sync::Arc;

use spotkeeper_engine::api::{self, ApiState};
use spotkeeper_engine::daemon::{Daemon, SqsQueue};
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
    let (store, locks) = context::open_store(&state, &config).await?;
    let (queue_name, legacy) = context::event_queue(&cloud, &config).await?;
    if legacy {
        tracing::warn!("{}", context::legacy_queue_note(&config));
    }
    let queue = SqsQueue::open(&cloud, &queue_name).await?;
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

    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot watch SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot watch SIGINT: {e}")))?;
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping: dropping the work in flight; the next daemon resumes it");
        let _ = tx.send(true);
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
    let daemon = Daemon::new(&cloud, &store, &config, &locks)
        .with_id(id)
        .with_demand(Box::new(spotkeeper_engine::pools::demand::LiveDemand::new(
            Some(Arc::new(cloud.clone())),
        )));
    let api_state = ApiState {
        cloud: Arc::new(cloud.clone()),
        store: store.clone(),
        config: Arc::new(config.clone()),
        token,
        lock_dir: locks.clone(),
        wake: daemon.waker(),
        metrics: daemon.metrics(),
        daemon_id: daemon.id().to_owned(),
        dns_cache: Default::default(),
    };
    tracing::info!(
        queue = %queue_name,
        state = %context::database_url(&config)?.map_or_else(|| state.display().to_string(), |u| u.to_string()),
        daemon = %daemon.id(),
        api = %config.api_listen,
        "spotkeeper daemon started (owner {}; API token in [api] token, $SPOTKEEPER_API_TOKEN or {})",
        config.owner,
        token_file.display()
    );
    // One task per sink: a receiver that hangs delays only its own notifications.
    for mut d in deliverers {
        d.gate = Some(daemon.fleet_gate());
        let (store, metrics, mut stop) = (store.clone(), daemon.metrics(), rx.clone());
        tokio::spawn(async move {
            loop {
                let stopped = stop.clone();
                let stopped = async move {
                    let mut s = stopped;
                    let _ = s.wait_for(|s| *s).await;
                };
                match d.run(store.clone(), metrics.clone(), stopped).await {
                    Ok(()) => break,
                    // The state store failed: the cursor there is the truth, start again from it.
                    Err(e) => tracing::error!(sink = %d.name(), "notifications paused: {e}"),
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                }
            }
        });
    }
    let (_, served) = tokio::join!(
        daemon.run(&queue, rx.clone()),
        api::serve(listener, api_state, rx)
    );
    if let Err(e) = served {
        tracing::warn!("the API server stopped with an error: {e}");
    }
    tracing::info!("spotkeeper daemon stopped");
    Ok(ExitCode::SUCCESS)
}
