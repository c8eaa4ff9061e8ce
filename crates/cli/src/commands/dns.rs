//! `spotkeeper dns BOX`: what the record points at, and whether that is the live instance.

use std::process::ExitCode;

use crate::Failure;
use crate::cli::Args;
use crate::output;

pub async fn run(args: &Args, box_name: &str) -> Result<ExitCode, Failure> {
    let (config, spec, cloud) = super::open_box(args, box_name).await?;
    if spec.dns.is_none() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "box {box_name} has no dns = {{ zone, name }} in {}",
            config.path.display()
        )));
    }
    let live = spotkeeper_engine::boxes::live_instance(&cloud, &config.owner, box_name).await?;
    let status = spotkeeper_engine::dns::status(&cloud, &config.owner, &spec, live.as_ref())
        .await?
        .expect("dns is configured");
    if args.json {
        output::print_json(&serde_json::json!({
            "box": box_name,
            "name": status.name,
            "record": status.record.as_ref().map(|r| &r.values),
            "ttl": status.record.as_ref().map(|r| r.ttl),
            "instance_id": live.as_ref().map(|i| i.id.to_string()),
            "instance_address": status.instance_address,
            "matches": status.matches,
            "owned": status.owned,
            "owner_note": status.owner_note,
        }))?;
    } else {
        let record = status
            .record
            .as_ref()
            .map_or("(no record)".to_owned(), |r| r.values.join(","));
        let instance = match (&live, &status.instance_address) {
            (Some(i), Some(a)) => format!("{a} ({})", i.id),
            (Some(i), None) => format!("(no address) ({})", i.id),
            (None, _) => "(no live instance)".to_owned(),
        };
        output::print_table(
            &["NAME", "RECORD", "INSTANCE", "MATCHES", "OWNER"],
            &[vec![
                status.name.clone(),
                record,
                instance,
                if status.matches {
                    "yes".into()
                } else {
                    "no".into()
                },
                match (&status.owner_note, status.owned) {
                    (Some(note), _) => note.clone(),
                    (None, true) => "this box".into(),
                    (None, false) => "-".into(),
                },
            ]],
        );
    }
    Ok(ExitCode::SUCCESS)
}
