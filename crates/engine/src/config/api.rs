//! Boxes and pools registered through the HTTP API: JSON bodies validated
//! exactly as the config's tables are (by writing them as one), and what the
//! API refuses to accept at all ([`refuse_code`]: commands, addresses,
//! adoption, the daemon's environment, roles the config does not allow).

use std::path::Path;

use serde_json::Value;

use super::launch::check_name;
use super::{BoxSpec, Config, PoolSpec, parse};

/// Validates a box registered through the API: a JSON object with the keys
/// of a `[box.NAME]` table (not `user_data_file`: the server's files are not
/// the client's to read). Errors name the field.
pub fn parse_box_json(name: &str, value: &Value) -> Result<BoxSpec, String> {
    let config = parse_json_section("box", name, value)?;
    config
        .boxes
        .get(name)
        .cloned()
        .ok_or_else(|| "the box did not parse".to_owned())
}

/// Validates a pool registered through the API, as [`parse_box_json`] a box.
pub fn parse_pool_json(name: &str, value: &Value) -> Result<PoolSpec, String> {
    let config = parse_json_section("pool", name, value)?;
    config
        .pools
        .get(name)
        .cloned()
        .ok_or_else(|| "the pool did not parse".to_owned())
}

/// Parses `value` as the table `[SECTION.NAME]` of an otherwise empty config.
fn parse_json_section(section: &str, name: &str, value: &Value) -> Result<Config, String> {
    check_name(name).map_err(|m| format!("name: {m}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| format!("the {section} must be a JSON object"))?;
    if object.contains_key("user_data_file") {
        return Err("user_data_file is not accepted through the API; send user_data".into());
    }
    if let Some((key, _)) = object.iter().find(|(_, v)| v.is_null()) {
        return Err(format!("{key}: null is not a value; leave the key out"));
    }
    let table = toml::Value::try_from(value).map_err(|e| format!("unrepresentable value: {e}"))?;
    let mut entries = toml::map::Map::new();
    entries.insert(name.to_owned(), table);
    let mut root = toml::map::Map::new();
    root.insert(section.into(), toml::Value::Table(entries));
    let text = toml::to_string(&toml::Value::Table(root))
        .map_err(|e| format!("unrepresentable value: {e}"))?;
    parse(Path::new("request"), &text).map_err(|e| e.message)
}

/// What a pool's demand may not do through the API: send one of the
/// daemon's environment variables, or ask a host the operator did not list.
fn refuse_demand(config: &Config, body: &Value) -> Result<(), String> {
    // The daemon's environment is the operator's: a caller naming a
    // variable would have its value sent to a URL of the caller's choosing.
    if body.pointer("/demand/bearer_env").is_some() {
        return Err(
            "demand.bearer_env: sends one of the daemon's environment variables; \
                    only possible from the config file, not through the API"
                .into(),
        );
    }
    // The daemon asks a demand URL every pass: only hosts the operator
    // listed (a Host header is refused for every pool, config or API).
    if let Some(url) = body.pointer("/demand/http").and_then(Value::as_str) {
        let host = url_host(url);
        if !super::demand_hosts::host_listed(&config.api_demand_hosts, &host) {
            return Err(format!(
                "demand.http: host {host:?} is not in [api] demand_hosts (none by default): \
                 a pool registered through the API asks for its demand only where the operator allows"
            ));
        }
    }
    Ok(())
}

/// The host of a URL, lower-cased; empty when it has none or does not parse.
fn url_host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default()
}

/// The API registers data, never code for the daemon's host: settings that
/// would make the daemon run a command or connect where the caller says are
/// refused unless `[api] allow_commands` is set, adoption of resources
/// spotkeeper did not create is refused, and an instance profile must be one
/// the config allows. The error names the field.
pub fn refuse_code(config: &Config, body: &Value) -> Result<(), String> {
    let ready = body.get("ready");
    if !config.api_allow_commands {
        if ready.and_then(|r| r.get("check")).and_then(Value::as_str) == Some("command") {
            return Err(
                "ready.check: \"command\" would run a command on the daemon's host; \
                        not accepted through the API unless [api] allow_commands = true"
                    .into(),
            );
        }
        if ready.and_then(|r| r.get("host")).is_some() {
            return Err(
                "ready.host: the daemon would connect to an address of the caller's \
                        choosing; not accepted through the API unless [api] allow_commands = true"
                    .into(),
            );
        }
        if body.get("on_interruption").is_some() {
            return Err(
                "on_interruption: the daemon would run a command of the caller's choosing \
                        on the box; not accepted through the API unless [api] allow_commands = true"
                    .into(),
            );
        }
        if body.get("ssh").is_some() {
            return Err("ssh: the daemon would connect where the caller says; \
                        not accepted through the API unless [api] allow_commands = true"
                .into());
        }
    }
    // Taking over what spotkeeper did not create is the operator's call.
    let adopts = [
        ("adopt_elastic_ip", body.get("adopt_elastic_ip")),
        ("data_volume.adopt", body.pointer("/data_volume/adopt")),
        ("root_volume.adopt", body.pointer("/root_volume/adopt")),
        ("dns.adopt", body.pointer("/dns/adopt")),
    ];
    if let Some((field, _)) = adopts
        .iter()
        .find(|(_, v)| v.is_some_and(|v| v != &Value::Bool(false)))
    {
        return Err(format!(
            "{field}: taking over a resource spotkeeper did not create is only \
             possible from the config file, not through the API"
        ));
    }
    // IMDSv1 lets a request forged through the instance read its role's
    // credentials: weakening that is the operator's call.
    if body
        .pointer("/metadata/http_tokens")
        .and_then(Value::as_str)
        == Some("optional")
    {
        return Err(
            "metadata.http_tokens: \"optional\" (IMDSv1) is only possible from the config file, \
             not through the API"
                .into(),
        );
    }
    refuse_demand(config, body)?;
    if let Some(profile) = body.get("iam_instance_profile") {
        let name = profile.as_str().unwrap_or_default();
        if !config.api_instance_profiles.iter().any(|p| p == name) {
            return Err(format!(
                "iam_instance_profile: {name:?} is not in [api] instance_profiles; \
                 the API may only hand out roles the config allows"
            ));
        }
    }
    Ok(())
}
