//! `spotkeeper serve`: the daemon. SIGTERM or SIGINT: stop taking new work,
//! finish the pass in flight, exit 0; a second signal exits at once.

use std::process::ExitCode;

use spotkeeper_engine::daemon::{Daemon, SqsQueue};
use tokio::signal::unix::{SignalKind, signal};

use crate::Failure;
use crate::cli::Args;
use crate::context;

/// Exit status after a second signal: 128 + SIGINT, as shells report it.
const INTERRUPTED: i32 = 130;

pub async fn run(args: &Args) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, true)?;
    let cloud = context::connect(&config).await?;
    let state = context::state_path(args, &config)?;
    let (store, locks) = context::open_store(&state).await?;
    let queue = SqsQueue::open(&cloud, &config.queue).await?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot watch SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot watch SIGINT: {e}")))?;
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping: finishing the work in flight (signal again to exit at once)");
        let _ = tx.send(true);
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(INTERRUPTED);
    });
    tracing::info!(queue = %config.queue, state = %state.display(), "spotkeeper daemon started (owner {})", config.owner);
    Daemon::new(&cloud, &store, &config, &locks)
        .run(&queue, rx)
        .await;
    tracing::info!("spotkeeper daemon stopped");
    Ok(ExitCode::SUCCESS)
}
