//! The engine crate's integration tests, one binary (a module per family):
//! one link of the AWS SDK instead of one per file.

mod api_hardening;
mod api_on_fake_cloud;
mod boot_chain;
mod boot_on_qemu;
mod boxes_on_fake_cloud;
mod common;
mod containment_on_fake_cloud;
mod cost_on_fake_cloud;
mod daemon_on_fake_cloud;
mod daemon_runs_on_fake_cloud;
mod demand_on_loopback;
mod examples_parse;
mod images_on_fake_cloud;
mod leases_on_fake_cloud;
mod module_graph;
mod notify_on_loopback;
mod pools_on_fake_cloud;
mod replicas_on_fake_cloud;
