//! Gaussianity tests against scipy.stats (fixtures from `tests/reference/gen_normality.py`).
//! K² and JB are also computed from merged moments of uneven pieces, as the collector does.

use gradtel_stats::normality::{anderson_darling, dagostino_k2, jarque_bera, shapiro_wilk};
use gradtel_stats::{Moments, StatsError};
use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-6 * want.abs().max(1e-300);
    assert!((got - want).abs() <= tol, "{what}: {got} vs {want}");
}

#[test]
fn k2_jb_anderson_and_shapiro_match_scipy() {
    let fixture: Value = serde_json::from_str(include_str!("reference/normality.json")).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let xs: Vec<f64> = case["x"].as_array().unwrap().iter().map(f).collect();
        if case.get("expect_error").is_some() {
            // scipy answers NaN (or W = p = 1); gradtel refuses with a typed error.
            assert!(case["scipy_k2"].is_null(), "{name}");
            let m = Moments::from_slice(&xs);
            assert_eq!(dagostino_k2(&m), Err(StatsError::AllEqual));
            assert_eq!(jarque_bera(&m), Err(StatsError::AllEqual));
            assert_eq!(anderson_darling(&xs), Err(StatsError::AllEqual));
            assert_eq!(shapiro_wilk(&xs), Err(StatsError::AllEqual));
            continue;
        }
        let mut merged = Moments::new();
        for piece in xs.chunks(37) {
            merged.merge(&Moments::from_slice(piece));
        }
        for (how, m) in [("whole", Moments::from_slice(&xs)), ("merged", merged)] {
            let k2 = dagostino_k2(&m).unwrap();
            close(k2.statistic, f(&case["k2"][0]), &format!("{name} {how} K2"));
            close(k2.p_value, f(&case["k2"][1]), &format!("{name} {how} K2 p"));
            let jb = jarque_bera(&m).unwrap();
            close(jb.statistic, f(&case["jb"][0]), &format!("{name} {how} JB"));
            close(jb.p_value, f(&case["jb"][1]), &format!("{name} {how} JB p"));
        }
        let ad = anderson_darling(&xs).unwrap();
        close(ad.statistic, f(&case["ad"][0]), &format!("{name} AD"));
        let cv: Vec<f64> = case["ad"][1].as_array().unwrap().iter().map(f).collect();
        assert_eq!(ad.critical_values.to_vec(), cv, "{name} AD critical values");
        let sw = shapiro_wilk(&xs).unwrap();
        // Where scipy refused the tiny range (W = p = 1 with a warning), compare with scipy on
        // the standardised sample: W does not depend on scale.
        let key = if f(&case["sw"][0]) == 1.0 {
            "sw_scaled"
        } else {
            "sw"
        };
        close(sw.statistic, f(&case[key][0]), &format!("{name} SW"));
        close(sw.p_value, f(&case[key][1]), &format!("{name} SW p"));
    }
}
