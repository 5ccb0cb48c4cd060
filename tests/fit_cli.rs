//! `gradtel fit` end to end: real files in each input format, the real binary, JSON read back
//! and compared with the `powerlaw` fixtures and the library.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow_array::{Float64Array, Int64Array, RecordBatch};
use serde_json::Value;

fn gradtel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gradtel"))
        .args(args)
        .output()
        .expect("run gradtel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> Value {
    let (ok, out, err) = gradtel(args);
    assert!(ok, "gradtel {args:?} failed: {err}");
    serde_json::from_str(&out).expect("JSON output")
}

fn write_npy(path: &Path, xs: &[f64]) {
    let mut header = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}",
        xs.len()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for x in xs {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn fixture_case(name: &str) -> Value {
    let all: Value =
        serde_json::from_str(include_str!("../stats/tests/reference/powerlaw.json")).unwrap();
    all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

#[test]
fn powerlaw_on_npy_matches_the_powerlaw_package_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let case = fixture_case("student_t3_abs");
    let xs: Vec<f64> = case["x"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let path = dir.path().join("x.npy");
    write_npy(&path, &xs);
    let p = path.to_str().unwrap();

    let pure = json(&["fit", "powerlaw", "--input", p, "--json"]);
    for (key, want) in [
        ("xmin", "xmin"),
        ("alpha", "alpha"),
        ("ks_d", "D"),
        ("alpha_se", "sigma"),
    ] {
        let (g, w) = (
            pure[key].as_f64().unwrap(),
            case["pure"][want].as_f64().unwrap(),
        );
        assert!((g - w).abs() <= 1e-9 * w.abs(), "{key}: {g} vs {w}");
    }
    assert_eq!(pure["n"], 2000);
    let crit = 1.36 / (pure["n_tail"].as_f64().unwrap()).sqrt();
    assert!((pure["ks_critical"].as_f64().unwrap() - crit).abs() < 1e-15);
    assert_eq!(
        pure["power_law_rejected_ks"].as_bool().unwrap(),
        pure["ks_d"].as_f64().unwrap() > crit
    );
    for alt in ["lognormal", "exponential"] {
        assert!(pure["vuong"][alt]["R"].is_f64() && pure["vuong"][alt]["p"].is_f64());
    }
    assert!(pure.get("p_bootstrap").is_none());

    let ranged = json(&[
        "fit",
        "powerlaw",
        "--input",
        p,
        "--alpha-range",
        "0,3",
        "--json",
    ]);
    let w = &case["range_0_3"];
    assert_eq!(ranged["xmin"].as_f64(), w["xmin"].as_f64());
    assert!((ranged["alpha"].as_f64().unwrap() - w["alpha"].as_f64().unwrap()).abs() < 1e-9);
    assert!(
        ranged["alpha"].as_f64().unwrap() < 3.0 && pure["alpha"].as_f64().unwrap() > 3.0,
        "the two modes disagree on this Student-t tail, as documented"
    );

    let seeded = [
        "fit",
        "powerlaw",
        "--input",
        p,
        "--bootstrap",
        "20",
        "--seed",
        "3",
        "--json",
    ];
    let (boot, again) = (json(&seeded), json(&seeded));
    assert_eq!(
        boot["p_bootstrap"], again["p_bootstrap"],
        "seeded bootstrap is reproducible"
    );
    let pb = boot["p_bootstrap"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&pb));
}

#[test]
fn csv_and_parquet_columns_with_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("g.csv");
    let mut text = String::from("step,grad\n");
    let xs: Vec<f64> = (1..=300)
        .map(|i| ((i * 7919) % 1013) as f64 / 101.0 - 5.0)
        .collect();
    for (i, x) in xs.iter().enumerate() {
        if i % 50 == 0 {
            text.push_str(&format!("{i},\n"));
        } else {
            text.push_str(&format!("{i},{x}\n"));
        }
    }
    std::fs::write(&csv, text).unwrap();
    let c = csv.to_str().unwrap();
    let out = json(&[
        "fit",
        "normality",
        "--input",
        c,
        "--column",
        "grad",
        "--json",
    ]);
    assert_eq!(out["input"]["nulls_dropped"], 6);
    assert_eq!(out["n"], 294);
    let kept: Vec<f64> = xs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 50 != 0)
        .map(|(_, x)| *x)
        .collect();
    let m = gradtel_stats::Moments::from_slice(&kept);
    let k2 = gradtel_stats::normality::dagostino_k2(&m).unwrap();
    assert_eq!(
        out["dagostino_k2"]["statistic"].as_f64(),
        Some(k2.statistic)
    );
    let sw = gradtel_stats::normality::shapiro_wilk(&kept).unwrap();
    assert_eq!(out["shapiro_wilk"]["p_value"].as_f64(), Some(sw.p_value));

    // Two columns and no --column: a clear error naming them.
    let (ok, _, err) = gradtel(&["fit", "normality", "--input", c]);
    assert!(!ok && err.contains("grad"), "{err}");

    let pq = dir.path().join("g.parquet");
    let ints = Int64Array::from(vec![
        Some(3),
        None,
        Some(-7),
        Some(12),
        Some(5),
        Some(1),
        Some(9),
        Some(-2),
        Some(4),
        Some(6),
    ]);
    let floats = Float64Array::from(vec![1.0; 10]);
    let batch =
        RecordBatch::try_from_iter([("g", Arc::new(ints) as _), ("ones", Arc::new(floats) as _)])
            .unwrap();
    write_parquet(&pq, &batch);
    let out = json(&[
        "fit",
        "tail",
        "--input",
        pq.to_str().unwrap(),
        "--column",
        "g",
        "--k",
        "3",
        "--json",
    ]);
    assert_eq!(out["input"]["nulls_dropped"], 1);
    assert_eq!(out["n"], 9);
    let desc = [12.0, 9.0, 7.0, 6.0];
    let h = gradtel_stats::tail::hill(&desc, 3).unwrap();
    assert_eq!(out["hill"]["alpha"].as_f64(), h.alpha);
    assert!(out["pickands"].is_object());
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "x\n1.0\nNaN\n2.0\n").unwrap();
    let (ok, _, err) = gradtel(&["fit", "powerlaw", "--input", csv.to_str().unwrap()]);
    assert!(!ok && err.contains("NaN"), "{err}");
    std::fs::write(&csv, "x\n0\n0\n0\n").unwrap();
    let (ok, _, err) = gradtel(&["fit", "powerlaw", "--input", csv.to_str().unwrap()]);
    assert!(!ok && err.contains("at least 2"), "{err}");
    std::fs::write(&csv, "x\n1\nhello\n").unwrap();
    let (ok, _, err) = gradtel(&["fit", "powerlaw", "--input", csv.to_str().unwrap()]);
    assert!(!ok && err.contains("not a number"), "{err}");
    let (ok, _, err) = gradtel(&["fit", "powerlaw", "--input", "/nonexistent/x.npy"]);
    assert!(!ok && err.contains("x.npy"), "{err}");
}

