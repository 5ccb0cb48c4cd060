//! The agent's on-disk spool, through real processes: an agent SIGKILLed while holding reports
//! the collector never acknowledged hands them to the agent started after it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const RUN: &str = "spooled";
/// Steps the killed agent holds.
const HELD: u64 = 300;

fn agent_metric(addr: &str, name: &str) -> f64 {
    // The metrics endpoint opens just after the Ingest socket appears.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "no metrics on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    metric(&http_get(addr, "/metrics").1, name)
}

/// Wait until the agent's `name` reaches `want`.
fn wait_metric(addr: &str, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = agent_metric(addr, name);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} = {got}, never {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Steps 0–299 are ended while no collector listens (more than the shipper's send channel
/// holds, so the new agent's reports could overtake them if they were not held back); the agent
/// is SIGKILLed; then a collector starts, a new agent on the same socket starts, and steps
/// 300–319 follow at once. Returns the steps in
/// the lake (model rows: step, trajectory, late) and what the second agent replayed.
fn kill_an_agent_holding_reports(agent_extra: &[&str]) -> (Vec<(u64, u64, bool)>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let socket = dir.path().join("rank0.sock");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");

    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics", metrics.as_str()];
    args.extend_from_slice(agent_extra);
    let agent = start_agent(&socket, &url, &args);
    push_steps(&socket, RUN, 0..HELD, 1000);
    // Every ended step has left the queue for the spool (no collector to send it to).
    wait_metric(&metrics, "gradtel_agent_reports_inflight", HELD as f64);
    wait_metric(&metrics, "gradtel_agent_queue_depth", 0.0);
    drop(agent); // SIGKILL

    let listen = format!("127.0.0.1:{port}");
    let (collector, _) = start_collector(&out, &listen, &["--straggler-timeout", "1h"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics", metrics.as_str()];
    args.extend_from_slice(agent_extra);
    let agent = start_agent(&socket, &url, &args);
    let replayed = agent_metric(&metrics, "gradtel_agent_spool_replayed_total");
    push_steps(&socket, RUN, HELD..HELD + 20, 1000);
    wait_metric(&metrics, "gradtel_agent_reports_inflight", 0.0);
    assert!(agent.terminate().success());
    assert!(collector.terminate().success());
    let mut steps: Vec<(u64, u64, bool)> = rows(&read_batches(&out))
        .into_iter()
        .filter(|r| r.scope_kind == "model")
        .map(|r| (r.step, r.u("trajectory"), r.late))
        .collect();
    steps.sort();
    (steps, replayed)
}

#[test]
fn an_agent_killed_with_reports_unacknowledged_hands_them_to_the_next() {
    let (steps, replayed) = kill_an_agent_holding_reports(&[]);
    assert_eq!(replayed, HELD as f64);
    // Every step once, in the run's one trajectory: the replayed steps went ahead of the new
    // agent's, so the collector saw each rank's steps in order.
    let want: Vec<(u64, u64, bool)> = (0..HELD + 20).map(|s| (s, 0, false)).collect();
    assert_eq!(steps, want);
}

#[test]
fn without_a_spool_the_same_kill_loses_the_reports() {
    let (steps, replayed) = kill_an_agent_holding_reports(&["--no-spool"]);
    assert_eq!(replayed, 0.0);
    let want: Vec<(u64, u64, bool)> = (HELD..HELD + 20).map(|s| (s, 0, false)).collect();
    assert_eq!(steps, want);
}

#[test]
fn two_agents_cannot_share_a_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let spool_arg = spool.to_str().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let first = start_agent(
        &dir.path().join("a.sock"),
        &url,
        &["--spool-dir", spool_arg],
    );
    let second = Command::new(env!("CARGO_BIN_EXE_gradtel-agent"))
        .args(["--socket", dir.path().join("b.sock").to_str().unwrap()])
        .args(["--collector", &url, "--spool-dir", spool_arg])
        .stdout(Stdio::null())
        .output()
        .expect("run gradtel-agent");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.contains("in use by another agent")
            && stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    assert!(
        !dir.path().join("b.sock").exists(),
        "it refused before serving"
    );
    // The first agent's spool is intact: it stops cleanly and leaves no segment behind.
    assert!(first.terminate().success());
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
