//! Exit codes a script can act on, after restic's and kubectl's conventions: one code per
//! cause a script handles differently (retry later, fix the credentials, ask for the
//! passphrase again, stop), 1 for everything else. The message on stderr says what to do
//! in every case; README, "Exit codes", lists them.

/// The command failed; the message says why and what to do.
pub const FAILURE: u8 = 1;
/// The command line or a config file is wrong (clap's code for usage errors).
pub const USAGE: u8 = 2;
/// `vault verify` found damage.
pub const DAMAGED: u8 = 3;
/// `protect --wait --timeout` or `failover --wait-for` gave up waiting (what it waited for goes on).
pub const TIMED_OUT: u8 = 4;
/// The server refused the API token (401): a wrong, revoked or missing token.
pub const BAD_CREDENTIALS: u8 = 5;
/// No server answered at the address (down, wrong address, firewall): worth a retry.
pub const UNREACHABLE: u8 = 6;
/// The vault's passphrase opens none of its key slots (or the key file is not its key).
pub const WRONG_PASSPHRASE: u8 = 7;
/// Ctrl-C (SIGINT) stopped the command (128 + 2); what runs on the server goes on.
pub const INTERRUPTED: u8 = 130;
/// SIGTERM stopped the command (128 + 15).
pub const TERMINATED: u8 = 143;

/// The server answered 401 to the API token.
#[derive(Debug, thiserror::Error)]
#[error("the server refused the API token (401): {0}; check LIFEBOAT_TOKEN or --token-file (the server printed a token at first start; `lifeboat users` makes more)")]
pub struct BadCredentials(pub String);

/// No server answered.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the server at {0} (is `lifeboat server` running there? --server or LIFEBOAT_SERVER names it)")]
pub struct Unreachable(pub String);

/// Waits for Ctrl-C or SIGTERM; the exit code for the one that came.
pub async fn stopping_signal() -> u8 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the signals keep their default action: the same codes.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => INTERRUPTED,
        _ = term.recv() => TERMINATED,
    }
}

/// What a command stopped by a signal says, as text or (`--json`) as a JSON object.
pub fn say_interrupted(code: u8, json: bool) {
    let what = if code == TERMINATED {
        "terminated"
    } else {
        "interrupted"
    };
    let message = format!(
        "{what}; a server operation it started goes on (`lifeboat operations list` shows it)"
    );
    if json {
        eprintln!(
            "{}",
            serde_json::json!({"error": message, "exit_code": code})
        );
    } else {
        eprintln!("error: {message}");
    }
}

use lifeboat_vault::format::FormatError;

/// The exit code for `e`: its own cause's, or the first cause in its chain that has one.
pub fn code_of(e: &anyhow::Error) -> u8 {
    // A context added with `.context(…)` is found by downcasting the error itself, not by
    // walking its chain.
    if e.downcast_ref::<crate::vault_cmd::Damaged>().is_some() {
        return DAMAGED;
    }
    if e.downcast_ref::<crate::protect_cmd::TimedOut>().is_some() {
        return TIMED_OUT;
    }
    if e.downcast_ref::<crate::config_file::BadConfigFile>()
        .is_some()
    {
        return USAGE;
    }
    if e.downcast_ref::<BadCredentials>().is_some() {
        return BAD_CREDENTIALS;
    }
    if e.downcast_ref::<Unreachable>().is_some() {
        return UNREACHABLE;
    }
    for cause in e.chain() {
        // VaultError wraps FormatError transparently: the chain shows only one of them.
        let format = cause.downcast_ref::<FormatError>().or_else(|| match cause
            .downcast_ref::<lifeboat_vault::VaultError>(
        ) {
            Some(lifeboat_vault::VaultError::Format(f)) => Some(f),
            _ => None,
        });
        if matches!(
            format,
            Some(FormatError::WrongPassphrase | FormatError::WrongKey { .. })
        ) {
            return WRONG_PASSPHRASE;
        }
    }
    FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn causes_keep_their_code_under_any_context() {
        let e = anyhow::Error::new(std::io::Error::other("refused"))
            .context(Unreachable("http://x".into()))
            .context("listing hosts");
        assert_eq!(code_of(&e), UNREACHABLE);
        let e: anyhow::Error = BadCredentials("no".into()).into();
        assert_eq!(code_of(&e.context("listing hosts")), BAD_CREDENTIALS);
        let e = Err::<(), _>(lifeboat_vault::VaultError::Format(
            FormatError::WrongPassphrase,
        ))
        .context("opening the vault")
        .unwrap_err();
        assert_eq!(code_of(&e), WRONG_PASSPHRASE);
        assert_eq!(code_of(&anyhow::anyhow!("anything else")), FAILURE);
    }
}
