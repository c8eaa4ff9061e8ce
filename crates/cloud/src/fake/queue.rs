//! `FakeQueue`: the event queue seam in memory, for the daemon's receive
//! loop (keep or delete a message, shut down) tested in-process.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::error::{CloudError, ErrorKind};

/// An in-memory event queue: messages pushed by the test, received in
/// batches of up to ten, kept (invisible) until deleted or released.
#[derive(Debug, Default)]
pub struct FakeQueue {
    state: Mutex<QueueState>,
    arrived: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    waiting: VecDeque<crate::aws::QueueMessage>,
    in_flight: BTreeMap<String, crate::aws::QueueMessage>,
    deleted: Vec<String>,
    next: u64,
    fail_next_receive: bool,
}

impl FakeQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a message with `body`; returns its id.
    pub fn push(&self, body: &str) -> String {
        let mut s = self.lock();
        s.next += 1;
        let id = format!("m-{}", s.next);
        let sent = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        s.waiting.push_back(crate::aws::QueueMessage {
            id: id.clone(),
            receipt: format!("r-{id}"),
            body: body.to_owned(),
            sent_at_ms: Some(sent),
        });
        drop(s);
        self.arrived.notify_waiters();
        id
    }

    /// Ids of the messages deleted so far, in order.
    pub fn deleted(&self) -> Vec<String> {
        self.lock().deleted.clone()
    }

    /// Ids of messages received and neither deleted nor released.
    pub fn in_flight(&self) -> Vec<String> {
        self.lock().in_flight.keys().cloned().collect()
    }

    /// Makes received-but-undeleted messages visible again, as SQS does once
    /// their visibility timeout passes.
    pub fn release_in_flight(&self) {
        let mut s = self.lock();
        let back: Vec<_> = std::mem::take(&mut s.in_flight).into_values().collect();
        s.waiting.extend(back);
        drop(s);
        self.arrived.notify_waiters();
    }

    /// The next receive fails (an SQS outage).
    pub fn fail_next_receive(&self) {
        self.lock().fail_next_receive = true;
    }
}

#[async_trait]
impl crate::queue::EventQueue for FakeQueue {
    async fn send(&self, body: &str) -> Result<(), CloudError> {
        self.push(body);
        Ok(())
    }

    async fn receive(&self) -> Result<Vec<crate::aws::QueueMessage>, CloudError> {
        loop {
            let arrived = self.arrived.notified();
            {
                let mut s = self.lock();
                if std::mem::take(&mut s.fail_next_receive) {
                    return Err(CloudError::other(
                        "ReceiveMessage",
                        ErrorKind::Unreachable,
                        "injected by FakeQueue",
                    ));
                }
                if !s.waiting.is_empty() {
                    let n = s.waiting.len().min(10);
                    let batch: Vec<_> = s.waiting.drain(..n).collect();
                    for m in &batch {
                        s.in_flight.insert(m.id.clone(), m.clone());
                    }
                    return Ok(batch);
                }
            }
            // A long poll: wait for a message, at most a short while.
            if tokio::time::timeout(std::time::Duration::from_millis(200), arrived)
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), CloudError> {
        let mut s = self.lock();
        let id = receipt.trim_start_matches("r-").to_owned();
        if s.in_flight.remove(&id).is_some() {
            s.deleted.push(id);
        }
        Ok(())
    }
}
