//! # spotkeeper-engine
//!
//! Everything between the command line and the cloud. The modules, roughly
//! from the bottom up (a module uses only those above it or beside it; no
//! two import each other, which `tests/it/module_graph.rs` checks):
//!
//! - `config`: the config file, validated into specs (imports no other
//!   module of the engine); `event_kind` and `subject`: the names events,
//!   leases and dooms go by; `store`: the state (SQLite or PostgreSQL, a
//!   file per family of tables); `events`: EventBridge messages; `progress`, `ownership`, `plan`, `lock`, `ready`,
//!   `bootstrap`, `policy`: small pure or local pieces;
//! - `persist` (volumes), `dns` (Route 53 records), `images`: what a box
//!   owns besides its instance;
//! - `boxes`: `up` (`boxes::launch`), what follows `running`
//!   (`boxes::settle`) and `stop` (`boxes::stop`);
//! - `pools`: worker pools (`spec` lives in `config`; `plan` is pure,
//!   `pass` executes, `demand` reads the queue, `view` shows);
//! - `desired`: what should exist (config and API-registered specs);
//! - `daemon`: passes, the warning fast path, tasks, marks; `notify`,
//!   `metrics`, `cost`, `charts`, `api` (HTTP), `cleanup`.

pub mod agent;
pub mod api;
pub mod bootstrap;
pub mod boxes;
pub mod charts;
pub mod cleanup;
pub mod config;
pub mod cost;
pub mod daemon;
pub mod desired;
pub mod dns;
pub mod drill;
pub mod event_kind;
pub mod events;
pub mod failover;
pub mod fence;
pub mod hook;
pub mod images;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod ownership;
pub mod persist;
pub mod plan;
pub mod policy;
pub mod pools;
pub mod progress;
pub mod rank;
pub mod ready;
pub mod replicate;
pub mod scores;
pub mod simulate;
pub mod store;
pub mod subject;
pub mod tag_index;
mod tls;