#[test]
fn spectrum_from_npy_and_parquet_lists_is_within_the_bound_of_numpy() {
    use arrow_array::builder::{Float64Builder, ListBuilder};
    let fx: Value =
        serde_json::from_str(include_str!("../stats/tests/reference/spectrum.json")).unwrap();
    let case = &fx["cases"][0];
    assert_eq!(case["name"], "power_law");
    let exact: Vec<f64> = case["cov_eigenvalues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let npy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/stats/tests/reference/spectrum_power_law.npy"
    );
    let out = json(&[
        "fit", "spectrum", "--input", npy, "--ell", "16", "--exact", "--json",
    ]);
    assert_eq!(
        (
            out["n_rows"].as_u64(),
            out["dim"].as_u64(),
            out["ell"].as_u64()
        ),
        (Some(600), Some(48), Some(16))
    );
    let bound = out["error_bound"].as_f64().unwrap();
    let sk: Vec<f64> = out["eigenvalues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (i, s) in sk.iter().enumerate() {
        assert!(
            *s <= exact[i] + 1e-9 && exact[i] - s <= bound + 1e-9,
            "λ_{i}: {s} vs {} (bound {bound})",
            exact[i]
        );
    }
    let ours: Vec<f64> = out["exact"]["eigenvalues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (a, b) in ours.iter().zip(&exact) {
        assert!((a - b).abs() <= 1e-9 * exact[0]);
    }
    let slope = out["slope"].as_f64().unwrap();
    assert!((slope - 1.5).abs() < 0.15, "slope {slope}");
    assert_eq!(out["window"], serde_json::json!([2, 8]));

    // The same rows as a Parquet list column give the same sketch.
    let bytes = std::fs::read(npy).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let vals: Vec<f64> = bytes[10 + hlen..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut lists = ListBuilder::new(Float64Builder::new());
    for row in vals.chunks_exact(48) {
        lists.values().append_slice(row);
        lists.append(true);
    }
    lists.append(false); // one null row: dropped and counted
    let batch = RecordBatch::try_from_iter([("g", Arc::new(lists.finish()) as _)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("rows.parquet");
    write_parquet(&pq, &batch);
    let from_pq = json(&[
        "fit",
        "spectrum",
        "--input",
        pq.to_str().unwrap(),
        "--ell",
        "16",
        "--json",
    ]);
    assert_eq!(from_pq["eigenvalues"], out["eigenvalues"]);
    assert_eq!(from_pq["null_rows_dropped"], 1);

    let (ok, _, err) = gradtel(&["fit", "spectrum", "--input", npy, "--ell", "100"]);
    assert!(!ok && err.contains("ell"), "{err}");
}
