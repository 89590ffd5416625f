//! Where passphrases and key files come from. Secrets never go on the command line (other
//! users could read them in the process list): the environment, a file, or the terminal.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lifeboat_vault::format::KeyFile;

pub const PASSPHRASE_ENV: &str = "LIFEBOAT_PASSPHRASE";
pub const ENROLL_CODE_ENV: &str = "LIFEBOAT_ENROLL_CODE";

/// The one-time enrollment code of the agent at `address`: `LIFEBOAT_ENROLL_CODE`, else
/// asked on the terminal.
pub fn enrollment_code(address: &str) -> Result<String> {
    if let Ok(c) = std::env::var(ENROLL_CODE_ENV) {
        if c.trim().is_empty() {
            bail!("{ENROLL_CODE_ENV} is set but empty");
        }
        return Ok(c.trim().to_string());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no enrollment code: set {ENROLL_CODE_ENV} to the code the agent at {address} printed, or run on a terminal");
    }
    let c = rpassword::prompt_password(format!("Enrollment code the agent at {address} printed: "))
        .context("reading the enrollment code")?;
    if c.trim().is_empty() {
        bail!("the enrollment code must not be empty");
    }
    Ok(c.trim().to_string())
}

/// The passphrase: `LIFEBOAT_PASSPHRASE`, else asked on the terminal (twice when `confirm`).
pub fn passphrase(prompt: &str, confirm: bool) -> Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        if p.is_empty() {
            bail!("{PASSPHRASE_ENV} is set but empty");
        }
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set {PASSPHRASE_ENV}, pass --key-file, or run on a terminal");
    }
    let p = rpassword::prompt_password(format!("{prompt}: ")).context("reading the passphrase")?;
    if p.is_empty() {
        bail!("the passphrase must not be empty");
    }
    if confirm {
        let again = rpassword::prompt_password("Again, to be sure: ")?;
        if again != p {
            bail!("the two passphrases differ; nothing was changed");
        }
    }
    Ok(p)
}

pub const USER_PASSWORD_ENV: &str = "LIFEBOAT_USER_PASSWORD";

/// A dashboard user's new password: `LIFEBOAT_USER_PASSWORD`, else asked twice on the
/// terminal. (The server checks its length.)
pub fn user_password(user: &str) -> Result<String> {
    if let Ok(p) = std::env::var(USER_PASSWORD_ENV) {
        if p.is_empty() {
            bail!("{USER_PASSWORD_ENV} is set but empty");
        }
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: set {USER_PASSWORD_ENV}, or run on a terminal");
    }
    let p = rpassword::prompt_password(format!("Password for {user}: "))
        .context("reading the password")?;
    let again = rpassword::prompt_password("Again, to be sure: ")?;
    if again != p {
        bail!("the two passwords differ; nothing was changed");
    }
    Ok(p)
}

pub fn read_key_file(path: &Path) -> Result<KeyFile> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
    KeyFile::decode(&bytes).with_context(|| format!("key file {}", path.display()))
}

/// Writes a key file readable by its owner only; refuses to overwrite.
pub fn write_key_file(path: &Path, key: &KeyFile) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating key file {} (it must not exist yet)",
                path.display()
            )
        })?;
    f.write_all(&key.encode())?;
    f.sync_all()?;
    Ok(())
}
