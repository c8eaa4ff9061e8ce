//! The cloud crate's integration tests, one binary (a module per family):
//! one link of the AWS SDK instead of one per file.

mod aws_on_emulator;
mod example_runs;
mod library_on_emulator;
mod request_shapes;
mod ssh_on_loopback;
