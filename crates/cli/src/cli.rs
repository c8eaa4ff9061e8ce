//! Command-line flags (clap derive). Usage errors exit 2.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand};

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
    /// Resolve an image alias (ubuntu:24.04, ubuntu:24.04:arm64, al2023) to an AMI id, or delete an AMI.
    Image(ImageArgs),
    /// Make an AMI of a box's running instance (without rebooting it); same as `image create BOX`.
    Snapshot {
        /// The box.
        #[arg(value_name = "BOX")]
        box_name: String,
    },
    /// Copy a box's data volume to its other regions now (a snapshot copied to each, pruned to keep), then say what a failover to each would lose; with --status only say that.
    Replicate {
        /// The box.
        #[arg(value_name = "BOX")]
        box_name: String,
        /// Only report each region's newest replica and the recovery point.
        #[arg(long)]
        status: bool,
    },
    /// Run a command on a box over SSH; the exit status is the remote one.
    Exec {
        /// The box.
        #[arg(value_name = "BOX")]
        box_name: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Open an interactive SSH session to a box (the system ssh).
    Ssh {
        /// The box.
        #[arg(value_name = "BOX")]
        box_name: String,
    },
    /// What the box's DNS record points at, and whether that is its live instance.
    Dns {
        /// The box.
        #[arg(value_name = "BOX")]
        box_name: String,
    },
    /// What spot cost and saved per box and pool (instance-hours, the recorded spot prices, on-demand prices), and how often each offering was interrupted.
    Cost {
        /// The window: this long back from now (30d, 12h, ...).
        #[arg(long, default_value = "30d", value_name = "DURATION")]
        since: String,
    },
    /// Create the event queue and EventBridge rules the daemon reads (idempotent), and print the IAM policy it needs.
    Setup,
    /// Remove the rules and the queue; with --all also every instance, spot request, volume, image and DNS record spotkeeper owns.
    Cleanup {
        /// Also remove everything spotkeeper owns (listed first).
        #[arg(long)]
        all: bool,
        /// Do not ask before removing (required without a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Run the daemon: replace interrupted boxes (EC2 events from the queue `setup` made), move their volumes and DNS.
    Serve {
        /// Listen on a non-loopback [api] listen address although the API
        /// speaks plain HTTP (put TLS in front of it).
        #[arg(long)]
        insecure_listen: bool,
    },
    /// Rehearse an interruption: send the box's live instance a spot warning shaped like EventBridge's through the box's queue, follow the daemon's recovery, print its timeline and judge it against the box's slo (exit 1 when late).
    Drill {
        /// The box.
        #[arg(value_name = "BOX")]
        box_name: String,
        /// Send a rebalance recommendation instead (the box's on_rebalance decides).
        #[arg(long)]
        rebalance: bool,
        /// Follow the recovery this long [default: twice the slo, else 10m].
        #[arg(long, value_name = "DURATION")]
        wait: Option<String>,
        /// On AWS: have Fault Injection Service really interrupt the instance
        /// (aws:ec2:send-spot-instance-interruptions, two minutes' notice),
        /// FIS assuming this role, instead of sending a warning of our own.
        #[arg(long, value_name = "ROLE_ARN", conflicts_with = "rebalance")]
        fis: Option<String>,
    },
    /// On a box's instance: watch the metadata service (IMDSv2) for the spot warning, then run the hook, unmount the data volume and tag the outcome on the instance.
    Agent {
        /// The hook, run with `sh -c` when the warning appears.
        #[arg(long, value_name = "CMD", conflicts_with = "on_interruption_file")]
        on_interruption: Option<String>,
        /// The hook, read from this file (what the boot script's unit passes).
        #[arg(long, value_name = "FILE")]
        on_interruption_file: Option<PathBuf>,
        /// Cut the hook after this long (at most 100s; never past what the warning leaves for the volume).
        #[arg(long, default_value = "90s", value_name = "DURATION")]
        timeout: String,
        /// The data volume's mount point: synced and unmounted after the hook.
        #[arg(long, value_name = "DIR")]
        mount: Option<PathBuf>,
        /// How often to ask the metadata service.
        #[arg(long, default_value = "2s", value_name = "DURATION")]
        poll: String,
        /// Records that the warning was handled, so a restarted agent does not run the hook again.
        #[arg(long, value_name = "FILE")]
        done_file: Option<PathBuf>,
    },
    /// Print a least-privilege IAM policy for everything spotkeeper calls, scoped by the owner tag.
    IamPolicy,
    /// Add storage to a box.
    Volume {
        #[command(subcommand)]
        action: VolumeAction,
    },
    /// Worker pools: capacity now (by type and zone) and the daemon's last decisions.
    Pool {
        #[command(subcommand)]
        action: PoolAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolAction {
    /// Every pool (config file and API): desired, current and pending capacity.
    List,
    /// One pool: capacity by type and zone, the last pass's reasons and recent events.
    Show {
        /// The pool.
        #[arg(value_name = "POOL")]
        pool: String,
    },
}

#[derive(Debug, ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub action: Option<ImageAction>,
    /// The image alias or AMI id to resolve.
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Make an image of the box's running instance (no reboot), then prune to images.keep.
    Create {
        /// The box.
        #[arg(value_name = "BOX")]
        box_name: String,
    },
    /// Deregister an AMI and delete its snapshots.
    Delete {
        /// The AMI id.
        #[arg(value_name = "AMI")]
        image_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeAction {
    /// Create a volume in the box's zone and attach it at the next free /dev/sd[f-z].
    Add {
        /// The box.
        #[arg(value_name = "BOX")]
        box_name: String,
        /// Size in GiB.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..=65536))]
        size: i32,
        /// EBS volume type.
        #[arg(long = "type", default_value = "gp3", value_parser = ["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"])]
        kind: String,
    },
}
