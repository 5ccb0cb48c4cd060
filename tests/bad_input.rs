//! Bad input gets a clear gRPC error or a counted drop, never a crash or a hang; and a
//! collector that appears late still receives what the agent kept.

mod common;

use std::time::Duration;

use common::*;
use gradtel_client::{IngestClient, StepScalars, TensorData, TensorDecl};
use gradtel_proto::v1::collect_client::CollectClient;
use gradtel_proto::v1::{
    ChunkBatch, Dtype, EndStep, GradientChunk, MessageBatch, PushRequest, ShardReport, ack,
    push_request,
};
use tonic::Code;

/// The gRPC status of a call that must fail.
fn refused<T: std::fmt::Debug>(r: Result<T, gradtel_client::ClientError>) -> tonic::Status {
    match r {
        Err(gradtel_client::ClientError::Status(s)) => s,
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// The next ack on a Collect stream, within 10 s.
async fn next_ack(acks: &mut tonic::Streaming<gradtel_proto::v1::Ack>) -> gradtel_proto::v1::Ack {
    tokio::time::timeout(Duration::from_secs(10), acks.message())
        .await
        .expect("an ack within 10 s")
        .expect("a healthy stream")
        .expect("the stream is open")
}

fn decls() -> Vec<TensorDecl> {
    vec![TensorDecl {
        name: "fc.weight".into(),
        shape: vec![4, 4],
        dtype: Dtype::F32,
        owned: None,
        track_count: None,
    }]
}

fn chunk(tensor: &str, data: Vec<u8>) -> Vec<PushRequest> {
    vec![PushRequest {
        msg: Some(push_request::Msg::Chunk(GradientChunk {
            step: 0,
            tensor: tensor.into(),
            offset: 0,
            dtype: Dtype::F32 as i32,
            data: data.into(),
            local: false,
            shared: None,
        })),
    }]
}

/// Eight zero f32 values of `tensor` at `offset`.
fn zero_chunk(step: u64, tensor: &str, offset: u64) -> GradientChunk {
    GradientChunk {
        step,
        tensor: tensor.into(),
        offset,
        dtype: Dtype::F32 as i32,
        data: vec![0; 32].into(),
        local: false,
        shared: None,
    }
}

fn end_of(step: u64) -> PushRequest {
    PushRequest {
        msg: Some(push_request::Msg::EndStep(EndStep {
            step,
            ..Default::default()
        })),
    }
}

/// An agent whose collector never answers (ingest must not care), its socket, and a runtime.
fn lone_agent(dir: &std::path::Path) -> (Daemon, std::path::PathBuf, tokio::runtime::Runtime) {
    let socket = dir.join("a.sock");
    let absent = format!("http://127.0.0.1:{}", free_port());
    let agent = start_agent(&socket, &absent, &[]);
    (agent, socket, tokio::runtime::Runtime::new().unwrap())
}

#[test]
fn agent_answers_bad_input_with_clear_errors_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, socket, rt) = lone_agent(dir.path());
    rt.block_on(async {
        let mut c = IngestClient::connect_uds(&socket).await.unwrap();

        let s = refused(c.push_raw(chunk("fc.weight", vec![0; 16])).await);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("Register"), "{}", s.message());

        for bad in ["../x", "a/b", "", ".."] {
            let s = refused(c.register(bad, 0, 1, 0, 1, &decls()).await);
            assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}");
            assert!(s.message().contains("run id"), "{}", s.message());
        }
        assert!(!dir.path().join("x").exists());

        c.register("ok-run", 0, 1, 0, 1, &decls()).await.unwrap();

        // 10 bytes is not a whole number of f32 values.
        let s = refused(c.push_raw(chunk("fc.weight", vec![0; 10])).await);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().contains("10 bytes") && s.message().contains("f32"),
            "{}",
            s.message()
        );

        let s = refused(c.push_raw(chunk("no.such.tensor", vec![0; 16])).await);
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("no.such.tensor"), "{}", s.message());

        // 20 values into a 16-value tensor.
        let s = refused(c.push_raw(chunk("fc.weight", vec![0; 80])).await);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().contains("outside the owned range"),
            "{}",
            s.message()
        );

        // Still serving: a good step goes through.
        let data = [TensorData::from_f32("fc.weight", 0, &[1.0; 16])];
        let r = c
            .push_step(1, &data, false, StepScalars::default())
            .await
            .unwrap();
        assert_eq!((r.chunks_accepted, r.steps_ended), (1, 1));
    });
    assert!(agent.alive(), "agent survived every bad message");
}

