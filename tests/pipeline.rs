//! End-to-end: real `gradtel-collector` and `gradtel-agent` processes, known gradients fed
//! through the Ingest socket, Parquet read back and checked against statistics computed
//! directly from the same values (two-pass formulas, sorting: no gradtel code involved).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use gradtel_client::{IngestClient, StepScalars, TensorData, TensorDecl};
use gradtel_proto::v1::Dtype;

const STEPS: u64 = 5;
const TOP_K: usize = 64;

struct Spec {
    name: &'static str,
    shape: [u64; 2],
    dtype: Dtype,
}

const TENSORS: [Spec; 3] = [
    Spec {
        name: "l1.weight",
        shape: [50, 40],
        dtype: Dtype::F32,
    },
    Spec {
        name: "l1.bias",
        shape: [50, 1],
        dtype: Dtype::F16,
    },
    Spec {
        name: "l2.weight",
        shape: [10, 50],
        dtype: Dtype::Bf16,
    },
];

/// Deterministic heavy-tailed values with exact zeros, and NaN/±Inf at chosen places.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            if i % 97 == 5 {
                return 0.0;
            }
            let (u1, u2, u3) = (next(), next(), next());
            let sign = if u3 < 0.5 { -1.0 } else { 1.0 };
            (sign * 1e-3 * u1 / (u2.powf(0.7) + 1e-4)) as f32
        })
        .collect()
}

