//! The launch settings boxes and pools share (image, zones, user data, tags,
//! root disk, fallback, names) and their validators: `box_spec` and
//! `pool_spec` both call these, so a key means the same in both tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use spotkeeper_cloud::{ImageRef, RootVolume};
use toml::Spanned;

use super::error::{At, ConfigError};
use super::keywords::Fallback;
use super::raw::RawDisk;

/// The launch settings boxes and pools share, validated the same way.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchTemplate {
    /// AMI id or alias (`ubuntu:24.04`, `al2023` …), resolved at launch.
    pub image: ImageRef,
    /// Allowed zones; `None`: every zone of the region (or the subnets').
    pub zones: Option<Vec<String>>,
    /// Key pair name.
    pub key_name: Option<String>,
    /// Security groups, by id or by name.
    pub security_groups: Vec<String>,
    /// User data (inline, or read from `user_data_file`).
    pub user_data: Option<String>,
    /// User tags.
    pub tags: BTreeMap<String, String>,
    /// IAM instance profile (name or ARN).
    pub iam_instance_profile: Option<String>,
    /// Root disk size and type; default: the image's.
    pub root_disk: Option<RootVolume>,
    /// `fallback = "on-demand"`: launch on-demand when no spot offering
    /// can be had (a box moves back to spot at the next chance).
    pub fallback_on_demand: bool,
    /// `metadata = { http_tokens = "optional" }`: the instance metadata
    /// service answers IMDSv1 requests too (default: IMDSv2 only).
    pub metadata_tokens: spotkeeper_cloud::MetadataTokens,
}

/// The EBS volume types a volume or root disk may have.
pub(crate) const EBS_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

/// `zones`: `None` for every zone; an empty list is an error.
pub(crate) fn validate_zones(
    zones: Option<Spanned<Vec<String>>>,
    at: At,
) -> Result<Option<Vec<String>>, ConfigError> {
    Ok(match zones {
        Some(z) if z.get_ref().is_empty() => {
            return Err(at(
                Some(z.span()),
                "zones is empty: list zones or leave the key out for every zone".into(),
            ));
        }
        Some(z) => Some(z.into_inner()),
        None => None,
    })
}

/// `subnet` or `subnets` (boxes and pools).
pub(crate) fn validate_subnets(
    one: Option<String>,
    many: Option<Spanned<Vec<String>>>,
    at: At,
) -> Result<Vec<String>, ConfigError> {
    match (one, many) {
        (Some(_), Some(s)) => Err(at(Some(s.span()), "set subnet or subnets, not both".into())),
        (Some(one), None) => Ok(vec![one]),
        (None, Some(s)) if s.get_ref().is_empty() => Err(at(
            Some(s.span()),
            "subnets is empty: list subnets or leave the key out".into(),
        )),
        (None, Some(s)) => Ok(s.into_inner()),
        (None, None) => Ok(Vec::new()),
    }
}

/// `user_data` or `user_data_file` (read relative to the config), at most 16 KiB.
pub(crate) fn validate_user_data(
    user_data: Option<Spanned<String>>,
    user_data_file: Option<Spanned<String>>,
    base: &Path,
    at: At,
) -> Result<Option<String>, ConfigError> {
    let user_data = match (user_data, user_data_file) {
        (Some(_), Some(f)) => {
            return Err(at(
                Some(f.span()),
                "set user_data or user_data_file, not both".into(),
            ));
        }
        (Some(d), None) => Some(d.into_inner()),
        (None, Some(f)) => {
            let file = base.join(f.get_ref());
            let data = std::fs::read_to_string(&file).map_err(|e| {
                at(
                    Some(f.span()),
                    format!("user_data_file {}: {e}", file.display()),
                )
            })?;
            Some(data)
        }
        (None, None) => None,
    };
    // EC2 limit: 16 KiB of user data before base64.
    if let Some(d) = &user_data
        && d.len() > 16 * 1024
    {
        return Err(at(
            None,
            format!("user data is {} bytes; EC2 accepts at most 16384", d.len()),
        ));
    }
    Ok(user_data)
}

/// User `tags`: not spotkeeper's, AWS's or `Name`, within AWS's sizes.
pub(crate) fn validate_tags(
    raw: BTreeMap<Spanned<String>, String>,
    at: At,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut tags = BTreeMap::new();
    for (k, v) in raw {
        let key = k.get_ref();
        if key.starts_with("spotkeeper:") || key.starts_with("aws:") || key == "Name" {
            return Err(at(
                Some(k.span()),
                format!(
                    "tag {key:?} is reserved (spotkeeper sets Name and spotkeeper:* itself; aws:* is AWS's)"
                ),
            ));
        }
        if key.is_empty() || key.len() > 128 || v.len() > 256 {
            return Err(at(
                Some(k.span()),
                format!("tag {key:?}: keys are 1-128 characters, values at most 256"),
            ));
        }
        tags.insert(k.into_inner(), v);
    }
    Ok(tags)
}

/// `root_disk = { size_gb, type }`.
pub(crate) fn validate_root_disk(
    root_disk: Option<Spanned<RawDisk>>,
    at: At,
) -> Result<Option<RootVolume>, ConfigError> {
    Ok(match root_disk {
        None => None,
        Some(d) => {
            let span = d.span();
            let d = d.into_inner();
            if !(1..=65536).contains(&d.size_gb) {
                return Err(at(
                    Some(span),
                    format!("root_disk.size_gb must be 1-65536, not {}", d.size_gb),
                ));
            }
            if !EBS_TYPES.contains(&d.kind.as_str()) {
                return Err(at(
                    Some(span),
                    format!(
                        "root_disk.type {:?} is not an EBS volume type (gp3, gp2, io2 …)",
                        d.kind
                    ),
                ));
            }
            Some(RootVolume {
                size_gb: d.size_gb,
                kind: d.kind,
            })
        }
    })
}

/// `fallback = "on-demand"`: launch on-demand when no spot offering can be had.
pub(crate) fn validate_fallback(fallback: Option<Fallback>) -> bool {
    fallback == Some(Fallback::OnDemand)
}

/// `~/x` is under the home directory; a relative path is relative to the config file.
pub(crate) fn expand_path(p: &str, base: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    base.join(p)
}

/// Names (owner, box) end up in tags, lock file names and client tokens.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 40 {
        return Err(format!("{name:?} must be 1 to 40 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "{name:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// `family.size`, e.g. `t3.micro`.
pub(crate) fn is_instance_type(s: &str) -> bool {
    match s.split_once('.') {
        Some((family, size)) => {
            let ok =
                |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            ok(family) && ok(size)
        }
        None => false,
    }
}
