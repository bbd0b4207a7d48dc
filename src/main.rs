//! The `tokengate` binary: parses the command line and hands over to
//! [`tokengate::cli::run`].

use clap::Parser;

/// mimalloc rather than glibc's malloc: every connection allocates its
/// task, its I/O registration and (through hyper) its buffers, and glibc
/// spent a measurable share of a short connection's CPU sorting its bins
/// (BENCHMARKS.md, twelfth session).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = tokengate::cli::Cli::parse();
    tokengate::signals::init_tracing(tokengate::cli::log_format(&cli));
    // On one core (a container limit, `taskset`), a current-thread runtime
    // does the same work without the multi-thread scheduler's cross-thread
    // bookkeeping; on more, the work-stealing runtime uses them all.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokengate: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tokengate::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokengate: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
