//! The user data spotkeeper generates for boxes with persistent volumes: the
//! boot script (`scripts/boot.sh`) with the volume ids filled in, followed by
//! the user's own user data. It never carries credentials: volumes are
//! attached from outside and the script only waits for them.
//!
//! The user's data runs after the volume is mounted. A shell script (`#!`) is
//! embedded in the boot script and run at its end; anything else (`#cloud-config`,
//! `#cloud-boothook`, `#include`) goes into a MIME multipart message after the
//! boot script, and cloud-init runs user scripts in part order.

use base64::Engine as _;

/// The boot script template.
pub const BOOT_TEMPLATE: &str = include_str!("../scripts/boot.sh");

/// The boot script as it goes into user data: the template without its
/// comment lines, blank lines and indentation (EC2 takes 16 KiB of user
/// data, the user's own script included), but for the shebang and the line
/// naming the box. Nothing in the script depends on leading blanks (its
/// here-documents end at column 0 and carry shell code).
fn compact(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    for (n, line) in template.lines().enumerate() {
        let code = line.trim_start();
        if n < 2 {
            out.push_str(line);
        } else if code.is_empty() || (code.starts_with('#') && !code.starts_with("#!")) {
            continue;
        } else {
            out.push_str(code);
        }
        out.push('\n');
    }
    out
}

/// EC2 refuses user data over 16 KiB (before base64).
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// Where a volume will be attached and, for data, mounted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootVolumes {
    /// Data volume.
    pub data: Option<BootData>,
    /// Persistent root: (volume id, device).
    pub root: Option<(String, String)>,
    /// `agent = true`: the agent's unit, with the box's hook.
    pub agent: Option<BootAgent>,
}

/// The agent as the boot script installs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootAgent {
    /// The `on_interruption` command, if any (carried base64-encoded).
    pub command: Option<String>,
    /// Its timeout in seconds.
    pub timeout_secs: u64,
}

/// The data volume as the boot script sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootData {
    /// Volume id.
    pub volume: String,
    /// Requested device (`/dev/sdf`).
    pub device: String,
    /// Mount point.
    pub mount: String,
    /// Known to be new: spotkeeper created it empty and no box has used it
    /// yet. Only then may the script make a filesystem on it.
    pub new: bool,
}

/// Why user data could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    /// A value would break out of the script.
    #[error("{what} {value:?} holds characters the boot script cannot carry safely")]
    Unsafe {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// Over EC2's limit.
    #[error("the generated user data is {0} bytes; EC2 accepts at most 16384 (shorten user_data)")]
    TooLarge(usize),
}

fn safe(what: &'static str, value: &str) -> Result<String, BootError> {
    let ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(BootError::Unsafe {
            what,
            value: value.to_owned(),
        })
    }
}

/// The user data for a box: `user` unchanged when there are no volumes,
/// otherwise the boot script (with `user` run after the volume is mounted).
pub fn user_data(
    box_name: &str,
    volumes: &BootVolumes,
    user: Option<&str>,
) -> Result<Option<String>, BootError> {
    if volumes.data.is_none() && volumes.root.is_none() && volumes.agent.is_none() {
        return Ok(user.map(str::to_owned));
    }
    let (dv, dd, dm, dn) = match &volumes.data {
        Some(d) => (
            safe("data volume", &d.volume)?,
            safe("device", &d.device)?,
            safe("mount", &d.mount)?,
            if d.new { "1" } else { "0" },
        ),
        None => (String::new(), String::new(), String::new(), "0"),
    };
    let (rv, rd) = match &volumes.root {
        Some((v, d)) => (safe("root volume", v)?, safe("device", d)?),
        None => Default::default(),
    };
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let (agent, hook, timeout) = match &volumes.agent {
        Some(a) => (
            "1",
            a.command.as_deref().map(b64).unwrap_or_default(),
            a.timeout_secs.to_string(),
        ),
        None => ("0", String::new(), String::new()),
    };
    let embedded = user.filter(|u| u.starts_with("#!"));
    let script = compact(BOOT_TEMPLATE)
        .replace("@BOX@", &safe("box", box_name)?)
        .replace("@DATA_VOLUME@", &dv)
        .replace("@DATA_DEVICE@", &dd)
        .replace("@DATA_MOUNT@", &dm)
        .replace("@DATA_NEW@", dn)
        .replace("@ROOT_VOLUME@", &rv)
        .replace("@ROOT_DEVICE@", &rd)
        .replace("@AGENT@", agent)
        .replace("@AGENT_HOOK@", &hook)
        .replace("@AGENT_TIMEOUT@", &timeout)
        .replace("@USER_SCRIPT@", &embedded.map(b64).unwrap_or_default());
    let out = match user {
        Some(u) if embedded.is_none() => multipart(&script, u),
        _ => script,
    };
    if out.len() > USER_DATA_LIMIT {
        return Err(BootError::TooLarge(out.len()));
    }
    Ok(Some(out))
}

