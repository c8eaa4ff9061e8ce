//! `spotkeeper`: keeps cheap EC2 spot capacity alive. This binary is thin: it
//! parses flags, loads the config, and hands over to `spotkeeper-engine`.

mod cli;
mod commands;
mod context;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// How a run ended, mapped to the exit status the README documents.
#[derive(Debug)]
pub enum Failure {
    /// Wrong flags or a bad config file: exit 2, nothing was touched.
    Usage(anyhow::Error),
    /// The operation failed: exit 1.
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Failed(e.into())
    }
}

fn main() -> ExitCode {
    let args = cli::Args::parse();
    // The daemon reports what it does through its log.
    let verbose = if matches!(
        args.command,
        cli::Command::Serve { .. } | cli::Command::Agent { .. }
    ) {
        args.verbose.max(1)
    } else {
        args.verbose
    };
    output::init_logging(verbose);
    match run(args) {
        Ok(code) => code,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line. Many library errors (sqlx, the
/// migrator) already print their source in their own message; a cause whose
/// text the line already holds is left out instead of being said twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(args: cli::Args) -> Result<ExitCode, Failure> {
    // `list` makes one AWS call and prints: a runtime on this thread starts
    // no worker threads (a third of its time went to starting the process).
    let runtime = match args.command {
        cli::Command::List => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    }
    .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    runtime.block_on(commands::dispatch(args))
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// Says its source in its own message, as sqlx's errors do.
    #[derive(Debug)]
    struct Chatty(std::io::Error);

    impl std::fmt::Display for Chatty {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "while executing migration 2: {}", self.0)
        }
    }

    impl std::error::Error for Chatty {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let inner = std::io::Error::other("table exists");
        let e = anyhow::Error::new(Chatty(inner)).context("opening the state file");
        assert_eq!(
            one_line(&e),
            "opening the state file: while executing migration 2: table exists"
        );
        let plain = anyhow::anyhow!("no such box").context("stop dev");
        assert_eq!(one_line(&plain), "stop dev: no such box");
    }
}