/// Values as the agent will see them (rounded to the wire dtype), and their payload.
fn encode(dtype: Dtype, vals: &[f32]) -> (Vec<f64>, Vec<u8>) {
    match dtype {
        Dtype::F32 => (
            vals.iter().map(|&v| f64::from(v)).collect(),
            vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        Dtype::F16 => {
            let h: Vec<half::f16> = vals.iter().map(|&v| half::f16::from_f32(v)).collect();
            (
                h.iter().map(|&v| f64::from(v)).collect(),
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        }
        Dtype::Bf16 => {
            let h: Vec<half::bf16> = vals.iter().map(|&v| half::bf16::from_f32(v)).collect();
            (
                h.iter().map(|&v| f64::from(v)).collect(),
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        }
        Dtype::Unspecified => unreachable!(),
    }
}

/// The reference: statistics of a multiset computed directly.
struct Expected {
    n: u64,
    mean: f64,
    var: f64,
    skew: f64,
    kurt: f64,
    sum_sq: f64,
    max_abs: f64,
    nan: u64,
    pos_inf: u64,
    neg_inf: u64,
    pos: u64,
    neg: u64,
    zero: u64,
    top: Vec<f64>,
    abs_sorted: Vec<f64>,
}

fn expected(xs: &[f64]) -> Expected {
    let fin: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let n = fin.len() as f64;
    let mean = fin.iter().sum::<f64>() / n;
    let m = |p: i32| fin.iter().map(|x| (x - mean).powi(p)).sum::<f64>();
    let (m2, m3, m4) = (m(2), m(3), m(4));
    let mut abs: Vec<f64> = fin.iter().map(|x| x.abs()).collect();
    abs.sort_by(|a, b| b.total_cmp(a));
    let top = abs.iter().take(TOP_K).copied().collect();
    let mut abs_sorted: Vec<f64> = abs.iter().copied().filter(|&a| a > 0.0).collect();
    abs_sorted.reverse();
    Expected {
        n: fin.len() as u64,
        mean,
        var: m2 / n,
        skew: n.sqrt() * m3 / m2.powf(1.5),
        kurt: n * m4 / (m2 * m2) - 3.0,
        sum_sq: fin.iter().map(|x| x * x).sum(),
        max_abs: abs[0],
        nan: xs.iter().filter(|x| x.is_nan()).count() as u64,
        pos_inf: xs.iter().filter(|&&x| x == f64::INFINITY).count() as u64,
        neg_inf: xs.iter().filter(|&&x| x == f64::NEG_INFINITY).count() as u64,
        pos: fin.iter().filter(|&&x| x > 0.0).count() as u64,
        neg: fin.iter().filter(|&&x| x < 0.0).count() as u64,
        zero: fin.iter().filter(|&&x| x == 0.0).count() as u64,
        top,
        abs_sorted,
    }
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-300),
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn known_gradients_through_two_agents_land_exactly_in_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let (mut collector, url) = start_collector(&out, "127.0.0.1:0", &[]);
    let sock = |r: u32| dir.path().join(format!("rank{r}.sock"));
    let mut agents: Vec<Daemon> = (0..2)
        .map(|r| start_agent(&sock(r), &url, &["--top-k", "64"]))
        .collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    // (step, tensor) -> values as seen by the agents, concatenated over ranks.
    let mut sent: BTreeMap<(u64, &str), Vec<f64>> = BTreeMap::new();
    rt.block_on(async {
        let decls: Vec<TensorDecl> = TENSORS
            .iter()
            .map(|t| TensorDecl {
                name: t.name.into(),
                shape: t.shape.to_vec(),
                dtype: t.dtype,
                owned: None,
                track_count: None,
            })
            .collect();
        for rank in 0..2u32 {
            let mut client = IngestClient::connect_uds(sock(rank)).await.unwrap();
            client.chunk_elems = 300;
            client
                .register("e2e-run", rank, 2, 0, 1, &decls)
                .await
                .unwrap();
            for step in 0..STEPS {
                let mut data = Vec::new();
                for (ti, t) in TENSORS.iter().enumerate() {
                    let numel = (t.shape[0] * t.shape[1]) as usize;
                    let mut v = values(step * 100 + u64::from(rank) * 10 + ti as u64, numel);
                    if ti == 0 && step == 2 && rank == 0 {
                        v[7] = f32::NAN;
                        v[8] = f32::NEG_INFINITY;
                    }
                    if ti == 0 && step == 3 && rank == 1 {
                        v[11] = f32::INFINITY;
                    }
                    let (seen, bytes) = encode(t.dtype, &v);
                    sent.entry((step, t.name)).or_default().extend(seen);
                    data.push(TensorData {
                        name: t.name.into(),
                        dtype: t.dtype,
                        offset: 0,
                        bytes: bytes.into(),
                    });
                }
                let scalars = StepScalars {
                    loss: Some(1.0 + f64::from(rank) + step as f64),
                    learning_rate: Some(0.01),
                    batch_size: Some(8),
                };
                let resp = client.push_step(step, &data, true, scalars).await.unwrap();
                assert_eq!(resp.steps_ended, 1);
                assert_eq!(resp.steps_dropped, 0);
            }
        }
    });

    // 3 tensors + 2 layers + 1 model per step.
    let batches = wait_for_rows(&out, STEPS as usize * 6, Duration::from_secs(30));
    let rows = rows(&batches);
    assert_eq!(rows.len(), STEPS as usize * 6, "no row is written twice");
    for row in &rows {
        assert_eq!(row.run_id, "e2e-run");
        assert!(row.local && !row.late);
        assert_eq!(row.ranks_reported, 2);
        assert!(row.missing_ranks.is_empty());
        let members: Vec<&str> = TENSORS
            .iter()
            .map(|t| t.name)
            .filter(|n| match row.scope_kind.as_str() {
                "tensor" => *n == row.scope,
                "layer" => n.rsplit_once('.').unwrap().0 == row.scope,
                "model" => true,
                k => panic!("unknown scope kind {k}"),
            })
            .collect();
        assert!(!members.is_empty(), "{row:?}");
        let xs: Vec<f64> = members
            .iter()
            .flat_map(|m| sent[&(row.step, *m)].iter().copied())
            .collect();
        let e = expected(&xs);
        let what = format!("step {} {} {}", row.step, row.scope_kind, row.scope);
        assert_eq!(row.u("count"), e.n, "{what}");
        assert_eq!(row.u("elements_received") as usize, xs.len(), "{what}");
        assert_eq!(row.u("nan_count"), e.nan, "{what}");
        assert_eq!(row.u("pos_inf_count"), e.pos_inf, "{what}");
        assert_eq!(row.u("neg_inf_count"), e.neg_inf, "{what}");
        assert_eq!(
            (row.u("pos_count"), row.u("neg_count"), row.u("zero_count")),
            (e.pos, e.neg, e.zero),
            "{what}"
        );
        assert_eq!(row.f("max_abs"), Some(e.max_abs), "{what}");
        assert_eq!(row.top_abs, e.top, "{what}: top-k");
        let sd = e.var.sqrt();
        assert!(
            (row.f("mean").unwrap() - e.mean).abs() <= 1e-9 * sd,
            "{what}: mean"
        );
        close(
            row.f("variance").unwrap(),
            e.var,
            1e-9,
            &format!("{what}: variance"),
        );
        assert!(
            (row.f("skewness").unwrap() - e.skew).abs() < 1e-7,
            "{what}: skewness"
        );
        assert!(
            (row.f("excess_kurtosis").unwrap() - e.kurt).abs() < 1e-6 * e.kurt.abs().max(1.0),
            "{what}: kurtosis"
        );
        close(
            row.f("sum_sq").unwrap(),
            e.sum_sq,
            1e-12,
            &format!("{what}: sum_sq"),
        );
        close(
            row.f("l2_norm").unwrap(),
            e.sum_sq.sqrt(),
            1e-12,
            &format!("{what}: l2"),
        );
        for (col, q) in [
            ("abs_p50", 0.5),
            ("abs_p90", 0.9),
            ("abs_p99", 0.99),
            ("abs_p999", 0.999),
        ] {
            let k = ((q * e.abs_sorted.len() as f64).ceil() as usize).clamp(1, e.abs_sorted.len());
            let exact = e.abs_sorted[k - 1];
            let got = row.f(col).unwrap();
            // Stated guarantee at the default precision (7 bits): relative error ≤ 2^-8.
            assert!(
                (got - exact).abs() <= exact / 256.0,
                "{what}: {col} {got} vs {exact}"
            );
        }
        close(
            row.f("loss").unwrap(),
            1.5 + row.step as f64,
            1e-12,
            "loss is the mean over ranks",
        );
        assert_eq!(
            row.u("batch_size"),
            16,
            "global batch is the sum over ranks"
        );
    }

    for a in &mut agents {
        assert!(a.alive());
    }
    for a in agents {
        assert!(
            a.terminate().success(),
            "agent exits cleanly after draining"
        );
    }
    assert!(collector.alive());
    assert!(collector.terminate().success());
    // Nothing was written twice, and no temporary file is left behind.
    assert_eq!(rows_in(&out), STEPS as usize * 6);

    // Tracked coordinates: exactly the seeded sample (computed here independently of the
    // agent's chunking), with the values each rank sent, bit for bit after the wire dtype.
    let coords = records(&read_table(&out, "coords"));
    let mut expected_rows = 0;
    for t in &TENSORS {
        let numel = t.shape[0] * t.shape[1];
        let picked = gradtel_stats::track::Tracker::new(
            gradtel_agent::config::DEFAULT_TRACK_SEED,
            t.name,
            numel,
            64,
        )
        .tracked_in(0, numel);
        assert!(!picked.is_empty());
        expected_rows += picked.len() * 2 * STEPS as usize;
        for step in 0..STEPS {
            for rank in 0..2u32 {
                let sent_rank = &sent[&(step, t.name)][(rank as u64 * numel) as usize..];
                let got: Vec<(u64, f64)> = coords
                    .iter()
                    .filter(|c| {
                        c.s("tensor") == t.name
                            && c.n("step") == Some(step as f64)
                            && c.n("rank") == Some(f64::from(rank))
                    })
                    .map(|c| {
                        (
                            c.n("index").unwrap() as u64,
                            c.n("value").unwrap_or(f64::NAN),
                        )
                    })
                    .collect();
                let want: Vec<(u64, f64)> =
                    picked.iter().map(|&j| (j, sent_rank[j as usize])).collect();
                assert_eq!(got.len(), want.len(), "{} step {step} rank {rank}", t.name);
                for ((gj, gv), (wj, wv)) in got.iter().zip(&want) {
                    assert_eq!(gj, wj);
                    assert!(gv == wv || (gv.is_nan() && wv.is_nan()), "{gv} vs {wv}");
                }
            }
        }
    }
    assert_eq!(coords.len(), expected_rows);
    let tmp_left = std::fs::read_dir(out.join("run=e2e-run/table=steps"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
    assert!(!tmp_left);
}

fn rows_in(out: &std::path::Path) -> usize {
    read_batches(out).iter().map(|b| b.num_rows()).sum()
}

#[test]
fn large_chunks_are_summarised_exactly() {
    // 200,000 f32 values in one 800 kB chunk: the agent summarises it on its blocking pool.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let (_collector, url) = start_collector(&out, "127.0.0.1:0", &[]);
    let socket = dir.path().join("big.sock");
    let _agent = start_agent(&socket, &url, &[]);
    let n = 200_000usize;
    let v = values(42, n);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = IngestClient::connect_uds(&socket).await.unwrap();
        c.chunk_elems = n;
        let decl = TensorDecl {
            name: "big.weight".into(),
            shape: vec![n as u64],
            dtype: Dtype::F32,
            owned: None,
            track_count: None,
        };
        c.register("big", 0, 1, 0, 1, &[decl]).await.unwrap();
        let data = [TensorData::from_f32("big.weight", 0, &v)];
        let r = c
            .push_step(0, &data, false, StepScalars::default())
            .await
            .unwrap();
        assert_eq!(r.chunks_accepted, 1);
    });
    let rows = rows(&wait_for_rows(&out, 3, Duration::from_secs(30)));
    let t = rows.iter().find(|r| r.scope_kind == "tensor").unwrap();
    let e = expected(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
    assert_eq!(t.u("count"), e.n);
    assert_eq!(t.f("max_abs"), Some(e.max_abs));
    close(t.f("sum_sq").unwrap(), e.sum_sq, 1e-12, "sum_sq");
    assert_eq!(t.top_abs, e.top);
}

/// Niceness of each thread of `pid`, by thread name (`comm`, at most 15 bytes).
fn thread_niceness(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("procfs") {
        let dir = task.expect("task entry").path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the parenthesised name start at field 3 (state); nice is field 19.
        let after = stat.rsplit_once(')').expect("stat has a name").1;
        let nice = after.split_whitespace().nth(16).expect("nice field");
        out.push((comm.trim().to_string(), nice.parse().expect("numeric nice")));
    }
    out
}

#[test]
fn estimator_threads_yield_to_the_threads_that_take_in_and_acknowledge_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, _url) = start_collector(dir.path(), "127.0.0.1:0", &["--estimators-nice", "7"]);
    // A new thread names itself, then lowers its priority, as its first steps: the collector
    // may announce its address a moment before its pipeline thread has done both.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let main_nice = |threads: &[(String, i64)]| {
        threads
            .iter()
            .find(|(name, _)| name.starts_with("gradtel-collect"))
            .map(|t| t.1)
            .expect("main thread")
    };
    let mut threads = thread_niceness(collector.child.id());
    // Threads start in their own time on a loaded machine: wait for the pipeline's niceness and
    // for the runtime's workers.
    while !(threads
        .iter()
        .any(|(name, nice)| name == "gradtel-pipelin" && *nice > main_nice(&threads))
        && threads.iter().any(|(name, _)| name.starts_with("tokio-rt")))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        threads = thread_niceness(collector.child.id());
    }
    let own = main_nice(&threads);
    let pipeline: Vec<i64> = threads
        .iter()
        .filter(|(name, _)| name == "gradtel-pipelin")
        .map(|t| t.1)
        .collect();
    let workers: Vec<i64> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("tokio-rt"))
        .map(|t| t.1)
        .collect();
    assert_eq!(pipeline, vec![(own + 7).min(19)], "{threads:?}");
    // The estimators' Parquet writes, when one has started a thread.
    assert!(
        threads
            .iter()
            .filter(|(name, _)| name == "gradtel-estimat")
            .all(|t| t.1 == (own + 7).min(19)),
        "{threads:?}"
    );
    assert!(
        !workers.is_empty() && workers.iter().all(|&n| n == own),
        "{threads:?}"
    );
}

