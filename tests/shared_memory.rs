//! Payloads through a shared memory region (gradtel.v1 minor 4), against real agent and
//! collector processes: the same gradient sent through a sealed memfd and inline gives the same
//! rows, and every misuse of a region is a clear error, never a crash.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use common::*;
use gradtel_client::{IngestClient, StepScalars, TensorData, TensorDecl, layout_request};
use gradtel_proto::v1::{
    Dtype, EndStep, GradientChunk, PushRequest, SharedMemory, SharedSlice, push_request,
};
use rustix::fs::{MemfdFlags, SealFlags};
use tonic::Code;

const N: usize = 10_000;

fn decls() -> Vec<TensorDecl> {
    vec![TensorDecl {
        name: "w".into(),
        shape: vec![N as u64],
        dtype: Dtype::F32,
        owned: None,
        track_count: Some(50),
    }]
}

/// Heavy-tailed values spanning many binades, with a few exact zeros.
fn values() -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..N)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = ((s >> 11) as f64 / (1u64 << 53) as f64).max(1e-12);
            let sign = if s & 1 == 0 { 1.0 } else { -1.0 };
            if i % 997 == 0 {
                0.0
            } else {
                (sign * 1e-3 * u.powf(-0.5)) as f32
            }
        })
        .collect()
}

/// A memfd holding `bytes`, sealed against shrinking when `seal`.
fn memfd(bytes: &[u8], seal: bool) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        "gradtel-e2e",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .expect("memfd");
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes).expect("write");
    if seal {
        rustix::fs::fcntl_add_seals(&f, SealFlags::SHRINK | SealFlags::GROW).expect("seal");
    }
    f.into()
}

fn region(fd: &OwnedFd, bytes: u64) -> SharedMemory {
    SharedMemory {
        path: format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd()),
        bytes,
    }
}

fn shared_chunk(step: u64, offset: u64, slice: (u64, u64), data: Vec<u8>) -> PushRequest {
    PushRequest {
        msg: Some(push_request::Msg::Chunk(GradientChunk {
            step,
            tensor: "w".into(),
            offset,
            dtype: Dtype::F32 as i32,
            data: data.into(),
            local: false,
            shared: Some(SharedSlice {
                offset: slice.0,
                bytes: slice.1,
            }),
        })),
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

#[test]
fn a_gradient_through_shared_memory_gives_the_rows_of_the_same_gradient_sent_inline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let (_collector, url) = start_collector(&out, "127.0.0.1:0", &[]);
    let socket = dir.path().join("a.sock");
    let _agent = start_agent(&socket, &url, &[]);
    let xs = values();
    let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    // The region holds the gradient after 64 bytes of something else, as a ring would.
    let mut contents = vec![0xAB; 64];
    contents.extend_from_slice(&bytes);
    let fd = memfd(&contents, true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = IngestClient::connect_uds(&socket).await.unwrap();
        let mut req = layout_request("shm", 0, 1, 0, 1, &decls());
        req.shared_memory = Some(region(&fd, contents.len() as u64));
        let resp = c.register_raw(req).await.unwrap();
        assert!(resp.shared_memory, "{}", resp.shared_memory_error);
        assert_eq!(resp.protocol_minor, gradtel_proto::PROTOCOL_MINOR);
        // Step 0 from shared memory in two chunks (the second one large enough for the
        // agent's blocking pool), step 1 inline.
        let split = 1_000u64;
        let (acks, status) = c
            .push_steps_raw(vec![
                shared_chunk(0, 0, (64, split * 4), Vec::new()),
                shared_chunk(
                    0,
                    split,
                    (64 + split * 4, (N as u64 - split) * 4),
                    Vec::new(),
                ),
                end_of(0),
            ])
            .await
            .unwrap();
        assert!(status.is_none(), "{status:?}");
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].chunks_accepted, 2);
        let data = [TensorData::from_f32("w", 0, &xs)];
        c.push_step(1, &data, false, StepScalars::default())
            .await
            .unwrap();
    });
    // One tensor, its layer and the model, per step.
    let rows = rows(&wait_for_rows(&out, 6, Duration::from_secs(30)));
    let tensor = |step| {
        rows.iter()
            .find(|r| r.step == step && r.scope_kind == "tensor")
            .unwrap_or_else(|| panic!("no tensor row for step {step}"))
    };
    let (a, b) = (tensor(0), tensor(1));
    assert_eq!(a.u("count"), N as u64);
    let without_step = |r: &Row| {
        let mut m = r.u64s.clone();
        m.remove("step");
        m
    };
    assert_eq!(without_step(a), without_step(b));
    // Chunks merge in a different order, so sums may differ in the last bits.
    for (k, va) in &a.f64s {
        let vb = b.f64s[k];
        match (va, vb) {
            (Some(x), Some(y)) => assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1e-300),
                "{k}: {x} vs {y}"
            ),
            _ => assert_eq!(*va, vb, "{k}"),
        }
    }
    assert_eq!(a.top_abs, b.top_abs);
    let max = xs.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
    assert_eq!(a.top_abs[0], max, "the largest |x| is the planted data's");
    // Tracked coordinates read the same values from either path.
    let coords = records(&read_table(&out, "coords"));
    for step in [0.0, 1.0] {
        let mine: Vec<_> = coords
            .iter()
            .filter(|r| r.n("step") == Some(step))
            .collect();
        assert!(!mine.is_empty(), "coords of step {step}");
        for r in mine {
            let j = r.n("index").expect("index") as usize;
            assert_eq!(r.n("value"), Some(f64::from(xs[j])), "coordinate {j}");
        }
    }
}

