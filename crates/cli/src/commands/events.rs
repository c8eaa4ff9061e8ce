//! `spotkeeper setup`, `cleanup` and `iam-policy`: the event plumbing the
//! daemon reads, and the permissions it needs.

use spotkeeper_cloud::prelude::*;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use spotkeeper_engine::{cleanup as sweep, policy};

use crate::Failure;
use crate::cli::Args;
use crate::context;
use crate::output;

/// The `owner` line `setup` writes into a config without one: the tag
/// value that keeps this installation's resources apart from every other's.
/// If AWS already holds resources under the default owner, that one is
/// written (they stay this installation's); otherwise a fresh unique one.
async fn settle_owner(
    cloud: &spotkeeper_cloud::AwsCloud,
    config: &spotkeeper_engine::config::Config,
) -> Result<Option<String>, Failure> {
    let Ok(text) = std::fs::read_to_string(&config.path) else {
        return Ok(None);
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| Failure::Usage(anyhow::anyhow!("{}: {e}", config.path.display())))?;
    if doc.contains_key("owner") {
        return Ok(None);
    }
    let mine = spotkeeper_engine::boxes::owner_filter(&config.owner);
    let in_use =
        !cloud.instances(&mine).await?.is_empty() || !cloud.volumes(&mine).await?.is_empty();
    let owner = if in_use {
        config.owner.clone()
    } else {
        // 48 random bits: two installations in one account must not meet.
        let token = spotkeeper_cloud::model::random_token();
        let hex = token.trim_start_matches("skr-");
        format!("spotkeeper-{}", &hex[..12])
    };
    // A root key: toml_edit writes it before the tables; comments and
    // layout of everything else stay as they were.
    let mut value = toml_edit::Value::from(owner.clone());
    value.decor_mut().set_suffix(
        "   # the spotkeeper:owner tag, written by `setup`; changing it disowns what exists",
    );
    doc.insert("owner", toml_edit::Item::Value(value));
    write_atomically(&config.path, &doc.to_string()).map_err(|e| {
        Failure::Failed(anyhow::anyhow!(
            "cannot write {}: {e}",
            config.path.display()
        ))
    })?;
    Ok(Some(owner))
}

/// Replaces `path` with `text` as one step: written beside it (same
/// directory, same permissions), flushed, then renamed over it, so a crash
/// or a full disk never leaves half a config.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

pub async fn setup(args: &Args) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, false)?;
    let cloud = context::connect(&config).await?;
    let config = match settle_owner(&cloud, &config).await? {
        Some(owner) => {
            eprintln!(
                "Wrote owner = {owner:?} into {} (the tag that keeps this installation's resources apart)",
                config.path.display()
            );
            context::load_config(args, false)?
        }
        None => config,
    };
    let (queue, legacy) = context::event_queue(&cloud, &config).await?;
    let plumbing = cloud.ensure_event_plumbing(&queue, &config.owner).await?;
    // EventBridge delivers a region's EC2 events in that region: each of the
    // boxes' other regions gets a queue of the same name and its rules.
    let mut elsewhere = Vec::new();
    for region in context::other_regions(&config, config.aws.region.as_deref(), |_| true) {
        let there = context::connect_in(&config, &region).await?;
        elsewhere.push((
            region,
            there.ensure_event_plumbing(&queue, &config.owner).await?,
        ));
    }
    let config = spotkeeper_engine::config::Config {
        queue: queue.clone(),
        ..config
    };
    let iam = policy::iam_policy(&config, &demand_queues(&config));
    if legacy {
        eprintln!("Note: {}", context::legacy_queue_note(&config));
    }
    if args.json {
        output::print_json(&serde_json::json!({
            "queue": queue,
            "legacy_queue": legacy,
            "queue_url": plumbing.queue_url,
            "queue_arn": plumbing.queue_arn,
            "queue_created": plumbing.queue_created,
            "rules": plumbing.rules.iter().map(|(n, c)| serde_json::json!({"name": n, "created": c})).collect::<Vec<_>>(),
            "regions": elsewhere.iter().map(|(r, p)| serde_json::json!({
                "region": r,
                "queue_url": p.queue_url,
                "queue_arn": p.queue_arn,
                "queue_created": p.queue_created,
                "rules": p.rules.iter().map(|(n, c)| serde_json::json!({"name": n, "created": c})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "iam_policy": iam,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = |created: bool| {
        if created {
            "Created"
        } else {
            "Found (updated)"
        }
    };
    println!(
        "{} queue {} ({})",
        verb(plumbing.queue_created),
        config.queue,
        plumbing.queue_arn
    );
    for (name, created) in &plumbing.rules {
        println!("{} rule {name} → queue", verb(*created));
    }
    for (region, p) in &elsewhere {
        println!(
            "{} queue {} in {region} ({}), {} rules",
            verb(p.queue_created),
            config.queue,
            p.queue_arn,
            p.rules.len()
        );
    }
    println!(
        "\nThe daemon needs this IAM policy (also: spotkeeper iam-policy):\n{}",
        serde_json::to_string_pretty(&iam)?
    );
    Ok(ExitCode::SUCCESS)
}

pub fn iam_policy(args: &Args) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, false)?;
    output::print_json(&policy::iam_policy(&config, &demand_queues(&config)))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn cleanup(args: &Args, all: bool, yes: bool) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, false)?;
    let cloud = context::connect(&config).await?;
    let mut done = Vec::new();
    if all {
        let inv = sweep::inventory(&cloud, &config).await?;
        if inv.is_empty() {
            eprintln!(
                "spotkeeper owns no instances, spot requests, volumes, images or DNS records here (owner {:?}).",
                config.owner
            );
        } else {
            eprintln!("spotkeeper (owner {:?}) will:", config.owner);
            for line in inv.lines() {
                eprintln!("  {line}");
            }
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(Failure::Usage(anyhow::anyhow!(
                        "not removing anything without a terminal to ask on: pass --yes"
                    )));
                }
                eprint!("Remove all of the above? [y/N] ");
                std::io::stderr().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("Nothing removed.");
                    return Ok(ExitCode::SUCCESS);
                }
            }
            done.extend(sweep::remove(&cloud, &inv).await?);
        }
    }
    let (queue, _) = context::event_queue(&cloud, &config).await?;
    done.extend(cloud.remove_event_plumbing(&queue, &config.owner).await?);
    for region in context::other_regions(&config, config.aws.region.as_deref(), |_| true) {
        let there = context::connect_in(&config, &region).await?;
        for line in there.remove_event_plumbing(&queue, &config.owner).await? {
            done.push(format!("{line} (in {region})"));
        }
    }
    if args.json {
        output::print_json(&done)?;
    } else if done.is_empty() {
        eprintln!("Nothing to clean up.");
    } else {
        for line in &done {
            eprintln!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The SQS queues the config's pools read their demand from.
fn demand_queues(config: &spotkeeper_engine::config::Config) -> Vec<String> {
    config
        .pools
        .values()
        .filter_map(|p| match &p.demand {
            spotkeeper_engine::pools::Demand::Sqs { queue } => Some(queue.clone()),
            _ => None,
        })
        .collect()
}