#[test]
fn push_steps_acks_each_step_and_a_bad_chunk_in_a_batch_ends_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, socket, rt) = lone_agent(dir.path());
    rt.block_on(async {
        let mut c = IngestClient::connect_uds(&socket).await.unwrap();
        c.register("batch-run", 0, 1, 0, 1, &decls()).await.unwrap();
        let part = zero_chunk;
        let batch = |chunks| PushRequest {
            msg: Some(push_request::Msg::Batch(ChunkBatch { chunks })),
        };
        let end = end_of;
        let (acks, status) = c
            .push_steps_raw(vec![
                batch(vec![part(1, "fc.weight", 0), part(1, "fc.weight", 8)]),
                end(1),
                batch(vec![part(2, "fc.weight", 0), part(2, "no.such.tensor", 0)]),
                end(2),
            ])
            .await
            .unwrap();
        assert_eq!(
            acks.iter()
                .map(|a| (a.step, a.dropped, a.chunks_accepted))
                .collect::<Vec<_>>(),
            vec![(1, false, 2)]
        );
        let status = status.expect("the bad chunk ends the stream");
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().contains("no.such.tensor"),
            "{}",
            status.message()
        );
    });
    assert!(agent.alive(), "agent survived the bad batch");
}

#[test]
fn a_message_batch_is_handled_in_order_and_answered_once_and_may_not_nest() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, socket, rt) = lone_agent(dir.path());
    rt.block_on(async {
        let mut c = IngestClient::connect_uds(&socket).await.unwrap();
        c.register("grouped-run", 0, 1, 0, 1, &decls())
            .await
            .unwrap();
        let part = |step: u64, offset: u64| PushRequest {
            msg: Some(push_request::Msg::Chunk(zero_chunk(
                step,
                "fc.weight",
                offset,
            ))),
        };
        let end = end_of;
        let group = |requests| PushRequest {
            msg: Some(push_request::Msg::Messages(MessageBatch { requests })),
        };
        let (acks, status) = c
            .push_steps_raw(vec![
                // Three steps in one message (step 3 in two chunks), then a step alone.
                group(vec![
                    part(1, 0),
                    end(1),
                    part(2, 0),
                    end(2),
                    part(3, 0),
                    part(3, 8),
                    end(3),
                ]),
                part(4, 0),
                end(4),
                // A step whose end comes in a later message: its chunk counts there.
                group(vec![part(5, 0)]),
                group(vec![end(5)]),
                group(vec![group(vec![end(6)])]),
            ])
            .await
            .unwrap();
        let flat = |a: &gradtel_proto::v1::StepAck| (a.step, a.dropped, a.chunks_accepted);
        assert_eq!(
            acks.len(),
            3,
            "one answer per message that ends steps: {acks:?}"
        );
        assert_eq!(
            std::iter::once(flat(&acks[0]))
                .chain(acks[0].more.iter().map(flat))
                .collect::<Vec<_>>(),
            vec![(1, false, 1), (2, false, 1), (3, false, 2)]
        );
        assert_eq!(flat(&acks[1]), (4, false, 1));
        assert!(acks[1].more.is_empty());
        assert_eq!(flat(&acks[2]), (5, false, 1));
        let status = status.expect("a nested batch ends the stream");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("batch"), "{}", status.message());
    });
    assert!(agent.alive(), "agent survived the nested batch");
}

