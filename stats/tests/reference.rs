//! gradtel-stats against numpy/scipy: fixtures from `tests/reference/gen.py` (rerun it to
//! regenerate). Each sample is summarised whole and as a merge of uneven pieces; both must
//! match the references.

use gradtel_stats::GradSummary;
use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn summarise(xs: &[f64], pieces: usize) -> GradSummary {
    let mut total = GradSummary::new(10, 7).unwrap();
    let mut at = 0;
    for p in 0..pieces {
        // Uneven piece sizes: 1, 2, 4, ... then the rest.
        let end = if p + 1 == pieces {
            xs.len()
        } else {
            (at + (1 << p)).min(xs.len())
        };
        let mut s = GradSummary::new(10, 7).unwrap();
        s.extend_f64(&xs[at..end]);
        total.merge(&s).unwrap();
        at = end;
    }
    total
}

#[test]
fn moments_histogram_and_topk_match_numpy_and_scipy() {
    let text = include_str!("reference/moments.json");
    let fixture: Value = serde_json::from_str(text).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let xs: Vec<f64> = case["x"].as_array().unwrap().iter().map(f).collect();
        for pieces in [1, 7] {
            let s = summarise(&xs, pieces);
            let m = s.moments;
            let ctx = format!("{name} ({pieces} pieces)");
            let sd = f(&case["var"]).sqrt();
            assert!(
                (m.mean - f(&case["mean"])).abs() <= 1e-12 * sd.max(f(&case["mean"]).abs()),
                "{ctx} mean"
            );
            let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
            assert!(
                rel(m.variance_population().unwrap(), f(&case["var"])) < 1e-11,
                "{ctx} var"
            );
            assert!(
                (m.skewness().unwrap() - f(&case["skew"])).abs() < 1e-9,
                "{ctx} skew"
            );
            assert!(
                (m.excess_kurtosis().unwrap() - f(&case["kurtosis"])).abs() < 1e-8,
                "{ctx} kurtosis"
            );
            assert!(rel(s.l2_norm(), f(&case["l2"])) < 1e-13, "{ctx} l2");
            assert_eq!(s.max_abs, f(&case["max_abs"]), "{ctx} max");
            let top: Vec<f64> = case["top10"].as_array().unwrap().iter().map(f).collect();
            assert_eq!(s.top_abs.sorted_desc(), top, "{ctx} top-k");
            let qs = case["quantiles"].as_array().unwrap();
            let os = case["abs_order_stats"].as_array().unwrap();
            for (q, exact) in qs.iter().zip(os) {
                let got = s.abs_hist.quantile(f(q)).unwrap();
                let exact = f(exact);
                assert!(
                    (got - exact).abs() <= s.abs_hist.relative_error() * exact,
                    "{ctx} q={}: {got} vs {exact}",
                    f(q)
                );
            }
        }
    }
}
