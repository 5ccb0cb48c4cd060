//! `gradtel-collector`: receives agents' reports and writes the Parquet lake.

use clap::Parser;
use gradtel_collector::{Collector, CollectorConfig};

const ABOUT: &str = "\
gradtel collector: receives per-step shard reports from gradtel agents, assembles each
(run, step) across ranks and shards, merges the summaries per tensor, per layer and for the
whole model, and writes them as Parquet under <out>/run=<id>/table=steps/ (Hive partitions,
readable by DuckDB, pandas/pyarrow, Spark).

A step is written when every rank and shard has reported, or when --straggler-timeout has passed
since its first report (missing ranks are recorded in the row). Files are written under a hidden
temporary name and renamed into place. A report is acknowledged to its agent once it is synced
to the collector's write-ahead log (<out>/_wal), which is replayed after a crash; agents resend
anything not acknowledged.";

const EXAMPLES: &str = "\
Examples:
  gradtel-collector --listen 127.0.0.1:4317 --out ./gradtel-data
  gradtel-collector --listen 0.0.0.0:4317 --out /data/gradtel --roll-interval 10s --metrics 0.0.0.0:9464

Query the output:
  duckdb -c \"SELECT step, scope, l2_norm FROM read_parquet('gradtel-data/**/*.parquet', hive_partitioning=1) WHERE scope_kind='model' ORDER BY step\"";

#[derive(Parser)]
#[command(name = "gradtel-collector", version, about = ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    config: CollectorConfig,

    /// Log filter (tracing EnvFilter syntax), e.g. info, debug, gradtel_collector=debug.
    #[arg(long, env = "GRADTEL_LOG", default_value = "info")]
    log: String,
}

/// With the `tcmalloc` feature this binary links gperftools' tcmalloc ahead of libc, so every
/// `malloc` of the process — Rust's and the C libraries' — is tcmalloc's. The collector
/// allocates a report's buffers (1–20 kB: histograms, projections, the wire bytes) on the
/// runtime's threads and frees them on the pipeline's; glibc keeps blocks above 1 kB in shared
/// bins, and serving them was ≈ 20 % of the collector's CPU (bench/RESULTS.md, session 14).
#[cfg(feature = "tcmalloc")]
mod tcmalloc {
    use std::ffi::{CStr, c_char, c_int};

    // Named by file: Debian's runtime package has no unversioned `libtcmalloc_minimal.so`.
    #[link(
        name = "libtcmalloc_minimal.so.4",
        kind = "dylib",
        modifiers = "+verbatim"
    )]
    unsafe extern "C" {
        fn tc_version(
            major: *mut c_int,
            minor: *mut c_int,
            patch: *mut *const c_char,
        ) -> *const c_char;
    }

    /// tcmalloc's own version string, e.g. "gperftools 2.10" (the call also keeps the library
    /// among the binary's dependencies).
    pub fn version() -> String {
        // SAFETY: gperftools' tc_version writes through each out-pointer only when it is
        // non-null (all are null here) and returns its static version string or null.
        let v = unsafe {
            tc_version(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if v.is_null() {
            return "unknown".into();
        }
        // SAFETY: non-null, so it points at tcmalloc's NUL-terminated static TC_VERSION_STRING.
        unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned()
    }
}

/// The allocator serving this process, for the start-up log.
fn allocator() -> String {
    #[cfg(feature = "tcmalloc")]
    return format!("tcmalloc ({})", tcmalloc::version());
    #[cfg(not(feature = "tcmalloc"))]
    return "system malloc".into();
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    gradtel::init_logging(&cli.log);
    cli.config.load_file()?;
    let threads = cli.config.runtime_threads();
    tracing::info!(allocator = %allocator(), runtime_threads = threads, "gradtel-collector starting");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(serve(cli.config))
}

async fn serve(config: CollectorConfig) -> anyhow::Result<()> {
    let collector = Collector::start(config).await?;
    // A line the caller (or a test) can wait for; the port matters when --listen used port 0.
    if let Some(m) = collector.metrics_addr() {
        println!("gradtel-collector metrics on {m}");
    }
    println!("gradtel-collector listening on {}", collector.addr());
    gradtel::wait_for_signal().await;
    tracing::info!("signal received; writing what is pending");
    collector.shutdown(std::time::Duration::from_secs(2)).await;
    Ok(())
}
