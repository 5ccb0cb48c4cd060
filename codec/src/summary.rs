//! [`GradSummary`] ↔ `gradtel.v1.Summary`.
//!
//! The conversion is lossless: `from_wire(to_wire(s)) == s`. `from_wire` validates what a peer
//! sent (histogram shape, consistent counts, finite moments, top-k within capacity) and refuses
//! anything inconsistent.

use gradtel_proto::v1;
use gradtel_stats::{GradSummary, LogHistogram, Moments, SparseHistogram, SparseSummary, TopK};

use crate::CodecError;

/// Largest top-k capacity accepted from a peer.
pub const MAX_TOP_K: u32 = 1 << 16;

pub fn to_wire(s: &GradSummary) -> v1::Summary {
    let (index, count) = s.abs_hist.sparse();
    v1::Summary {
        count: s.moments.n,
        mean: s.moments.mean,
        m2: s.moments.m2,
        m3: s.moments.m3,
        m4: s.moments.m4,
        sum_sq: s.sum_sq,
        max_abs: s.max_abs,
        nan_count: s.nan_count,
        pos_inf_count: s.pos_inf_count,
        neg_inf_count: s.neg_inf_count,
        pos_count: s.pos_count,
        neg_count: s.neg_count,
        zero_count: s.zero_count,
        abs_hist: Some(v1::LogHistogram {
            precision_bits: s.abs_hist.precision_bits(),
            index,
            count,
        }),
        top_abs: s.top_abs.sorted_desc(),
        top_k_capacity: s.top_abs.capacity() as u32,
    }
}

pub fn from_wire(w: &v1::Summary) -> Result<GradSummary, CodecError> {
    let h = w.abs_hist.as_ref().ok_or(CodecError::MissingHistogram)?;
    let s = with_histogram(
        w,
        LogHistogram::from_sparse(h.precision_bits, &h.index, &h.count)?,
        w.top_abs.clone(),
    )?;
    s.validate()?;
    Ok(s)
}

/// [`from_wire`] keeping the histogram sparse, as it came (its vectors are moved, not copied):
/// what the collector holds of each received tensor until it merges it into its step.
pub fn from_wire_sparse(mut w: v1::Summary) -> Result<SparseSummary, CodecError> {
    let h = w.abs_hist.take().ok_or(CodecError::MissingHistogram)?;
    let empty = LogHistogram::new(h.precision_bits)?;
    let hist = SparseHistogram::new(h.precision_bits, h.index, h.count)?;
    let top_abs = std::mem::take(&mut w.top_abs);
    Ok(SparseSummary::new(
        with_histogram(&w, empty, top_abs)?,
        hist,
    )?)
}

/// The summary `w` describes, given its histogram and top-k list (not yet validated as a
/// whole).
fn with_histogram(
    w: &v1::Summary,
    abs_hist: LogHistogram,
    top_abs: Vec<f64>,
) -> Result<GradSummary, CodecError> {
    if w.top_k_capacity > MAX_TOP_K || top_abs.len() > w.top_k_capacity as usize {
        return Err(gradtel_stats::StatsError::Malformed("top-k exceeds its capacity").into());
    }
    if top_abs.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(gradtel_stats::StatsError::Malformed("top-k holds a bad value").into());
    }
    Ok(GradSummary {
        moments: Moments {
            n: w.count,
            mean: w.mean,
            m2: w.m2,
            m3: w.m3,
            m4: w.m4,
        },
        sum_sq: w.sum_sq,
        max_abs: w.max_abs,
        nan_count: w.nan_count,
        pos_inf_count: w.pos_inf_count,
        neg_inf_count: w.neg_inf_count,
        pos_count: w.pos_count,
        neg_count: w.neg_count,
        zero_count: w.zero_count,
        abs_hist,
        top_abs: TopK::from_vec(w.top_k_capacity as usize, top_abs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip_is_lossless(xs in prop::collection::vec(-1e3f64..1e3, 0..200), k in 0usize..20) {
            let mut s = GradSummary::new(k, 7).unwrap();
            s.extend_f64(&xs);
            let back = from_wire(&to_wire(&s)).unwrap();
            prop_assert_eq!(&back, &s);
            let sparse = from_wire_sparse(to_wire(&s)).unwrap();
            prop_assert_eq!(sparse.to_dense(), s);
        }
    }

    #[test]
    fn inconsistent_summaries_are_refused() {
        let mut s = GradSummary::new(4, 7).unwrap();
        s.extend_f64(&[1.0, -2.0, 3.0]);
        let good = to_wire(&s);
        let bad: [fn(&mut v1::Summary); 7] = [
            |w| w.abs_hist = None,
            |w| w.count = 99,
            |w| w.m2 = f64::NAN,
            |w| w.top_k_capacity = 1,
            |w| w.abs_hist.as_mut().unwrap().precision_bits = 40,
            |w| w.abs_hist.as_mut().unwrap().count[0] += 1,
            |w| w.abs_hist.as_mut().unwrap().index.reverse(),
        ];
        for (i, spoil) in bad.iter().enumerate() {
            let mut w = good.clone();
            spoil(&mut w);
            assert!(from_wire(&w).is_err(), "case {i}");
            assert!(from_wire_sparse(w).is_err(), "case {i}");
        }
        assert!(from_wire_sparse(good).is_ok());
    }
}
