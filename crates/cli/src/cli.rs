//! Command-line flags (clap derive). Usage errors exit 2.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Keeps cheap EC2 spot capacity alive: launch, find, list and stop spot boxes
/// described in a config file.
#[derive(Debug, Parser)]
#[command(name = "spotkeeper", version, about, propagate_version = true)]
pub struct Args {
    /// Config file [default: $SPOTKEEPER_CONFIG, else ./spotkeeper.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// State file [default: $SPOTKEEPER_STATE, else [daemon] state, else the user's data directory]
    #[arg(long, global = true, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// More diagnostics on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Current spot price per (type, zone), cheapest first.
    Price {
        /// A box whose instance types and zones to price.
        #[arg(value_name = "BOX", conflicts_with = "instance_types")]
        box_name: Option<String>,
        /// Instance type to price (repeatable).
        #[arg(long = "type", value_name = "TYPE")]
        instance_types: Vec<String>,
        /// Only these zones (repeatable) [default: the box's zones, else every zone].
        #[arg(long = "zone", value_name = "ZONE")]
        zones: Vec<String>,
    },
    /// Bring a box up: find its live instance, or launch one under the price ceiling.
    Up {
        /// The box, as named in the config ([box.NAME]).
        #[arg(value_name = "BOX")]
        box_name: String,
    },
    /// Every live instance spotkeeper owns.
    List,
    /// Terminate a box's instances and cancel its open spot requests.
    Stop {
        /// The box.
        #[arg(value_name = "BOX")]
        box_name: String,
        /// Return once termination is requested, without waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
}
