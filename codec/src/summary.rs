//! [`GradSummary`] ↔ `gradtel.v1.Summary`.
//!
//! The conversion is lossless: `from_wire(to_wire(s)) == s`. `from_wire` validates what a peer
//! sent (histogram shape, consistent counts, finite moments, top-k within capacity) and refuses
//! anything inconsistent.

use gradtel_proto::v1;
use gradtel_stats::{GradSummary, LogHistogram, Moments, TopK};

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
    let abs_hist = LogHistogram::from_sparse(h.precision_bits, &h.index, &h.count)?;
    if w.top_k_capacity > MAX_TOP_K || w.top_abs.len() > w.top_k_capacity as usize {
        return Err(gradtel_stats::StatsError::Malformed("top-k exceeds its capacity").into());
    }
    if w.top_abs.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(gradtel_stats::StatsError::Malformed("top-k holds a bad value").into());
    }
    let s = GradSummary {
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
        top_abs: TopK::from_values(w.top_k_capacity as usize, &w.top_abs),
    };
    s.validate()?;
    Ok(s)
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
            prop_assert_eq!(back, s);
        }
    }

    #[test]
    fn inconsistent_summaries_are_refused() {
        let mut s = GradSummary::new(4, 7).unwrap();
        s.extend_f64(&[1.0, -2.0, 3.0]);
        let good = to_wire(&s);

        let mut w = good.clone();
        w.abs_hist = None;
        assert!(from_wire(&w).is_err());
        let mut w = good.clone();
        w.count = 99;
        assert!(from_wire(&w).is_err());
        let mut w = good.clone();
        w.m2 = f64::NAN;
        assert!(from_wire(&w).is_err());
        let mut w = good.clone();
        w.top_k_capacity = 1;
        assert!(from_wire(&w).is_err());
        let mut w = good;
        w.abs_hist.as_mut().unwrap().precision_bits = 40;
        assert!(from_wire(&w).is_err());
    }
}
