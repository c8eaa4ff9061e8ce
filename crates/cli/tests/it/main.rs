//! The cli crate's integration tests, one binary (a module per family):
//! one link of the AWS SDK instead of one per file.

mod agent_on_loopback;
mod boot_on_qemu;
mod cli_on_emulator;
mod common;
mod contrib;
mod daemon_on_emulator;
mod daemons_on_postgres;
mod dashboard_in_browser;
mod drill_on_emulator;
mod failover_on_emulator;
mod faults_on_emulator;
mod hooks_on_emulator;
mod library_verbs_on_emulator;
mod persistence_on_emulator;
mod pools_on_emulator;
mod regions_on_emulator;
mod setup_on_emulator;
