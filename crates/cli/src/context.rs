//! What every command needs: the config, the AWS handle, the state store.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use spotkeeper_cloud::AwsCloud;
use spotkeeper_engine::config::{self, Config, DatabaseUrl};
use spotkeeper_engine::store::{Connections, Store};

use crate::Failure;
use crate::cli::Args;

/// Loads the config. With `required = false`, a missing default file is fine
/// (an empty config); a file named by flag or environment must exist.
pub fn load_config(args: &Args, required: bool) -> Result<Config, Failure> {
    let env = std::env::var("SPOTKEEPER_CONFIG").ok();
    let path = config::locate(args.config.as_deref(), env.as_deref());
    let named = args.config.is_some() || env.as_deref().is_some_and(|e| !e.is_empty());
    if !required && !named && !path.exists() {
        return config::parse(&path, "").map_err(|e| Failure::Usage(e.into()));
    }
    if !path.exists() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "config file {} not found (use --config FILE or $SPOTKEEPER_CONFIG; see examples/spotkeeper.toml)",
            path.display()
        )));
    }
    config::load(&path).map_err(|e| Failure::Usage(e.into()))
}

/// Connects to AWS as the config's `[aws]` section and the credential chain say.
pub async fn connect(config: &Config) -> Result<AwsCloud, Failure> {
    AwsCloud::connect(&config.aws)
        .await
        .map_err(|e| Failure::Usage(e.into()))
}

/// The regions the config's boxes that `keep` selects list besides their
/// home, each once, leaving out `home` (the region spotkeeper runs in).
pub fn other_regions(
    config: &Config,
    home: Option<&str>,
    keep: impl Fn(&spotkeeper_engine::config::BoxSpec) -> bool,
) -> Vec<String> {
    let mut regions: Vec<String> = config
        .boxes
        .values()
        .filter(|b| keep(b))
        .flat_map(|b| b.other_regions().iter().cloned())
        .filter(|r| Some(r.as_str()) != home)
        .collect();
    regions.sort();
    regions.dedup();
    regions
}

/// [`connect`], to `region` instead of the config's (a box's other regions).
pub async fn connect_in(config: &Config, region: &str) -> Result<AwsCloud, Failure> {
    let mut aws = config.aws.clone();
    aws.region = Some(region.to_owned());
    AwsCloud::connect(&aws)
        .await
        .map_err(|e| Failure::Usage(e.into()))
}

/// The state file: `--state`, `$SPOTKEEPER_STATE`, `[daemon] state`, or the user's data directory.
pub fn state_path(args: &Args, config: &Config) -> Result<PathBuf, Failure> {
    if let Some(p) = &args.state {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("SPOTKEEPER_STATE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = &config.state {
        return Ok(p.clone());
    }
    let dirs = directories::ProjectDirs::from("", "", "spotkeeper").ok_or_else(|| {
        Failure::Usage(anyhow::anyhow!(
            "no home directory to keep the state file in; pass --state FILE"
        ))
    })?;
    Ok(dirs.data_dir().join("state.db"))
}

/// The shared database: `$SPOTKEEPER_DATABASE_URL`, else `[daemon] database`;
/// `None` for the SQLite state file.
pub fn database_url(config: &Config) -> Result<Option<DatabaseUrl>, Failure> {
    match std::env::var("SPOTKEEPER_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => DatabaseUrl::parse(&url)
            .map(Some)
            .map_err(|m| Failure::Usage(anyhow::anyhow!("$SPOTKEEPER_DATABASE_URL: {m}"))),
        _ => Ok(config.database.clone()),
    }
}

/// Opens the state store — the shared PostgreSQL database when one is
/// configured, else the SQLite file at `path` — and returns it with the
/// lock directory beside `path` (used with the file only: on PostgreSQL the
/// box locks are in the database). On PostgreSQL it opens at most
/// `connections`.
pub async fn open_store(
    path: &Path,
    config: &Config,
    connections: Connections,
) -> Result<(Store, PathBuf), Failure> {
    let store = match database_url(config)? {
        Some(url) => Store::connect_with(&url, connections)
            .await
            .with_context(|| "connecting to the state database")?,
        None => Store::open(path)
            .await
            .with_context(|| "opening the state file")?,
    };
    let locks = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("locks");
    Ok((store, locks))
}

/// The event queue this installation reads: the one `[daemon] queue` names,
/// else the owner's own (`spotkeeper-OWNER-events`). An installation set up
/// before names were derived from the owner keeps reading the old shared
/// `spotkeeper-events` while that one is its own (tagged with its owner) and
/// it has no queue of the new name yet; the second value says so.
pub async fn event_queue(
    cloud: &AwsCloud,
    config: &Config,
) -> Result<(String, bool), spotkeeper_cloud::CloudError> {
    if config.queue_named || cloud.queue_url(&config.queue).await?.is_some() {
        return Ok((config.queue.clone(), false));
    }
    if let Some(url) = cloud.queue_url(config::LEGACY_QUEUE).await?
        && cloud.queue_owner(&url).await?.as_deref() == Some(config.owner.as_str())
    {
        return Ok((config::LEGACY_QUEUE.to_owned(), true));
    }
    Ok((config.queue.clone(), false))
}

/// What `setup` and `serve` say to an installation still on the old shared queue.
pub fn legacy_queue_note(config: &Config) -> String {
    format!(
        "this installation reads the queue {legacy}, the name every installation shared before \
         queue names were derived from the owner; it keeps working. To move to {new}: stop the daemon, \
         run `spotkeeper cleanup` (removes the old queue and this owner's rules), then `spotkeeper setup`, \
         and start the daemon again (or keep the old name with [daemon] queue = \"{legacy}\")",
        legacy = config::LEGACY_QUEUE,
        new = config::default_queue(&config.owner),
    )
}
