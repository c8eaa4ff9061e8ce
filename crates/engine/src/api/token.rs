//! The API token file: made once (0600, in the state directory), read after.

use super::*;

/// The shortest API token accepted, from the config, the environment or
/// the token file alike.
pub const MIN_TOKEN_LEN: usize = 16;

/// The token: `[api] token`, else `$SPOTKEEPER_API_TOKEN`, else the one in
/// `file` (which must be this user's, mode 0600), generated there on first
/// start.
pub fn load_or_make_token(
    config: &Config,
    env: Option<String>,
    file: &std::path::Path,
) -> std::io::Result<Secret> {
    if let Some(t) = &config.api_token {
        return Ok(t.clone());
    }
    if let Some(t) = env.filter(|t| !t.is_empty()) {
        if t.len() < MIN_TOKEN_LEN {
            return Err(std::io::Error::other(format!(
                "SPOTKEEPER_API_TOKEN must be at least {MIN_TOKEN_LEN} characters"
            )));
        }
        return Ok(Secret::new(t));
    }
    if let Ok(meta) = std::fs::symlink_metadata(file) {
        use std::os::unix::fs::MetadataExt as _;
        // Whoever else can read or replace the file has the token.
        let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        if !meta.is_file() || meta.mode() & 0o077 != 0 || me.is_some_and(|me| meta.uid() != me) {
            return Err(std::io::Error::other(format!(
                "{} must be a regular file of this user with mode 0600 (it is {:o}, owner {}); fix it or remove it to have a new token made",
                file.display(),
                meta.mode() & 0o7777,
                meta.uid()
            )));
        }
        let t = std::fs::read_to_string(file)?.trim().to_owned();
        if t.len() >= MIN_TOKEN_LEN {
            return Ok(Secret::new(t));
        }
        return Err(std::io::Error::other(format!(
            "{} holds a token shorter than {MIN_TOKEN_LEN} characters",
            file.display()
        )));
    }
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bytes = [0u8; 24];
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut urandom, &mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(token.as_bytes())?;
    Ok(Secret::new(token))
}
