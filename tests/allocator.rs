//! The collector names the allocator it runs on, and that is the one its process has mapped:
//! gperftools' tcmalloc when built with `--features tcmalloc` (scripts/test runs this test both
//! ways), the system's malloc otherwise.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn collector_runs_on_the_allocator_it_was_built_with() {
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradtel-collector"))
        .args(["--listen", "127.0.0.1:0", "--out"])
        .arg(out.path())
        .env("GRADTEL_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gradtel-collector");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("gradtel-collector starting") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no start-up line naming the allocator");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).expect("maps");
    let _ = child.kill();
    let _ = child.wait();
    let mapped = maps.contains("libtcmalloc");
    if cfg!(feature = "tcmalloc") {
        assert!(line.contains("tcmalloc (gperftools "), "{line}");
        assert!(mapped, "built with tcmalloc but the library is not mapped");
    } else {
        assert!(line.contains("system malloc"), "{line}");
        assert!(!mapped, "tcmalloc mapped without the feature");
    }
}
