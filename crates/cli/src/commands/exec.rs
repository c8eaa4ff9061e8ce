//! `spotkeeper exec BOX -- CMD…` and `spotkeeper ssh BOX`, through the system
//! `ssh` with the box's `ssh` settings. Output streams straight through.

use std::process::{Command, ExitCode};

use crate::Failure;
use crate::cli::Args;

/// ssh's own exit status for "could not connect or authenticate".
const SSH_FAILED: u8 = 255;

async fn ssh_args(args: &Args, box_name: &str) -> Result<Vec<String>, Failure> {
    let (config, spec, cloud) = super::open_box(args, box_name).await?;
    let instance = super::require_live(&cloud, &config, box_name).await?;
    let address = spec.ssh.address(instance.address()).ok_or_else(|| {
        Failure::Failed(anyhow::anyhow!(
            "instance {} has no IP address; set ssh.host for box {box_name}",
            instance.id
        ))
    })?;
    spec.ssh
        .args(&address)
        .map_err(|e| Failure::Usage(e.into()))
}

/// What the remote shell runs. ssh joins its words with spaces, so each
/// word is quoted to keep it one word there (`exec dev -- sh -c 'exit 3'`
/// runs `sh -c 'exit 3'`, as `kubectl exec` would); a single word is passed
/// as it is, so `exec dev -- 'ls | wc -l'` is still a shell line.
fn remote_command(command: &[String]) -> String {
    match command {
        [line] => line.clone(),
        words => shell_words::join(words),
    }
}

pub async fn exec(args: &Args, box_name: &str, command: &[String]) -> Result<ExitCode, Failure> {
    let mut a = ssh_args(args, box_name).await?;
    let dest = a.pop().expect("ssh args end with the destination");
    a.extend(["-o".into(), "BatchMode=yes".into(), dest]);
    a.push(remote_command(command));
    let status = Command::new("ssh").args(&a).status().map_err(|e| {
        Failure::Failed(anyhow::anyhow!(
            "cannot run ssh: {e} (install the OpenSSH client)"
        ))
    })?;
    match status.code() {
        Some(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(SSH_FAILED))),
        None => Err(Failure::Failed(anyhow::anyhow!(
            "ssh was killed by a signal"
        ))),
    }
}

pub async fn ssh(args: &Args, box_name: &str) -> Result<ExitCode, Failure> {
    let a = ssh_args(args, box_name).await?;
    let status = Command::new("ssh").args(&a).status().map_err(|e| {
        Failure::Failed(anyhow::anyhow!(
            "cannot run ssh: {e} (install the OpenSSH client)"
        ))
    })?;
    Ok(ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(SSH_FAILED),
    ))
}

#[cfg(test)]
mod tests {
    use super::remote_command;

    #[test]
    fn words_stay_words_and_one_word_is_a_shell_line() {
        let w = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(remote_command(&w(&["ls | wc -l"])), "ls | wc -l");
        assert_eq!(
            remote_command(&w(&["sh", "-c", "exit 3"])),
            "sh -c 'exit 3'"
        );
        assert_eq!(
            remote_command(&w(&["printf", "%s\\n", "it's a \"b c\""])),
            "printf '%s\\n' 'it'\\''s a \"b c\"'"
        );
    }
}
