//! The event queue seam: where the daemon's EC2 events come from. [`SqsQueue`]
//! is the SQS queue `setup` makes (EventBridge → SQS); `fake::FakeQueue`
//! (feature `test-util`) stands in for it so the daemon's receive loop (keep
//! or delete a message, shut down) is tested in-process.

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
}
