//! The README's main command, end to end: `gradtel demo` trains for real, and its lake is read
//! back with the parquet crate, and with DuckDB and pyarrow when Python has them (CI installs
//! them and sets GRADTEL_REQUIRE_PYTHON=1, which makes their absence a failure).

mod common;

use std::process::Command;

use common::*;

#[test]
fn demo_trains_and_leaves_a_readable_lake() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gradtel-data");
    let (ranks, steps) = (4u32, 200u64);
    let output = Command::new(env!("CARGO_BIN_EXE_gradtel"))
        .args(["demo", "--quiet", "--run-id", "demo-test"])
        .args(["--ranks", &ranks.to_string(), "--steps", &steps.to_string()])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run gradtel demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("0 unacknowledged"), "{stdout}");
    assert!(
        stdout.contains("read_parquet("),
        "prints a DuckDB one-liner: {stdout}"
    );
    for line in [
        "live verdict",
        "dimension-wise",
        "iteration-wise",
        "SGN",
        "spectrum (gradient)",
        "1 nonfinite",
    ] {
        assert!(
            stdout.contains(line),
            "closing summary lacks {line:?}: {stdout}"
        );
    }

    let rows = rows(&read_batches(&out));
    // 6 tensors + 3 layers + the model, per step.
    assert_eq!(rows.len(), steps as usize * 10);
    let model: Vec<_> = rows.iter().filter(|r| r.scope_kind == "model").collect();
    assert_eq!(model.len(), steps as usize);
    assert!(model.iter().all(|r| r.ranks_reported == ranks && r.local));
    let loss = |s: u64| {
        model
            .iter()
            .find(|r| r.step == s)
            .and_then(|r| r.f("loss"))
            .unwrap()
    };
    let early: f64 = (0..10).map(loss).sum::<f64>() / 10.0;
    let late: f64 = (steps - 10..steps).map(loss).sum::<f64>() / 10.0;
    assert!(late < early * 0.3, "real training: loss {early} -> {late}");

    let python = std::env::var("GRADTEL_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&python)
        .args(["-c", "import duckdb, pyarrow"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("GRADTEL_REQUIRE_PYTHON").is_err(),
            "GRADTEL_REQUIRE_PYTHON is set but {python} lacks duckdb/pyarrow"
        );
        eprintln!("skipping the DuckDB/pyarrow read: {python} lacks them");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/read_lake.py");
    let check = Command::new(&python)
        .arg(script)
        .arg(&out)
        .args(["demo-test", &steps.to_string(), &ranks.to_string()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