#[test]
fn collector_rejects_bad_reports_on_an_open_stream() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let (mut collector, url) = start_collector(&out, "127.0.0.1:0", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = CollectClient::connect(url).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut acks = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let report = |run: &str, seq| ShardReport {
            run_id: run.into(),
            rank: 0,
            world_size: 1,
            shard: 0,
            shard_count: 1,
            seq,
            step: 4,
            agent_epoch: 7,
            ..Default::default()
        };
        tx.send(report("../escape", 1)).await.unwrap();
        let a = next_ack(&mut acks).await;
        assert_eq!(a.status, ack::Status::Rejected as i32);
        assert!(a.reason.contains("run id"), "{}", a.reason);

        // Same stream, valid report: accepted once in the write-ahead log; a resend is a
        // duplicate.
        tx.send(report("fine", 1)).await.unwrap();
        let a = next_ack(&mut acks).await;
        assert_eq!(a.status, ack::Status::Accepted as i32, "{a:?}");
        tx.send(report("fine", 1)).await.unwrap();
        let a = next_ack(&mut acks).await;
        assert_eq!(a.status, ack::Status::Duplicate as i32, "{a:?}");
    });
    assert!(collector.alive());
    assert!(!dir.path().join("escape").exists());
    let rows = rows(&wait_for_rows(&out, 1, Duration::from_secs(30)));
    assert_eq!(rows.len(), 1, "one model row, written once");
    assert_eq!(rows[0].run_id, "fine");
}

#[test]
fn full_queue_drops_whole_steps_and_a_late_collector_gets_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let socket = dir.path().join("a.sock");
    // Room for 3 steps in the queue and one in the spool, which takes reports off the queue
    // while the collector is away.
    let mut agent = start_agent(
        &socket,
        &url,
        &[
            "--queue",
            "3",
            "--max-inflight",
            "1",
            "--max-backoff",
            "200ms",
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dropped = rt.block_on(async {
        let mut c = IngestClient::connect_uds(&socket).await.unwrap();
        c.register("late", 0, 1, 0, 1, &decls()).await.unwrap();
        let mut dropped = 0;
        for step in 0..10 {
            let data = [TensorData::from_f32("fc.weight", 0, &[step as f32; 16])];
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                c.push_step(step, &data, false, StepScalars::default()),
            )
            .await
            .expect("ingest never blocks on an absent collector")
            .unwrap();
            dropped += r.steps_dropped;
        }
        dropped
    });
    // The queue holds 3 steps, the spool one more once the shipper has moved it there.
    assert!((6..=7).contains(&dropped), "dropped {dropped}");
    let (mut collector, _) = start_collector(&out, &format!("127.0.0.1:{port}"), &[]);
    let kept = 10 - dropped as usize;
    // One tensor, one layer and the model: three rows per step.
    let batches = wait_for_rows(&out, kept * 3, Duration::from_secs(30));
    let rows = rows(&batches);
    assert_eq!(rows.len(), kept * 3);
    let steps: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.step).collect();
    assert_eq!(steps.len(), kept, "whole steps survive, never half of one");
    for r in &rows {
        // Each step carried 16 copies of its step number.
        assert_eq!(r.u("count"), 16);
        assert_eq!(
            r.f("mean"),
            (r.step > 0).then_some(r.step as f64).or(Some(0.0))
        );
    }
    assert!(agent.alive() && collector.alive());
}

