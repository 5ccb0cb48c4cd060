//! Running a hot loop compiled for the widest vector instructions the CPU has.
//!
//! The workspace is compiled for baseline x86-64 (SSE2), so the agent's per-value kernels —
//! the summary's block passes and the projection's signed adds — would otherwise use 128-bit
//! vectors. [`dispatch`] runs a closure inside a function compiled with AVX-512 (x86-64-v4) or
//! AVX2 + FMA (x86-64-v3) enabled, whichever the CPU reports at run time, and the closure's
//! body, inlined there, is vectorised for it. Elsewhere it runs the closure as compiled.
//!
//! The arithmetic is identical in every copy: Rust never contracts `a * b + c` into an FMA, and
//! the kernels fix their summation order with explicit lane arrays, so results are the same
//! bits on every CPU (tests run whichever copy the test machine picks and compare with plain
//! scalar references).
//!
//! `GRADTEL_SIMD=avx2` or `GRADTEL_SIMD=baseline` in the environment caps the level (read
//! once per process), for CPUs that slow their other cores' clocks under AVX-512 or to compare
//! the copies; any other value, or none, means the best available.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    V3,
    #[cfg(target_arch = "x86_64")]
    V4,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("GRADTEL_SIMD").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let v3 = has!("avx2") && has!("fma") && has!("bmi1") && has!("bmi2") && has!("lzcnt");
            let v4 = has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
            choose(&cap, v3, v3 && v4)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = cap;
            Level::Baseline
        }
    })
}

#[cfg(test)]
thread_local! {
    /// A level forced on this thread, so tests can run every copy in one process.
    static FORCED: std::cell::Cell<Option<Level>> = const { std::cell::Cell::new(None) };
}

/// Run `f` once per level this CPU supports (with [`dispatch`] forced to it on this thread),
/// and return the results in order.
#[cfg(test)]
pub(crate) fn at_each_level<R>(mut f: impl FnMut() -> R) -> Vec<R> {
    let mut levels = vec![Level::Baseline];
    #[cfg(target_arch = "x86_64")]
    {
        if matches!(level(), Level::V3 | Level::V4) {
            levels.push(Level::V3);
        }
        if level() == Level::V4 {
            levels.push(Level::V4);
        }
    }
    let out = levels
        .into_iter()
        .map(|l| {
            FORCED.set(Some(l));
            f()
        })
        .collect();
    FORCED.set(None);
    out
}

/// The level for a `GRADTEL_SIMD` value and what the CPU has.
#[cfg(target_arch = "x86_64")]
fn choose(cap: &str, v3: bool, v4: bool) -> Level {
    match cap {
        "baseline" => Level::Baseline,
        _ if v4 && cap != "avx2" => Level::V4,
        _ if v3 => Level::V3,
        _ => Level::Baseline,
    }
}

/// Run `f`, compiled for the best instruction set this CPU supports. `f` should be a closure
/// whose work is `#[inline(always)]` code, so that it is compiled into the feature-enabled copy.
#[inline]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(test)]
    let level = FORCED.get().unwrap_or_else(level);
    #[cfg(not(test))]
    let level = level();
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level` returned V4 only after detecting every feature `v4` enables.
        Level::V4 => unsafe { v4(f) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level` returned V3 only after detecting every feature `v3` enables.
        Level::V3 => unsafe { v3(f) },
        Level::Baseline => f(),
    }
}

/// Name of the instruction set [`dispatch`] uses on this CPU (for benchmark reports).
pub fn name() -> &'static str {
    match level() {
        #[cfg(target_arch = "x86_64")]
        Level::V4 => "x86-64-v4 (AVX-512)",
        #[cfg(target_arch = "x86_64")]
        Level::V3 => "x86-64-v3 (AVX2, FMA)",
        Level::Baseline => "baseline",
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt,avx512f,avx512bw,avx512dq,avx512vl")]
fn v4<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
fn v3<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_environment_caps_the_level_and_never_raises_it() {
        use super::{Level, choose};
        assert_eq!(choose("", true, true), Level::V4);
        assert_eq!(choose("avx2", true, true), Level::V3);
        assert_eq!(choose("baseline", true, true), Level::Baseline);
        assert_eq!(choose("avx512", true, false), Level::V3);
        assert_eq!(choose("", false, false), Level::Baseline);
        assert_eq!(choose("avx2", false, false), Level::Baseline);
    }

    #[test]
    fn dispatch_runs_the_closure_once_and_returns_its_value() {
        let mut calls = 0;
        let out = super::dispatch(|| {
            calls += 1;
            (0..1000u64).map(|x| x * x).sum::<u64>()
        });
        assert_eq!(calls, 1);
        assert_eq!(out, 332_833_500);
        assert!(!super::name().is_empty());
    }
}
