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
    let verbose = if matches!(args.command, cli::Command::Serve) {
        args.verbose.max(1)
    } else {
        args.verbose
    };
    output::init_logging(verbose);
    match run(args) {
        Ok(code) => code,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: cli::Args) -> Result<ExitCode, Failure> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    runtime.block_on(commands::dispatch(args))
}