#[test]
fn collector_killed_mid_run_loses_nothing_acknowledged_or_queued() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (collector, url) = start_collector(&out, &listen, &[]);
    let socket = dir.path().join("a.sock");
    let mut agent = start_agent(&socket, &url, &["--max-backoff", "200ms"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let push = |steps: std::ops::Range<u64>| {
        rt.block_on(async {
            let mut c = IngestClient::connect_uds(&socket).await.unwrap();
            if steps.start == 0 {
                c.register("crash", 0, 1, 0, 1, &decls()).await.unwrap();
            }
            for step in steps {
                let data = [TensorData::from_f32("fc.weight", 0, &[step as f32; 16])];
                let r = c
                    .push_step(step, &data, false, StepScalars::default())
                    .await
                    .unwrap();
                assert_eq!(r.steps_dropped, 0);
            }
        })
    };
    push(0..5);
    wait_for_rows(&out, 5 * 3, Duration::from_secs(30));
    // SIGKILL: no chance to flush. Steps 5..10 are queued or in flight at the agent meanwhile.
    drop(collector);
    push(5..10);
    let (mut collector, _) = start_collector(&out, &listen, &[]);
    let batches = wait_for_rows(&out, 10 * 3, Duration::from_secs(30));
    let steps: std::collections::BTreeSet<u64> = rows(&batches).iter().map(|r| r.step).collect();
    assert_eq!(
        steps,
        (0..10).collect(),
        "every step arrives (at least once)"
    );
    assert!(agent.alive() && collector.alive());
}

/// Reports of run "wal", one rank, steps `steps`, as an agent of epoch 3 sends them.
fn wal_reports(steps: std::ops::Range<u64>) -> Vec<ShardReport> {
    steps
        .map(|step| ShardReport {
            run_id: "wal".into(),
            rank: 0,
            world_size: 1,
            shard: 0,
            shard_count: 1,
            seq: step + 1,
            step,
            agent_epoch: 3,
            ..Default::default()
        })
        .collect()
}

/// Send `reports` on one stream and return the status of each one's ack, in seq order.
async fn send_reports(url: &str, reports: Vec<ShardReport>) -> Vec<i32> {
    let mut client = CollectClient::connect(url.to_string()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(reports.len().max(1));
    let mut acks = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let n = reports.len();
    for r in reports {
        tx.send(r).await.unwrap();
    }
    let mut got = std::collections::BTreeMap::new();
    while got.len() < n {
        let a = next_ack(&mut acks).await;
        got.insert(a.seq, a.status);
    }
    got.into_values().collect()
}

#[test]
fn acknowledged_reports_survive_a_collector_crash_in_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    // No Parquet file can roll while this collector lives: every ack comes from the log.
    let (collector, url) = start_collector(&out, "127.0.0.1:0", &["--roll-interval", "1h"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let accepted = rt.block_on(send_reports(&url, wal_reports(0..5)));
    assert_eq!(accepted, vec![ack::Status::Accepted as i32; 5]);
    assert!(
        parquet_files(&out).is_empty(),
        "acked before any Parquet file"
    );
    // SIGKILL: nothing is flushed.
    drop(collector);

    let (collector, url) = start_collector(&out, "127.0.0.1:0", &[]);
    let batches = wait_for_rows(&out, 5, Duration::from_secs(30));
    let steps: Vec<u64> = rows(&batches).iter().map(|r| r.step).collect();
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert_eq!(
        steps
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        (0..5).collect()
    );
    // The replayed log also restored deduplication: the agent's resends are duplicates.
    let again = rt.block_on(send_reports(&url, wal_reports(0..5)));
    assert_eq!(again, vec![ack::Status::Duplicate as i32; 5]);
    assert!(collector.terminate().success());
    let left: Vec<String> = std::fs::read_dir(out.join("_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // The runs' live-state checkpoints (tested in tests/live.rs).
        .filter(|n| n != "live")
        .collect();
    // Published segments are retired: kept as spare files for reuse (their records are not
    // replayed), at most `SPARE_SEGMENTS` of them, or deleted; the publication journals of the
    // newest few stay.
    let spares = left.iter().filter(|n| n.ends_with(".spare")).count();
    let journals = left.iter().filter(|n| n.ends_with(".pub")).count();
    assert!(
        spares + journals == left.len()
            && spares <= gradtel_collector::wal::SPARE_SEGMENTS
            && journals <= gradtel_collector::wal::KEPT_JOURNALS,
        "published segments are retired: {left:?}"
    );
    assert_eq!(rows(&read_batches(&out)).len(), 5, "nothing written twice");
}

#[test]
fn rows_published_before_a_crash_are_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let args = ["--straggler-timeout", "1h", "--metrics", "127.0.0.1:0"];
    let (collector, url, _) = start_collector_with_metrics(&out, "127.0.0.1:0", &args);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let accepted = rt.block_on(send_reports(&url, wal_reports(0..5)));
    assert_eq!(accepted, vec![ack::Status::Accepted as i32; 5]);
    // A step of another run that waits for its second rank: its report keeps the log segment
    // (which also holds steps 0-4) from being retired after their rows are published.
    let held = ShardReport {
        run_id: "held".into(),
        world_size: 2,
        seq: 1,
        ..wal_reports(0..1).remove(0)
    };
    let accepted = rt.block_on(send_reports(&url, vec![held]));
    assert_eq!(accepted, vec![ack::Status::Accepted as i32]);
    wait_for_rows(&out, 5, Duration::from_secs(30));
    // SIGKILL with steps 0-4 published and their segment still in the log.
    drop(collector);
    let wal: Vec<String> = std::fs::read_dir(out.join("_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        wal.iter().any(|n| n.ends_with(".wal")) && wal.iter().any(|n| n.ends_with(".pub")),
        "the segment and its publication journal outlive the crash: {wal:?}"
    );

    let (collector, url, metrics) = start_collector_with_metrics(&out, "127.0.0.1:0", &args);
    // The published reports were not replayed, yet their resends are still duplicates.
    let again = rt.block_on(send_reports(&url, wal_reports(0..5)));
    assert_eq!(again, vec![ack::Status::Duplicate as i32; 5]);
    let (_, text) = http_get(&metrics.expect("metrics address"), "/metrics");
    assert_eq!(
        metric(&text, "gradtel_collector_wal_replayed_reports_total"),
        6.0
    );
    assert_eq!(
        metric(&text, "gradtel_collector_wal_published_skipped_total"),
        5.0
    );
    // Several rolls: nothing of steps 0-4 is written again.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rows(&read_batches(&out)).len(), 5);
    // A clean stop releases the held step, replayed from the log.
    assert!(collector.terminate().success());
    let written: Vec<(String, u64)> = rows(&read_batches(&out))
        .into_iter()
        .map(|r| (r.run_id, r.step))
        .collect();
    let mut want: Vec<(String, u64)> = (0..5).map(|s| ("wal".to_string(), s)).collect();
    want.push(("held".to_string(), 0));
    let mut got = written.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every step once: {written:?}");
}

#[test]
fn a_stragglers_report_replayed_after_a_crash_is_still_late() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let args = [
        "--straggler-timeout",
        "300ms",
        "--roll-interval",
        "200ms",
        "--metrics",
        "127.0.0.1:0",
    ];
    let report = |rank, epoch| ShardReport {
        run_id: "late".into(),
        rank,
        world_size: 2,
        agent_epoch: epoch,
        ..wal_reports(0..1).remove(0)
    };
    let (collector, url, _) = start_collector_with_metrics(&out, "127.0.0.1:0", &args);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ok = vec![ack::Status::Accepted as i32];
    assert_eq!(rt.block_on(send_reports(&url, vec![report(0, 3)])), ok);
    // Released without rank 1 after the straggler timeout, and published.
    wait_for_rows(&out, 1, Duration::from_secs(30));
    // Rank 1's report arrives late and is logged; the crash comes before its row is written.
    assert_eq!(rt.block_on(send_reports(&url, vec![report(1, 4)])), ok);
    drop(collector);

    let (collector, _, metrics) = start_collector_with_metrics(&out, "127.0.0.1:0", &args);
    let addr = metrics.expect("metrics address");
    // Rank 0's segment was retired with its rows (only its journal is left); rank 1's report
    // is replayed from the log.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(
        &http_get(&addr, "/metrics").1,
        "gradtel_collector_wal_replayed_reports_total",
    ) < 1.0
    {
        assert!(std::time::Instant::now() < deadline, "nothing replayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Past the straggler timeout and a roll: a report taken for a new step would be out now.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(collector.terminate().success());
    let mut got: Vec<(u64, bool)> = rows(&read_batches(&out))
        .into_iter()
        .map(|r| (r.step, r.late))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![(0, false), (0, true)],
        "one step row and one late row"
    );
}

#[test]
fn a_collector_that_cannot_write_parquet_pauses_its_intake_at_the_limit_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    std::fs::create_dir_all(&out).unwrap();
    // A file where the run's partitions go: every Parquet write of the run fails.
    let blocker = out.join("run=bp");
    std::fs::write(&blocker, b"").unwrap();
    let args = ["--max-unpublished-mb", "1", "--metrics", "127.0.0.1:0"];
    let (collector, url, metrics) = start_collector_with_metrics(&out, "127.0.0.1:0", &args);
    let addr = metrics.expect("metrics address");
    let gauge = |name: &str| metric(&http_get(&addr, "/metrics").1, name);
    // 40 reports of ≈ 64 kB (a projection of 8,192 values): 2.6 MB, over the 1 MB limit.
    const N: u64 = 40;
    let reports: Vec<ShardReport> = wal_reports(0..N)
        .into_iter()
        .map(|r| ShardReport {
            run_id: "bp".into(),
            projection: Some(gradtel_proto::v1::Projection {
                kind: gradtel_proto::v1::projection::Kind::RotatedCountSketch as i32,
                seed: 7,
                dim: 8192,
                values: (0..8192).map(|i| f64::from(i) * 1e-3).collect(),
                coordinates: 1 << 20,
            }),
            ..r
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (acked_tx, acked_rx) = std::sync::mpsc::channel();
    let sender = rt.spawn(async move {
        let mut client = CollectClient::connect(url).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(N as usize);
        for r in reports {
            tx.send(r).await.unwrap();
        }
        let mut acks = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        while let Ok(Some(a)) = acks.message().await {
            assert_eq!(a.status, ack::Status::Accepted as i32);
            let _ = acked_tx.send(a.seq);
        }
        drop(tx);
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while gauge("gradtel_collector_intake_paused") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the intake never paused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gauge("gradtel_collector_unpublished_bytes") > f64::from(1 << 20));
    std::thread::sleep(Duration::from_millis(500));
    let acked_while_paused = acked_rx.try_iter().count() as u64;
    assert!(
        (16..N).contains(&acked_while_paused),
        "{acked_while_paused} of {N} acknowledged: the log stops taking reports past 1 MB"
    );
    assert!(gauge("gradtel_collector_write_errors_total") > 0.0);

    // The disk is back: the writes go through, the log's segment retires, the rest comes in.
    std::fs::remove_file(&blocker).unwrap();
    let mut acked = acked_while_paused;
    while acked < N {
        assert!(
            acked_rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "only {acked} of {N} acknowledged after the disk came back"
        );
        acked += 1;
    }
    assert_eq!(gauge("gradtel_collector_intake_paused"), 0.0);
    assert!(collector.terminate().success());
    sender.abort();
    let steps: std::collections::BTreeSet<u64> =
        rows(&read_batches(&out)).iter().map(|r| r.step).collect();
    assert_eq!(
        steps,
        (0..N).collect(),
        "every report's step written once the disk is back"
    );
}

/// Nice value of every thread of `pid` (field 19 of /proc/PID/task/TID/stat).
fn thread_niceness(pid: u32) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
            // The command name may hold spaces; the fields after it do not.
            let after = stat.rsplit_once(')').unwrap().1;
            after.split_whitespace().nth(16).unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn agent_yields_the_cpu_to_training_at_the_requested_niceness() {
    let dir = tempfile::tempdir().unwrap();
    let absent = format!("http://127.0.0.1:{}", free_port());
    let default = start_agent(&dir.path().join("a.sock"), &absent, &[]);
    let nice = thread_niceness(default.child.id());
    assert!(nice.len() > 1, "the runtime's threads are there too");
    assert!(
        nice.iter().all(|&n| n == 19),
        "default niceness 19: {nice:?}"
    );
    let own = thread_niceness(std::process::id())[0];
    let asked = (own + 5).min(19);
    let chosen = start_agent(
        &dir.path().join("b.sock"),
        &absent,
        &["--nice", &asked.to_string()],
    );
    let nice = thread_niceness(chosen.child.id());
    assert!(nice.iter().all(|&n| n == asked), "{nice:?} != {asked}");
}

/// A job resumed from a checkpoint after the collector crashed: the restarted collector takes
/// the steps its predecessor published from the publication journals, so the resumed ranks'
/// reports of steps 5-9 start a new trajectory, merged across both ranks, not late rows.
#[test]
fn a_job_resumed_after_a_collector_crash_is_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let args = [
        "--straggler-timeout",
        "1h",
        "--roll-interval",
        "100ms",
        "--metrics",
        "127.0.0.1:0",
    ];
    let reports = |rank: u32, epoch: u64, steps: std::ops::Range<u64>| -> Vec<ShardReport> {
        wal_reports(steps.clone())
            .into_iter()
            .zip(1..)
            .map(|(r, seq)| ShardReport {
                run_id: "resumed".into(),
                rank,
                world_size: 2,
                agent_epoch: epoch,
                seq,
                ..r
            })
            .collect()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let send_ranks = |url: &str, epoch: u64, steps: std::ops::Range<u64>| {
        for rank in 0..2 {
            let acks = rt.block_on(send_reports(url, reports(rank, epoch, steps.clone())));
            assert!(acks.iter().all(|&a| a == ack::Status::Accepted as i32));
        }
    };
    let (collector, url, _) = start_collector_with_metrics(&out, "127.0.0.1:0", &args);
    send_ranks(&url, 1, 0..10);
    wait_for_rows(&out, 10, Duration::from_secs(30));
    drop(collector);

    let (collector, url, metrics) = start_collector_with_metrics(&out, "127.0.0.1:0", &args);
    send_ranks(&url, 2, 5..15);
    wait_for_rows(&out, 20, Duration::from_secs(30));
    let text = http_get(&metrics.expect("metrics address"), "/metrics").1;
    assert_eq!(
        metric(&text, "gradtel_collector_trajectories_resumed_total"),
        1.0
    );
    assert_eq!(metric(&text, "gradtel_collector_reports_late_total"), 0.0);
    assert!(collector.terminate().success());
    let mut got: Vec<(u64, bool, bool, u32)> = rows(&read_batches(&out))
        .into_iter()
        .map(|r| (r.step, r.u("trajectory") > 0, r.late, r.ranks_reported))
        .collect();
    got.sort();
    let mut want: Vec<_> = (0..10).map(|s| (s, false, false, 2)).collect();
    want.extend((5..15).map(|s| (s, true, false, 2)));
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_damaged_live_checkpoint_is_set_aside_and_its_run_starts_afresh() {
    use gradtel_collector::live::checkpoint;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let live = checkpoint::dir(&out.join("_wal"));
    std::fs::create_dir_all(&live).unwrap();
    // Half of a real checkpoint, as a full disk might leave it (not through the rename).
    let mut framed = checkpoint::frame(&checkpoint::RunState {
        version: checkpoint::VERSION,
        run_id: "wal".into(),
        steps_seen: 9,
        ..Default::default()
    });
    framed.truncate(framed.len() / 2);
    std::fs::write(checkpoint::file_of(&live, "wal"), &framed).unwrap();
    let args = ["--metrics", "127.0.0.1:0"];
    let (collector, url, metrics) = start_collector_with_metrics(&out, "127.0.0.1:0", &args);
    let metrics = metrics.expect("metrics address");
    let text = http_get(&metrics, "/metrics").1;
    assert_eq!(
        metric(&text, "gradtel_collector_live_checkpoint_errors_total"),
        1.0
    );
    assert_eq!(
        metric(&text, "gradtel_collector_live_runs_restored_total"),
        0.0
    );
    assert!(!checkpoint::file_of(&live, "wal").exists());
    let aside = live.join("run=wal.live.refused");
    assert_eq!(std::fs::read(&aside).unwrap(), framed, "kept for a look");
    // The run goes on with fresh state, and a clean stop checkpoints it again.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acks = rt.block_on(send_reports(&url, wal_reports(0..3)));
    assert_eq!(acks, vec![ack::Status::Accepted as i32; 3]);
    wait_for_rows(&out, 3, Duration::from_secs(30));
    assert!(collector.terminate().success());
    let (states, refused) = checkpoint::load(&live);
    assert!(refused.is_empty(), "the set-aside file is not read again");
    assert_eq!(states.len(), 1);
    assert_eq!(
        (states[0].run_id.as_str(), states[0].steps_seen),
        ("wal", 3)
    );
}
