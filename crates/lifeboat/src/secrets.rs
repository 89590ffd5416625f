//! Where passphrases and key files come from. Secrets never go on the command line (other
//! users could read them in the process list): the environment, a file, or the terminal.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lifeboat_vault::format::KeyFile;

pub const PASSPHRASE_ENV: &str = "LIFEBOAT_PASSPHRASE";
pub const ENROLL_CODE_ENV: &str = "LIFEBOAT_ENROLL_CODE";

/// Where one kind of secret comes from: the variable `env`, else the terminal.
struct Ask<'a> {
    env: &'a str,
    /// What it is, for messages ("passphrase", "password", "enrollment code").
    what: &'a str,
    prompt: String,
    /// Asked twice on the terminal (a new secret, where a typo would lock the owner out).
    confirm: bool,
    /// What else would do, when there is no terminal ("pass --key-file, ").
    otherwise: &'a str,
}

impl Ask<'_> {
    fn read(self) -> Result<String> {
        let what = self.what;
        if let Ok(v) = std::env::var(self.env) {
            if v.is_empty() {
                bail!("{} is set but empty", self.env);
            }
            return Ok(v);
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "no {what}: set {}, {}or run on a terminal",
                self.env,
                self.otherwise
            );
        }
        let v = rpassword::prompt_password(format!("{}: ", self.prompt))
            .with_context(|| format!("reading the {what}"))?;
        if v.is_empty() {
            bail!("the {what} must not be empty");
        }
        if self.confirm && rpassword::prompt_password("Again, to be sure: ")? != v {
            bail!("the two {what}s differ; nothing was changed");
        }
        Ok(v)
    }
}

/// The one-time enrollment code of the agent at `address`: `LIFEBOAT_ENROLL_CODE`, else
/// asked on the terminal.
pub fn enrollment_code(address: &str) -> Result<String> {
    let code = Ask {
        env: ENROLL_CODE_ENV,
        what: "enrollment code",
        prompt: format!("Enrollment code the agent at {address} printed"),
        confirm: false,
        otherwise: "",
    }
    .read()?;
    let code = code.trim();
    if code.is_empty() {
        bail!("the enrollment code is empty");
    }
    Ok(code.to_string())
}

/// The passphrase: `LIFEBOAT_PASSPHRASE`, else asked on the terminal (twice when `confirm`).
pub fn passphrase(prompt: &str, confirm: bool) -> Result<String> {
    Ask {
        env: PASSPHRASE_ENV,
        what: "passphrase",
        prompt: prompt.to_string(),
        confirm,
        otherwise: "pass --key-file, ",
    }
    .read()
}

pub const USER_PASSWORD_ENV: &str = "LIFEBOAT_USER_PASSWORD";

/// A dashboard user's new password: `LIFEBOAT_USER_PASSWORD`, else asked twice on the
/// terminal. (The server checks its length.)
pub fn user_password(user: &str) -> Result<String> {
    Ask {
        env: USER_PASSWORD_ENV,
        what: "password",
        prompt: format!("Password for {user}"),
        confirm: true,
        otherwise: "",
    }
    .read()
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
