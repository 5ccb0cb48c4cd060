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
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let v3 = has!("avx2") && has!("fma") && has!("bmi1") && has!("bmi2") && has!("lzcnt");
            if v3 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Level::V4;
            }
            if v3 {
                return Level::V3;
            }
        }
        Level::Baseline
    })
}

/// Run `f`, compiled for the best instruction set this CPU supports. `f` should be a closure
/// whose work is `#[inline(always)]` code, so that it is compiled into the feature-enabled copy.
#[inline]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    match level() {
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
