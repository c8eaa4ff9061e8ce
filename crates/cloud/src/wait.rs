//! The one deadline loop of this crate: everything it waits for in AWS (an
//! instance running, stopped or gone, a volume settled, a snapshot completed,
//! an image available) is "look, and until the answer is final, sleep and look
//! again, at most this long".

use std::future::Future;
use std::time::Duration;

use crate::error::{CloudError, ErrorKind};

/// What one look found.
pub(crate) enum Look<T> {
    /// Final: the value to return.
    Done(T),
    /// Not yet; what is still awaited ("instance i-1 not running"), said in
    /// the error when time runs out.
    NotYet(String),
}

/// Calls `look` every `every` until it answers [`Look::Done`] or an error,
/// at most for `within`; then an error naming `operation` and what was
/// still awaited.
pub(crate) async fn until<T, F, Fut>(
    operation: &'static str,
    within: Duration,
    every: Duration,
    mut look: F,
) -> Result<T, CloudError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Look<T>, CloudError>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let waiting = match look().await? {
            Look::Done(value) => return Ok(value),
            Look::NotYet(waiting) => waiting,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(CloudError::other(
                operation,
                ErrorKind::Other,
                format!("{waiting} after {}s", within.as_secs()),
            ));
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn looks_until_done_and_says_what_it_waited_for_when_time_runs_out() {
        let looks = AtomicU32::new(0);
        let done = until(
            "Op",
            Duration::from_secs(60),
            Duration::from_millis(1),
            || async {
                let n = looks.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(if n == 3 {
                    Look::Done(n)
                } else {
                    Look::NotYet("not yet".into())
                })
            },
        )
        .await
        .expect("done on the third look");
        assert_eq!(done, 3);

        let err = until::<(), _, _>(
            "DescribeThings",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || async { Ok(Look::NotYet("thing t-1 not ready".into())) },
        )
        .await
        .expect_err("never done");
        assert_eq!(err.operation, "DescribeThings");
        assert!(
            err.to_string().contains("thing t-1 not ready after 0s"),
            "{err}"
        );

        let failed = until::<(), _, _>(
            "Op",
            Duration::from_secs(5),
            Duration::from_secs(1),
            || async { Err(CloudError::other("Op", ErrorKind::Other, "broken")) },
        )
        .await
        .expect_err("an error ends the wait");
        assert!(failed.to_string().contains("broken"));
    }
}
