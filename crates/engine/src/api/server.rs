//! The HTTP server: limits on headers, requests and connections, and
//! graceful shutdown.

use super::*;

/// A client has this long to send a request's headers: a connection that
/// trickles them (slowloris) is closed instead of holding a slot.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One request, body and answer included: every route answers from the
/// state file or one AWS call, in well under this.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connections served at once; more are closed on accept. The API serves a
/// few people and a Prometheus scraper, not the internet.
pub const MAX_CONNECTIONS: usize = 64;

/// The HTTP server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read: std::time::Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request: std::time::Duration,
    /// See [`MAX_CONNECTIONS`].
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read: HEADER_READ_TIMEOUT,
            request: REQUEST_TIMEOUT,
            connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled, with the default
/// [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, state, shutdown, Limits::default()).await
}

/// Serves the API with a header-read timeout, a request timeout and a
/// connection limit (hyper directly: `axum::serve` has none of the three).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: tokio_util::sync::CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    let request = limits.request;
    let app = router(state).layer(middleware::from_fn(
        move |req: axum::extract::Request, next: middleware::Next| async move {
            match tokio::time::timeout(request, next.run(req)).await {
                Ok(r) => r,
                Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request took too long")
                    .into_response(),
            }
        },
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    tracing::warn!("accepting an API connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "API connection refused: {} already open", limits.connections);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "API connection ended: {e}");
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    // Requests in flight get a moment; then the connections are dropped.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}