fn multipart(script: &str, user: &str) -> String {
    let kind = match user.lines().next().unwrap_or("").trim() {
        l if l.starts_with("#cloud-config") => "text/cloud-config",
        l if l.starts_with("#cloud-boothook") => "text/cloud-boothook",
        l if l.starts_with("#include") => "text/x-include-url",
        l if l.starts_with("#part-handler") => "text/part-handler",
        _ => "text/x-shellscript",
    };
    let boundary = "==spotkeeper-boundary==";
    format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n\
         --{boundary}\nContent-Type: text/x-shellscript; charset=\"utf-8\"\nContent-Disposition: attachment; filename=\"00-spotkeeper-volumes.sh\"\n\n{script}\n\
         --{boundary}\nContent-Type: {kind}; charset=\"utf-8\"\nContent-Disposition: attachment; filename=\"10-user-data\"\n\n{user}\n\
         --{boundary}--\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BootVolumes {
        BootVolumes {
            data: Some(BootData {
                volume: "vol-0abc".into(),
                device: "/dev/sdf".into(),
                mount: "/data".into(),
                new: true,
            }),
            root: None,
            agent: None,
        }
    }

    #[test]
    fn without_volumes_the_users_data_passes_unchanged() {
        assert_eq!(
            user_data("dev", &BootVolumes::default(), Some("#!/bin/sh\necho hi"))
                .expect("ok")
                .as_deref(),
            Some("#!/bin/sh\necho hi")
        );
        assert_eq!(
            user_data("dev", &BootVolumes::default(), None).expect("ok"),
            None
        );
    }

    #[test]
    fn a_shell_script_is_embedded_and_run_after_the_mount() {
        let out = user_data("dev", &data(), Some("#!/bin/sh\necho hi\n"))
            .expect("ok")
            .expect("some");
        assert!(
            out.starts_with("#!/bin/sh\n# spotkeeper boot script"),
            "{out}"
        );
        assert!(out.contains(": \"${SK_DATA_VOLUME:=vol-0abc}\""));
        let b64 = base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\necho hi\n");
        assert!(out.contains(&format!(": \"${{SK_USER_SCRIPT:={b64}}}\"")));
        for placeholder in [
            "@BOX@",
            "@DATA_VOLUME@",
            "@DATA_DEVICE@",
            "@DATA_MOUNT@",
            "@DATA_NEW@",
            "@ROOT_VOLUME@",
            "@ROOT_DEVICE@",
            "@USER_SCRIPT@",
        ] {
            assert!(
                !out.contains(placeholder),
                "{placeholder} left in the script"
            );
        }
    }

    #[test]
    fn cloud_config_goes_into_a_multipart_message_after_the_script() {
        let out = user_data("dev", &data(), Some("#cloud-config\npackages: [htop]\n"))
            .expect("ok")
            .expect("some");
        assert!(out.starts_with("Content-Type: multipart/mixed"), "{out}");
        let script_at = out.find("00-spotkeeper-volumes.sh").expect("script part");
        let user_at = out
            .find("Content-Type: text/cloud-config")
            .expect("user part");
        assert!(script_at < user_at);
    }

    #[test]
    fn unsafe_values_and_oversized_data_are_refused() {
        let bad = BootVolumes {
            data: Some(BootData {
                volume: "vol-1".into(),
                device: "/dev/sdf".into(),
                mount: "/data; rm -rf /".into(),
                new: false,
            }),
            root: None,
            agent: None,
        };
        assert!(matches!(
            user_data("dev", &bad, None),
            Err(BootError::Unsafe { .. })
        ));
        let big = format!("#!/bin/sh\n{}", "x".repeat(USER_DATA_LIMIT));
        assert!(matches!(
            user_data("dev", &data(), Some(&big)),
            Err(BootError::TooLarge(_))
        ));
    }

    #[test]
    fn the_script_goes_without_comments_and_indentation_and_leaves_room_for_the_users() {
        let both = BootVolumes {
            root: Some(("vol-0abc".into(), "/dev/sdg".into())),
            ..data()
        };
        let out = user_data("dev", &both, None).expect("ok").expect("some");
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("#!/bin/sh"));
        assert!(
            lines
                .next()
                .is_some_and(|l| l.starts_with("# spotkeeper boot script")),
            "{out}"
        );
        for line in lines {
            assert!(
                line.starts_with("#!") || !line.starts_with('#'),
                "a comment line: {line}"
            );
            assert!(!line.starts_with(' '), "indented: {line}");
            assert!(!line.is_empty(), "a blank line");
        }
        assert!(
            out.len() < USER_DATA_LIMIT - 5 * 1024,
            "{} bytes leave under 5 KiB of EC2's 16 for the user's own",
            out.len()
        );
    }

    #[test]
    fn user_data_never_carries_credentials() {
        let out = user_data("dev", &data(), None).expect("ok").expect("some");
        for needle in ["AWS_ACCESS_KEY", "AWS_SECRET", "aws_secret", "SessionToken"] {
            assert!(!out.contains(needle), "{needle} in user data");
        }
    }
}
