//! Robust location and scale: median, median absolute deviation, and the robust z-score
//! `z = (x − median) / (1.4826 · MAD)` (Hampel 1974; the factor makes 1.4826·MAD a consistent
//! estimator of σ for Gaussian data). Used for spike detection, where a mean and standard
//! deviation would be dragged by the very spikes they should reveal: the median and MAD have a
//! 50 % breakdown point.

/// Consistency factor of the MAD for the normal distribution, 1/Φ⁻¹(3/4).
pub const MAD_TO_SIGMA: f64 = 1.482_602_218_505_602;

/// Median of the finite values (mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median and MAD (unscaled) of the finite values.
pub fn median_mad(values: &[f64]) -> Option<(f64, f64)> {
    let m = median(values)?;
    let dev: Vec<f64> = values
        .iter()
        .filter(|x| x.is_finite())
        .map(|x| (x - m).abs())
        .collect();
    Some((m, median(&dev)?))
}

/// Robust z-score of `x` against `history`; `None` with fewer than 3 finite values. A zero MAD
/// (over half the history identical) is floored at `1e-12 · |median|` so a constant history
/// still flags a departure instead of dividing by zero.
pub fn robust_z(x: f64, history: &[f64]) -> Option<f64> {
    if history.iter().filter(|v| v.is_finite()).count() < 3 || !x.is_finite() {
        return None;
    }
    let (m, mad) = median_mad(history)?;
    let scale = (MAD_TO_SIGMA * mad)
        .max(1e-12 * m.abs())
        .max(f64::MIN_POSITIVE);
    Some((x - m) / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad_match_hand_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
        // |x − 3| = 2 1 0 1 2 97 → sorted 0 1 1 2 2 97 → MAD 1.5
        assert_eq!(
            median_mad(&[1.0, 2.0, 3.0, 4.0, 5.0, 100.0]),
            Some((3.5, 1.5))
        );
    }

    #[test]
    fn a_spike_stands_out_and_the_bulk_does_not() {
        let hist: Vec<f64> = (0..50)
            .map(|i| 1.0 + 0.01 * ((i * 7) % 11) as f64)
            .collect();
        assert!(robust_z(1.05, &hist).unwrap().abs() < 3.0);
        assert!(robust_z(10.0, &hist).unwrap() > 100.0);
        assert_eq!(robust_z(1.0, &[1.0, 2.0]), None);
    }
}
