//! Leaving faer's vector kernels with the upper halves of the vector registers cleared.
//!
//! faer picks AVX2 / AVX-512 kernels at run time, and some of them (the matrix-product
//! micro-kernels) return with the upper halves of the YMM/ZMM registers still marked in use.
//! Everything else in this workspace is compiled for baseline x86-64, i.e. legacy SSE
//! encodings; on Intel cores since Skylake each such instruction then carries a merge
//! dependency on those dirty upper bits (Intel's optimisation manual, "Mixing AVX code with SSE
//! code"). Measured on the 2-core Sapphire Rapids VM of `bench/RESULTS.md`: the collector's
//! Clauset fits run 5.7 × slower on a thread after one faer product, and at full speed again
//! after a `vzeroupper` (`cargo bench -p gradtel-stats --bench simd_state`).
//!
//! [`after_vector_kernels`] executes `vzeroupper` — what compilers emit at the end of AVX code
//! — on the calling thread, and on every thread of rayon's global pool after a parallel call.

/// Clear the upper vector state on this thread, and on the global rayon pool's threads when
/// `parallel` (faer's parallel kernels ran there).
pub(crate) fn after_vector_kernels(parallel: bool) {
    clear_upper_state();
    if parallel {
        rayon::broadcast(|_| clear_upper_state());
    }
}

/// `vzeroupper` where the CPU has AVX; nothing elsewhere.
#[inline]
pub fn clear_upper_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: `_mm256_zeroupper` requires AVX, detected just above. It zeroes bits 128 and
        // up of YMM/ZMM 0–15, which the System V and Windows ABIs treat as clobbered by any
        // call, so no value the caller keeps in registers can be lost.
        unsafe { std::arch::x86_64::_mm256_zeroupper() }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::arch::x86_64::{__cpuid_count, _xgetbv};

    /// XINUSE (`xgetbv` with ECX = 1): bit 2 = upper YMM halves, bit 6 = upper ZMM halves of
    /// registers 0–15. `None` where the CPU cannot report it.
    fn upper_state_in_use() -> Option<u64> {
        if !std::arch::is_x86_feature_detected!("xsave")
            || !std::arch::is_x86_feature_detected!("avx")
        {
            return None;
        }
        // CPUID leaf 0xD exists wherever XSAVE does (checked above).
        let leaf = __cpuid_count(0xD, 1);
        if leaf.eax & 0b100 == 0 {
            return None;
        }
        // SAFETY: XSAVE is present (checked above) and CPUID reports XGETBV with ECX = 1.
        Some(unsafe { _xgetbv(1) } & ((1 << 2) | (1 << 6)))
    }

    #[test]
    fn a_faer_product_leaves_upper_state_that_the_clear_removes() {
        if upper_state_in_use().is_none() {
            eprintln!("skipped: this CPU cannot report which vector state is in use");
            return;
        }
        let a = faer::Mat::<f64>::from_fn(64, 64, |i, j| (i * 64 + j) as f64);
        let mut out = faer::Mat::<f64>::zeros(64, 64);
        faer::linalg::matmul::matmul(
            out.as_mut(),
            faer::Accum::Replace,
            a.as_ref(),
            a.as_ref(),
            1.0,
            faer::Par::Seq,
        );
        let dirty = upper_state_in_use();
        clear_upper_state();
        assert_eq!(
            upper_state_in_use(),
            Some(0),
            "after the clear (was {dirty:?})"
        );
        assert_eq!(
            out[(0, 1)],
            (0..64).map(|k| (k * (k * 64 + 1)) as f64).sum::<f64>()
        );
    }

    #[test]
    fn frequent_directions_returns_with_clean_upper_state() {
        if upper_state_in_use().is_none() {
            return;
        }
        let mut fd = crate::fd::FrequentDirections::new(256, 8, false).unwrap();
        let mut rng = crate::rng::SplitMix64::new(5);
        // 40 rows of a 2ℓ = 16-row buffer: two shrinks, each a product and an eigensolve.
        for _ in 0..40 {
            let row: Vec<f64> = (0..256).map(|_| rng.normal()).collect();
            fd.insert(&row).unwrap();
            assert_eq!(upper_state_in_use(), Some(0), "after insert");
        }
        assert!(!fd.spectrum().unwrap().values.is_empty());
        assert_eq!(upper_state_in_use(), Some(0), "after spectrum");
    }
}
