//! One file per subcommand; this one dispatches and holds what they share.

mod agent;
mod cost;
mod dns;
mod drill;
mod events;
mod exec;
mod image;
mod list;
mod pool;
mod price;
mod replicate;
mod serve;
mod snapshot;
mod stop;
mod up;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use spotkeeper_cloud::{AwsCloud, Instance};
use spotkeeper_engine::boxes::{BoxError, Ctx, Timing};
use spotkeeper_engine::config::{BoxSpec, Config};
use spotkeeper_engine::store::Store;

use crate::Failure;
use crate::cli::{Args, Command, ImageAction, PoolAction, VolumeAction};
use crate::context;
use crate::output::Steps;

pub async fn dispatch(args: Args) -> Result<ExitCode, Failure> {
    match &args.command {
        Command::Price {
            box_name,
            instance_types,
            zones,
        } => price::run(&args, box_name.as_deref(), instance_types, zones).await,
        Command::Up { box_name } => up::run(&args, box_name).await,
        Command::List => list::run(&args).await,
        Command::Stop { box_name, no_wait } => stop::run(&args, box_name, !no_wait).await,
        Command::Image(image_args) => match (&image_args.action, &image_args.image) {
            (Some(ImageAction::Delete { image_id }), _) => image::delete(&args, image_id).await,
            (Some(ImageAction::Create { box_name }), _) => snapshot::run(&args, box_name).await,
            (None, Some(alias)) => image::resolve(&args, alias).await,
            (None, None) => Err(Failure::Usage(anyhow::anyhow!(
                "name an IMAGE to resolve, or `image delete AMI`"
            ))),
        },
        Command::Snapshot { box_name } => snapshot::run(&args, box_name).await,
        Command::Replicate { box_name, status } => replicate::run(&args, box_name, *status).await,
        Command::Exec { box_name, command } => exec::exec(&args, box_name, command).await,
        Command::Ssh { box_name } => exec::ssh(&args, box_name).await,
        Command::Dns { box_name } => dns::run(&args, box_name).await,
        Command::Cost { since } => cost::run(&args, since).await,
        Command::Setup => events::setup(&args).await,
        Command::Cleanup { all, yes } => events::cleanup(&args, *all, *yes).await,
        Command::IamPolicy => events::iam_policy(&args),
        Command::Drill {
            box_name,
            rebalance,
            wait,
            fis,
        } => drill::run(&args, box_name, *rebalance, wait.as_deref(), fis.as_deref()).await,
        Command::Agent {
            on_interruption,
            on_interruption_file,
            timeout,
            mount,
            poll,
            done_file,
        } => {
            agent::run(agent::Flags {
                on_interruption,
                on_interruption_file,
                timeout,
                mount,
                poll,
                done_file,
            })
            .await
        }
        Command::Serve { insecure_listen } => serve::run(&args, *insecure_listen).await,
        Command::Volume {
            action:
                VolumeAction::Add {
                    box_name,
                    size,
                    kind,
                },
        } => volume::add(&args, box_name, *size, kind).await,
        Command::Pool { action } => match action {
            PoolAction::List => pool::run(&args, None).await,
            PoolAction::Show { pool } => pool::run(&args, Some(pool)).await,
        },
    }
}

/// Config, the named box, and the AWS handle: what every box command starts with.
async fn open_box(args: &Args, box_name: &str) -> Result<(Config, BoxSpec, AwsCloud), Failure> {
    let config = context::load_config(args, true)?;
    let spec = config
        .box_spec(box_name)
        .map_err(|e| Failure::Usage(e.into()))?
        .clone();
    let cloud = context::connect(&config).await?;
    Ok((config, spec, cloud))
}

/// Handles to the box's other regions (`regions = [home, …]`), made now.
async fn other_regions(
    config: &Config,
    spec: &BoxSpec,
) -> Result<Vec<(String, AwsCloud)>, Failure> {
    let mut others = Vec::new();
    for region in spec.other_regions() {
        others.push((region.clone(), context::connect_in(config, region).await?));
    }
    Ok(others)
}

/// The state store and lock directory for `config`.
async fn open_state(args: &Args, config: &Config) -> Result<(Store, PathBuf), Failure> {
    let state = context::state_path(args, config)?;
    context::open_store(&state, config, Default::default()).await
}

/// Runs `f` with a box context (cloud, store, owner, locks, progress on stderr).
fn ctx<'a>(
    cloud: &'a AwsCloud,
    store: &'a Store,
    config: &'a Config,
    locks: &'a std::path::Path,
    steps: &'a Steps,
) -> Ctx<'a> {
    Ctx {
        cloud,
        store,
        owner: &config.owner,
        lock_dir: locks,
        progress: steps,
        timing: Timing::default(),
    }
}

/// The box's live instance, or a failure saying there is none.
async fn require_live(
    cloud: &AwsCloud,
    config: &Config,
    box_name: &str,
) -> Result<Instance, Failure> {
    spotkeeper_engine::boxes::live_instance(cloud, &config.owner, box_name)
        .await?
        .ok_or_else(|| {
            Failure::Failed(anyhow::anyhow!(
                "box {box_name} has no live instance (run `spotkeeper up {box_name}`)"
            ))
        })
}

fn box_failure(e: BoxError) -> Failure {
    Failure::Failed(e.into())
}
