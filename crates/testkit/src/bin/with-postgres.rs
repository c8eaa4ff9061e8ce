//! `with-postgres COMMAND ARGS…`: starts a throwaway PostgreSQL server
//! (see `spotkeeper_testkit::Postgres`), runs the command with
//! `$SPOTKEEPER_TEST_DATABASE_URL` pointing at it, stops the server, and
//! exits with the command's status. `scripts/test` runs the daemon and pool
//! scenarios a second time this way: each test makes a database of its own.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: with-postgres COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    let server = spotkeeper_testkit::Postgres::start();
    let status = Command::new(program)
        .args(rest)
        .env(spotkeeper_testkit::TEST_DATABASE_VAR, server.url())
        .status();
    drop(server);
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("with-postgres: cannot run {program}: {e}");
            ExitCode::from(127)
        }
    }
}
