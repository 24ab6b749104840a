//! The `agregat` command line: parse, run, exit. Everything else is in
//! [`agregat::cli`].

fn main() -> std::process::ExitCode {
    agregat::cli::main()
}
