//! The `agregat` command line: parse, run, exit. Everything else is in
//! [`agregat::cli`].

/// With the `mimalloc` feature (memory bench only), mimalloc allocates.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    agregat::cli::main()
}
