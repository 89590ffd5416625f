//! `lifeboat generate` (hidden): the man pages and shell completions the Debian package
//! ships (scripts/package), generated from the command line's own definition so they never
//! drift from it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Subcommand};
use clap_complete::Shell;

use crate::cli::Cli;

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write man pages into DIR: lifeboat.1 and one per subcommand, nested ones too
    /// (lifeboat-vault-init.1), hidden commands left out.
    Man { dir: PathBuf },
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: Shell },
}

pub fn run(cmd: GenerateCommand) -> Result<()> {
    match cmd {
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            // One page per command, titled with its full name (`man lifeboat-vault-init`).
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("write man pages into {}", dir.display()))?;
        }
        GenerateCommand::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "lifeboat",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(())
}