/// Reports whose decoded size exceeds the collector's whole queue budget (`--max-queued-mb 1`;
/// each of these holds 24 tensors of values spread over ≈ 40 binades, ≈ 24 × 5,000 histogram
/// buckets at 16 bytes) still pass, one at a time, and every step is written once; the budget
/// is on `/metrics` and empties when the queues do.
#[test]
fn reports_larger_than_the_queue_budget_pass_one_at_a_time() {
    let (world, n) = (2u32, 20_000u64);
    let names: Vec<String> = (0..24).map(|t| format!("layer{t}.weight")).collect();
    let tensors: Vec<(&str, u64)> = names.iter().map(|s| (s.as_str(), n)).collect();
    let mut h = Harness::start(
        "budget",
        world,
        &tensors,
        "",
        &["--max-queued-mb", "1"],
        &[],
    );
    let mut seed = 1u64;
    for step in 0..6 {
        for rank in 0..world as usize {
            let data: Vec<Vec<f32>> = names
                .iter()
                .map(|_| {
                    (0..n)
                        .map(|_| {
                            seed = seed
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            // 2^-60 .. 2^-20 in magnitude, log-uniform: ≈ 40 binades.
                            let e = ((seed >> 33) % 40) as i32 - 60;
                            let m = 1.0 + ((seed >> 11) & 0xFFFF) as f32 / 65536.0;
                            m * (e as f32).exp2()
                        })
                        .collect()
                })
                .collect();
            let refs: Vec<(&str, &[f32])> = names
                .iter()
                .zip(&data)
                .map(|(name, v)| (name.as_str(), v.as_slice()))
                .collect();
            h.push(rank, step, &refs);
        }
    }
    h.wait_steps(6);
    let text = http_get(&h.metrics, "/metrics").1;
    assert_eq!(metric(&text, "gradtel_collector_queued_report_bytes"), 0.0);
    assert_eq!(
        metric(&text, "gradtel_collector_reports_received_total"),
        12.0
    );
    // The reports were as large as meant: ≥ 200 kB on the wire each, ≈ 4 bytes a bucket
    // there against 16 decoded, so each decodes to more than the 1 MiB budget.
    let logged = metric(&text, "gradtel_collector_wal_written_bytes_total");
    assert!(logged / 12.0 > 200_000.0, "{logged}");
    let lake = h.finish(6).to_path_buf();
    assert_eq!(model_steps(&lake), (0..6).collect::<Vec<_>>());
}
