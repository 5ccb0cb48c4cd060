//! The shared memory region a client may register (gradtel.v1 minor 4, `SharedMemory`), so that
//! gradient bytes reach the agent without passing through the gRPC stream: the client copies
//! (or DMA-copies from a GPU) a gradient into the region and sends only its `SharedSlice`.
//!
//! What this saves, per payload byte: the client library's copy into the protobuf message,
//! gRPC's copies into and out of HTTP/2 frames, and the agent's copy out of its read buffer — in
//! the training process those run under Python's GIL, which is what slowed GPU steps.
//!
//! Guarantees:
//! * Only a sealed memfd is accepted: the file must carry `F_SEAL_SHRINK`, so it can never get
//!   shorter than when it was checked, and reading any mapped page cannot fault (SIGBUS). That
//!   also restricts the client to memfds (regular files cannot be sealed), not arbitrary paths.
//! * The mapping is read-only; every slice is bounds-checked against the registered size.
//! * The client promises not to write a slice from sending it until the step's ack (see the
//!   proto). A client that breaks that promise can only make its own values torn; every byte
//!   pattern is a valid `u8`, and the agent never writes the region.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

use rustix::fs::SealFlags;
use rustix::mm::{MapFlags, ProtFlags};

/// Largest region the agent maps (far above any sensible queue of gradients).
pub const MAX_SHARED_BYTES: u64 = 1 << 40;

/// Why a region was refused; sent back in `RegisterResponse.shared_memory_error`.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a sealed memfd (F_SEAL_SHRINK is required): {detail}")]
    NotSealed { path: String, detail: String },
    #[error("{path} holds {len} bytes, fewer than the {bytes} declared")]
    TooShort { path: String, len: u64, bytes: u64 },
    #[error("a region of {0} bytes is not in 1..={MAX_SHARED_BYTES}")]
    BadSize(u64),
    #[error("cannot map {path}: {source}")]
    Map {
        path: String,
        source: std::io::Error,
    },
}

