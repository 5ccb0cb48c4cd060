//! The process metrics every Prometheus client library exports, under their standard names
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …; the "process collector"
//! of the Go and Python clients), so that the dashboards and rules written for any exporter
//! work on gradtel's daemons too. Dividing a collector's reports by its CPU seconds gives its
//! reports per CPU-second live, the figure issue 5's throughput goal is stated in.
//!
//! Read from `/proc/self` at each scrape (Linux). Where that is missing the metrics are left
//! out, not reported as zeros.

use std::fs;

use crate::Exposition;

/// One reading of the process's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open files; `None` when unlimited.
    pub max_fds: Option<u64>,
    /// Unix time the process started, seconds.
    pub start_time_seconds: f64,
    pub threads: u64,
}

/// CPU time the calling thread has used (the kernel's per-thread clock): what a piece of work
/// cost, without the time it spent waiting on a disk or for the CPU.
pub fn thread_cpu_time() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    std::time::Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Read the calling process's stats; `None` where `/proc/self` does not give them.
pub fn read() -> Option<ProcessStats> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses: the
    // fields after it start behind the last ')'. `fields[0]` is field 3 (the state).
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let boot: f64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let open_fds = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        resident_bytes: field(24)? * page,
        virtual_bytes: field(23)?,
        // `read_dir` itself holds one descriptor open while it counts.
        open_fds: open_fds.saturating_sub(1),
        max_fds: limit.current,
        start_time_seconds: boot + field(22)? as f64 / ticks,
        threads: field(20)?,
    })
}

/// Append the process metrics to `e` (nothing where they cannot be read).
pub fn render(e: &mut Exposition) {
    let Some(s) = read() else { return };
    e.value(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
        s.cpu_seconds,
    )
    .value(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        s.resident_bytes as f64,
    )
    .value(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        "gauge",
        s.virtual_bytes as f64,
    )
    .value(
        "process_open_fds",
        "Number of open file descriptors.",
        "gauge",
        s.open_fds as f64,
    )
    .value(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        "gauge",
        s.start_time_seconds,
    )
    .value(
        "process_threads",
        "Number of OS threads in the process.",
        "gauge",
        s.threads as f64,
    );
    if let Some(max) = s.max_fds {
        e.value(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            "gauge",
            max as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    fn process_cpu() -> f64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
    }

    #[test]
    fn a_threads_cpu_time_counts_its_work_and_not_its_sleep() {
        let before = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(100));
        let slept = thread_cpu_time() - before;
        let t = Instant::now();
        let mut x = 1u64;
        while t.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let worked = thread_cpu_time() - before - slept;
        assert!(slept < Duration::from_millis(10), "{slept:?}");
        // Burning 100 ms of wall time is at most 100 ms of CPU, and most of it on an idle core.
        assert!(worked <= Duration::from_millis(101), "{worked:?}");
        assert!(worked >= Duration::from_millis(30), "{worked:?}");
    }

    #[test]
    fn the_stats_agree_with_the_kernels_other_accounts() {
        let before = read().expect("Linux /proc");
        // Burn 200 ms of CPU on this thread.
        let t = Instant::now();
        let mut x = 1u64;
        while t.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let (after, reference) = (read().unwrap(), process_cpu());
        // /proc counts in clock ticks (10 ms at 100 Hz); the CPU-time clock in nanoseconds.
        let tick = 1.0 / rustix::param::clock_ticks_per_second() as f64;
        assert!(
            (after.cpu_seconds - reference).abs() <= 3.0 * tick,
            "{} against {reference}",
            after.cpu_seconds
        );
        assert!(after.cpu_seconds - before.cpu_seconds >= 0.2 - 3.0 * tick);

        // Resident memory as /proc/self/status says it (kB), within what a few pages move.
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let vm_rss_kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let rss = read().unwrap().resident_bytes as f64;
        assert!(
            (rss - vm_rss_kb * 1024.0).abs() <= 1024.0 * 1024.0,
            "{rss} against {vm_rss_kb} kB"
        );

        // A file opened is one descriptor more.
        let open = read().unwrap().open_fds;
        let f = fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(read().unwrap().open_fds, open + 1);
        drop(f);

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(after.start_time_seconds <= now && after.start_time_seconds > now - 3600.0);
        assert!(after.threads >= 1 && after.virtual_bytes >= after.resident_bytes);
    }

    #[test]
    fn rendered_under_the_standard_names() {
        let mut e = Exposition::new();
        render(&mut e);
        let text = e.finish();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            let v: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            // A test process may not have run a clock tick of CPU yet.
            let least = if name == "process_cpu_seconds_total" {
                0.0
            } else {
                1.0
            };
            assert!(v >= least, "{line}");
        }
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
    }
}
