//! Fencing tokens: a daemon that lost a subject's lease changes nothing of it.
//!
//! A lease gets a new generation each time it changes hands
//! ([`crate::store::OwnerStore::take_lease`]). Each piece of work a daemon does
//! for a box or a pool (a task, the pass's prompt steps, the owner-wide
//! chores) runs in the scope of a [`Fence`]: the subject, the daemon and
//! the generation it held when it planned the work. Every call that
//! changes AWS goes through the daemon's fenced cloud (`daemon/fenced.rs`), which first asks the database
//! whether the daemon still holds that generation, unexpired by the
//! database's clock, and refuses the call ([`ErrorKind::Fenced`]) if not;
//! a launch intent is recorded in the same transaction as that check
//! ([`crate::store::Store::create_intent`]). So a daemon paused past its
//! lease (a stopped VM, a long GC-like stall, SIGSTOP), or one cut off and
//! back, that resumes in the middle of a replacement stops at its next
//! step instead of moving a volume, a DNS record or an instance the new
//! holder already moved.
//!
//! What this cannot close: the moment between the check and AWS acting on
//! the call. A daemon paused exactly there sends one call late; every call
//! spotkeeper makes is idempotent or checked by AWS (client tokens,
//! "attached elsewhere" refusals), and the next one is refused.
//!
//! Work outside a fence (the CLI, API handlers, tests) is not checked: it
//! is not done under a lease.

use std::future::Future;

use spotkeeper_cloud::{CloudError, ErrorKind};

/// The lease a piece of work was planned under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The owner the lease is of.
    pub owner: String,
    /// `box:NAME`, `pool:NAME` or `fleet`.
    pub subject: String,
    /// The daemon that holds (held) it.
    pub holder: String,
    /// Its generation when the work was planned.
    pub generation: i64,
    /// How far the daemon's clock was moved ahead of real time (tokio's
    /// paused clock in tests; zero otherwise): added to the database's.
    pub offset_ms: i64,
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "daemon {} no longer holds {} (lease generation {}): another daemon acts on it, \
             so this one stopped",
            self.holder, self.subject, self.generation
        )
    }
}

tokio::task_local! {
    static FENCE: Fence;
}

/// The fence of the work being polled, if any.
pub fn current() -> Option<Fence> {
    FENCE.try_with(Fence::clone).ok()
}

/// Runs `work` in `fence`'s scope (unchecked without one).
pub async fn scope<F: Future>(fence: Option<Fence>, work: F) -> F::Output {
    match fence {
        Some(fence) => FENCE.scope(fence, work).await,
        None => work.await,
    }
}

/// Whether a failure is a fence's refusal.
pub fn is_fenced(e: &CloudError) -> bool {
    e.kind == ErrorKind::Fenced
}
