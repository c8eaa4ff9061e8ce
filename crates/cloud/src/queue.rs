//! The event queue seam: where the daemon's EC2 events come from. [`SqsQueue`]
//! is the SQS queue `setup` makes (EventBridge → SQS); `fake::FakeQueue`
//! (feature `test-util`) stands in for it so the daemon's receive loop (keep
//! or delete a message, shut down) is tested in-process. [`JobQueue`] is
//! where worker pools count their pending jobs.

use async_trait::async_trait;

use crate::aws::{AwsCloud, QueueMessage};
use crate::error::{CloudError, ErrorKind};

/// Where events come from.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Waits (long-polls) for up to ten messages.
    async fn receive(&self) -> Result<Vec<QueueMessage>, CloudError>;
    /// Deletes a handled message.
    async fn delete(&self, receipt: &str) -> Result<(), CloudError>;
    /// The AWS account the queue belongs to, when known: events of other
    /// accounts are not acted on.
    fn account(&self) -> Option<String> {
        None
    }
    /// Sends a message into the queue (a drill's warning).
    async fn send(&self, body: &str) -> Result<(), CloudError> {
        let _ = body;
        Err(CloudError::other(
            "SendMessage",
            ErrorKind::InvalidRequest,
            "this queue takes no messages from spotkeeper",
        ))
    }
}

/// Where a worker pool's pending jobs are counted: an SQS queue's depth.
#[async_trait]
pub trait JobQueue: Send + Sync + std::fmt::Debug {
    /// How many messages wait in `queue` (a name or a URL).
    async fn queue_depth(&self, queue: &str) -> Result<u64, CloudError>;
}

/// The SQS queue `setup` made.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    cloud: AwsCloud,
    url: String,
}

impl SqsQueue {
    /// The queue named `name`, or an error saying to run `spotkeeper setup`.
    pub async fn open(cloud: &AwsCloud, name: &str) -> Result<Self, CloudError> {
        let url = cloud.queue_url(name).await?.ok_or_else(|| {
            CloudError::other(
                "GetQueueUrl",
                ErrorKind::NotFound,
                format!("queue {name} does not exist: run `spotkeeper setup`"),
            )
        })?;
        Ok(Self {
            cloud: cloud.clone(),
            url,
        })
    }
}

#[async_trait]
impl EventQueue for SqsQueue {
    async fn receive(&self) -> Result<Vec<QueueMessage>, CloudError> {
        // Batches of ten, 20-second waits: few calls when idle, no delay when busy.
        self.cloud.receive_messages(&self.url, 10, 20).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), CloudError> {
        self.cloud.delete_message(&self.url, receipt).await
    }
    fn account(&self) -> Option<String> {
        queue_account(&self.url)
    }
    async fn send(&self, body: &str) -> Result<(), CloudError> {
        self.cloud.send_message(&self.url, body).await
    }
}

/// The account in a queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`).
pub fn queue_account(url: &str) -> Option<String> {
    let mut parts = url.rsplit('/');
    let _name = parts.next()?;
    let account = parts.next()?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then(|| account.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_account_is_read_from_the_queue_url() {
        assert_eq!(
            super::queue_account(
                "https://sqs.us-east-1.amazonaws.com/123456789012/spotkeeper-events"
            )
            .as_deref(),
            Some("123456789012")
        );
        assert_eq!(super::queue_account("http://127.0.0.1:5000/queue/x"), None);
    }
}