#[test]
fn misused_shared_memory_gets_clear_errors_and_the_agent_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a.sock");
    let absent = format!("http://127.0.0.1:{}", free_port());
    let mut agent = start_agent(&socket, &absent, &[]);
    let bytes: Vec<u8> = values().iter().flat_map(|x| x.to_le_bytes()).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = IngestClient::connect_uds(&socket).await.unwrap();
        let register = |fd: Option<&OwnedFd>, size: u64| {
            let mut req = layout_request("shm-bad", 0, 1, 0, 1, &decls());
            req.shared_memory = fd.map(|fd| region(fd, size));
            req
        };
        let refused = |r: Result<(Vec<_>, Option<tonic::Status>), _>| {
            r.expect("the stream opens").1.expect("the stream fails")
        };

        // No region registered: a slice cannot be resolved.
        c.register_raw(register(None, 0)).await.unwrap();
        let s = refused(
            c.push_steps_raw(vec![shared_chunk(0, 0, (0, 16), Vec::new())])
                .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("no region"), "{}", s.message());

        // An unsealed memfd (it could shrink under the mapping) is refused, the layout kept.
        let loose = memfd(&bytes, false);
        let resp = c
            .register_raw(register(Some(&loose), bytes.len() as u64))
            .await
            .unwrap();
        assert!(!resp.shared_memory);
        assert!(
            resp.shared_memory_error.contains("F_SEAL_SHRINK"),
            "{}",
            resp.shared_memory_error
        );
        // A region declared longer than its file is refused too.
        let sealed = memfd(&bytes, true);
        let resp = c
            .register_raw(register(Some(&sealed), bytes.len() as u64 + 1))
            .await
            .unwrap();
        assert!(!resp.shared_memory);
        assert!(
            resp.shared_memory_error.contains("fewer than"),
            "{}",
            resp.shared_memory_error
        );

        let resp = c
            .register_raw(register(Some(&sealed), bytes.len() as u64))
            .await
            .unwrap();
        assert!(resp.shared_memory, "{}", resp.shared_memory_error);
        for (bad, what) in [
            (
                shared_chunk(0, 0, (bytes.len() as u64 - 8, 16), Vec::new()),
                "outside",
            ),
            (shared_chunk(0, 0, (u64::MAX - 3, 8), Vec::new()), "outside"),
            (shared_chunk(0, 0, (0, 16), vec![0; 16]), "both"),
            (shared_chunk(0, 0, (0, 10), Vec::new()), "10 bytes"),
            (
                shared_chunk(0, N as u64 - 2, (0, 16), Vec::new()),
                "owned range",
            ),
        ] {
            let s = refused(c.push_steps_raw(vec![bad]).await);
            assert_eq!(s.code(), Code::InvalidArgument, "{what}");
            assert!(s.message().contains(what), "{what}: {}", s.message());
        }

        // Still serving, from the region.
        let (acks, status) = c
            .push_steps_raw(vec![
                shared_chunk(3, 0, (0, bytes.len() as u64), Vec::new()),
                end_of(3),
            ])
            .await
            .unwrap();
        assert!(status.is_none(), "{status:?}");
        assert_eq!(acks[0].chunks_accepted, 1);
    });
    assert!(agent.alive(), "agent survived every misuse");
}
