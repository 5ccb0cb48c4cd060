//! TLS material for the Collect stream (agent → collector): the PEM files that tonic's rustls
//! configuration takes, read with errors that name the file. rustls itself, given a file with
//! no PEM block, reports only that it found no certificate or key.

use std::fmt;
use std::path::{Path, PathBuf};

/// A PEM file that could not be used.
#[derive(Debug)]
pub struct PemError {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for PemError {}

/// The bytes of a PEM file (certificates or a private key), refused when unreadable, when it
/// holds no `-----BEGIN` block, or when a block does not decode (cut short, not base64): tonic
/// takes such a file without a word and fails only at the handshake.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, PemError> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    let err = |reason: String| PemError {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(err("not a PEM file (no -----BEGIN block)".into()));
    }
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        section.map_err(|e| err(format!("a PEM block does not decode: {e}")))?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_file_is_read_and_anything_else_named() {
        let dir = std::env::temp_dir().join(format!("gradtel-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(read_pem(&good).unwrap().starts_with(b"-----BEGIN"));
        let cut = dir.join("cut.pem");
        std::fs::write(&cut, "-----BEGIN CERTIFICATE-----\nAA==\n").unwrap();
        let e = read_pem(&cut).unwrap_err().to_string();
        assert!(
            e.contains("cut.pem") && e.contains("does not decode"),
            "{e}"
        );
        let der = dir.join("ca.der");
        std::fs::write(&der, [0x30, 0x82, 0x01, 0x0a]).unwrap();
        let e = read_pem(&der).unwrap_err().to_string();
        assert!(e.contains("ca.der") && e.contains("not a PEM file"), "{e}");
        let e = read_pem(&dir.join("missing.pem")).unwrap_err().to_string();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