/// A read-only mapping of a client's sealed memfd.
#[derive(Debug)]
pub struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is a read-only mapping owned by this value (unmapped only in Drop, which
// needs `&mut self`), and is only ever read through `slice`, so sharing it between threads
// cannot race with anything the agent does; see the module header for the client's writes.
unsafe impl Send for SharedRegion {}
// SAFETY: as for Send: every access through `&SharedRegion` is a read of the mapping.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Open and map `bytes` bytes of the sealed memfd at `path` (e.g. `/proc/<pid>/fd/<fd>`).
    pub fn open(path: &str, bytes: u64) -> Result<Self, SharedError> {
        if bytes == 0 || bytes > MAX_SHARED_BYTES {
            return Err(SharedError::BadSize(bytes));
        }
        let len = usize::try_from(bytes).map_err(|_| SharedError::BadSize(bytes))?;
        // Non-blocking: the path comes from the client, and opening a FIFO for reading would
        // otherwise wait for a writer forever (such a file is refused below: it has no seals).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(Path::new(path))
            .map_err(|source| SharedError::Open {
                path: path.to_owned(),
                source,
            })?;
        let not_sealed = |detail: String| SharedError::NotSealed {
            path: path.to_owned(),
            detail,
        };
        let seals = rustix::fs::fcntl_get_seals(&file).map_err(|e| not_sealed(e.to_string()))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(not_sealed(format!("its seals are {seals:?}")));
        }
        // Checked after the seal: from here on the file cannot get shorter than this.
        let file_len = file
            .metadata()
            .map_err(|source| SharedError::Open {
                path: path.to_owned(),
                source,
            })?
            .len();
        if file_len < bytes {
            return Err(SharedError::TooShort {
                path: path.to_owned(),
                len: file_len,
                bytes,
            });
        }
        // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file (the mapping
        // outlives the descriptor, which is closed when `file` drops). The file is at least
        // `len` bytes long and sealed against shrinking (checked above), so every mapped page is
        // backed and reads cannot fault. The pointer is owned by the returned value and unmapped
        // exactly once, in Drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| SharedError::Map {
            path: path.to_owned(),
            source: e.into(),
        })?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| SharedError::Map {
            path: path.to_owned(),
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(Self { ptr, len })
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes `[offset, offset + bytes)`, or None when that is not inside the region.
    pub fn slice(&self, offset: u64, bytes: u64) -> Option<&[u8]> {
        let end = offset.checked_add(bytes)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: `[offset, end)` lies inside the live mapping of `len` readable bytes (checked
        // just above; both fit in usize since `len` does), which stays mapped while `self` is
        // borrowed. The agent never writes it; a client writing it concurrently breaks the
        // protocol and can only make these bytes (plain data, any pattern valid) inconsistent.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(offset as usize), bytes as usize)
        })
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `open`, unmapped only here; no
        // slice can outlive `self` (they borrow it).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::MemfdFlags;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::{AsRawFd, OwnedFd};

    fn memfd(bytes: &[u8], seal: bool) -> OwnedFd {
        let fd = rustix::fs::memfd_create(
            "gradtel-test",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .expect("memfd");
        let mut f = File::from(fd);
        f.write_all(bytes).expect("write");
        if seal {
            rustix::fs::fcntl_add_seals(&f, SealFlags::SHRINK | SealFlags::GROW).expect("seal");
        }
        f.into()
    }

    fn path_of(fd: &OwnedFd) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())
    }

    #[test]
    fn a_sealed_memfd_maps_and_its_slices_read_what_the_client_wrote() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let fd = memfd(&data, true);
        let r = SharedRegion::open(&path_of(&fd), 10_000).expect("open");
        assert_eq!(r.len(), 10_000);
        assert_eq!(r.slice(0, 10_000), Some(&data[..]));
        assert_eq!(r.slice(300, 17), Some(&data[300..317]));
        assert_eq!(r.slice(10_000, 0), Some(&[][..]));
        // A smaller declared size maps only that much.
        let r = SharedRegion::open(&path_of(&fd), 4096).expect("open");
        assert_eq!(r.slice(4000, 96), Some(&data[4000..4096]));
        assert_eq!(r.slice(4000, 97), None);
    }

    #[test]
    fn slices_outside_the_region_are_refused() {
        let fd = memfd(&[7; 100], true);
        let r = SharedRegion::open(&path_of(&fd), 100).expect("open");
        assert!(r.slice(0, 101).is_none());
        assert!(r.slice(100, 1).is_none());
        assert!(r.slice(u64::MAX, 2).is_none());
        assert!(r.slice(1, u64::MAX).is_none());
    }

    #[test]
    fn unsealed_files_short_files_and_bad_sizes_are_refused() {
        let fd = memfd(&[0; 100], false);
        let e = SharedRegion::open(&path_of(&fd), 100).expect_err("unsealed");
        assert!(matches!(e, SharedError::NotSealed { .. }), "{e}");
        // A regular file cannot carry seals at all.
        let tmp = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(tmp.path(), [0u8; 100]).expect("write");
        let e = SharedRegion::open(&tmp.path().display().to_string(), 100).expect_err("file");
        assert!(matches!(e, SharedError::NotSealed { .. }), "{e}");
        let fd = memfd(&[0; 100], true);
        let e = SharedRegion::open(&path_of(&fd), 101).expect_err("short");
        assert!(matches!(e, SharedError::TooShort { .. }), "{e}");
        assert!(matches!(
            SharedRegion::open(&path_of(&fd), 0),
            Err(SharedError::BadSize(0))
        ));
        let e = SharedRegion::open("/nonexistent/gradtel", 100).expect_err("missing");
        assert!(matches!(e, SharedError::Open { .. }), "{e}");
        // A FIFO would block a plain open until a writer came: refused at once instead.
        let dir = tempfile::tempdir().expect("dir");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let e = SharedRegion::open(&fifo.display().to_string(), 100).expect_err("fifo");
        assert!(matches!(e, SharedError::NotSealed { .. }), "{e}");
    }
}
