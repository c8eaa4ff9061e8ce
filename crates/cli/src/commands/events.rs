//! `spotkeeper setup`, `cleanup` and `iam-policy`: the event plumbing the
//! daemon reads, and the permissions it needs.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use spotkeeper_engine::{cleanup as sweep, policy};

use crate::Failure;
use crate::cli::Args;
use crate::context;
use crate::output;

pub async fn setup(args: &Args) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, false)?;
    let cloud = context::connect(&config).await?;
    let plumbing = cloud
        .ensure_event_plumbing(&config.queue, &config.owner)
        .await?;
    let iam = policy::iam_policy(&config, &demand_queues(&config));
    if args.json {
        output::print_json(&serde_json::json!({
            "queue": config.queue,
            "queue_url": plumbing.queue_url,
            "queue_arn": plumbing.queue_arn,
            "queue_created": plumbing.queue_created,
            "rules": plumbing.rules.iter().map(|(n, c)| serde_json::json!({"name": n, "created": c})).collect::<Vec<_>>(),
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
    done.extend(
        cloud
            .remove_event_plumbing(&config.queue, &config.owner)
            .await?
            .into_iter()
            .map(|r| format!("removed {r}")),
    );
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
