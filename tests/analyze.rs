//! `gradtel analyze` on a lake written by the real demo: it completes, reports every object,
//! writes its files, and refuses bad input with clear errors.

use std::process::Command;

fn gradtel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gradtel"))
        .args(args)
        .output()
        .expect("run gradtel")
}

#[test]
fn analyze_reports_every_object_of_a_demo_lake() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap();
    let demo = gradtel(&[
        "demo", "--quiet", "--run-id", "an", "--ranks", "2", "--steps", "120", "--out", lake_s,
    ]);
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );

    let out = dir.path().join("report");
    let a = gradtel(&["analyze", lake_s, "--out", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&a.stdout);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    for object in [
        "dimension-wise",
        "iteration-wise",
        "SGN",
        "spectrum (gradient)",
    ] {
        assert!(
            stdout.contains(&format!("| {object} |")),
            "{object} missing: {stdout}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let rows = json["summary"].as_array().unwrap();
    let all = |object: &str| {
        rows.iter()
            .find(|r| r["object"] == object && r["layer"] == "all")
            .unwrap_or_else(|| panic!("no {object} row"))
    };
    // 120 steps × 6 tensors, every one with a histogram; every tracked coordinate tested.
    assert_eq!(all("dimension-wise")["samples"], 720);
    assert!(all("iteration-wise")["tested"].as_u64().unwrap() > 100);
    assert!(all("SGN")["tested"].as_u64().unwrap() > 100);
    for f in [
        "summary.md",
        "summary.csv",
        "dimension.csv",
        "iteration.csv",
        "sgn.csv",
    ] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 0, "{f}");
    }

    // Selections narrow the samples.
    let a = gradtel(&[
        "analyze",
        lake_s,
        "--tensors",
        "fc1.*",
        "--steps",
        "10..19",
        "--format",
        "json",
    ]);
    assert!(a.status.success());
    let json: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let dim = json["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["object"] == "dimension-wise" && r["layer"] == "all")
        .unwrap()
        .clone();
    assert_eq!(dim["samples"], 20, "2 tensors × 10 steps");

    // Clear errors.
    let a = gradtel(&["analyze", lake_s, "--run", "nope"]);
    assert!(!a.status.success());
    assert!(String::from_utf8_lossy(&a.stderr).contains("run \"nope\" is not in"));
    std::fs::remove_dir_all(lake.join("run=an/table=spectra")).unwrap();
    let a = gradtel(&["analyze", lake_s]);
    assert!(!a.status.success());
    assert!(
        String::from_utf8_lossy(&a.stderr).contains("has no table \"spectra\""),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
}
