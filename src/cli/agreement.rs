//! `agregat agreement`: validate a policy directory, mint tokens.

use std::path::PathBuf;

use super::Error;
use crate::agreement::{Policy, add_token};
use crate::calendar::{Clock, SystemClock};

/// `agregat agreement` subcommands.
#[derive(clap::Subcommand)]
pub(super) enum Command {
    /// Validate every agreement file of a policy directory; each problem is
    /// reported with its file and line.
    Check {
        #[arg(default_value = "data-samples/agreements")]
        dir: PathBuf,
    },
    /// Mint a new token for an agreement: the token is printed once, only
    /// its SHA-256 is appended to the agreement file as a [[token]] block.
    /// Revoke by deleting the block; a running service reloads either way.
    Token {
        /// Agreement id, e.g. disdikbud-pontianak.
        id: String,
        #[arg(long, default_value = "data-samples/agreements")]
        dir: PathBuf,
    },
}

pub(super) fn run(c: Command) -> Result<(), Error> {
    let today = SystemClock.today();
    match c {
        Command::Check { dir } => {
            let policy = Policy::load_dir(&dir, today)?;
            for p in policy.agreements() {
                println!(
                    "{}: OK ({}, {}, {} .. {}, {} tokens)",
                    p.id(),
                    p.institution,
                    p.stage,
                    p.valid_from,
                    p.valid_until,
                    p.tokens.len()
                );
            }
        }
        Command::Token { id, dir } => {
            let (token, token_id, file) = add_token(&dir, &id, today)?;
            eprintln!(
                "added token '{token_id}' (its SHA-256 only) to {}; a running service picks it up within seconds.\nThe token is shown once; hand it to {id} over a secure channel:",
                file.display()
            );
            println!("{token}");
        }
    }
    Ok(())
}
