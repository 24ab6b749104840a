//! `agregat suppress`: primary and secondary suppression of a table made
//! elsewhere.

use std::path::PathBuf;

use super::Error;

/// Arguments of `agregat suppress`.
#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(long)]
    input: PathBuf,
    /// Dimension columns, comma-separated.
    #[arg(long, value_delimiter = ',')]
    dims: Vec<String>,
    /// The count column.
    #[arg(long)]
    value: String,
    /// Threshold: counts 1..k-1 are withheld.
    #[arg(long, default_value_t = 10)]
    k: u64,
    /// Label withheld cells `primary` (a small count) or `secondary`
    /// (withheld to protect one). Without it every withheld cell reads
    /// `withheld`: the labels would tell a reader which cells are small.
    #[arg(long)]
    show_reasons: bool,
}

pub(super) fn run(a: Args) -> Result<(), Error> {
    let text = std::fs::read_to_string(&a.input).map_err(Error::Runtime)?;
    let (out, summary) = crate::protect::suppress::suppress_csv_labelled(
        &text,
        &a.dims,
        &a.value,
        a.k,
        a.show_reasons,
    )
    .map_err(Error::Suppress)?;
    print!("{out}");
    if a.show_reasons {
        eprintln!("{summary}");
    } else {
        eprintln!(
            "{} cells: {} withheld, {} published",
            summary.cells,
            summary.primary + summary.secondary,
            summary.cells - summary.primary - summary.secondary
        );
    }
    Ok(())
}
