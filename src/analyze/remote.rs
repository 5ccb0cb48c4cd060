//! `gradtel analyze s3://bucket/prefix`: the lake a collector uploaded (`--upload`), fetched
//! into a local directory first (a run's files, or every run's), then analysed as a local lake.
//!
//! Only `run=*/table=*/*.parquet` objects under the prefix are fetched, to the same relative
//! paths; `--s3-cache DIR` keeps them (a later analysis fetches only what is not there yet),
//! otherwise they go to a temporary directory removed afterwards.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gradtel_s3::{S3Client, S3Location};

/// Where the S3 lake is and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// Endpoint of the store when the lake is `s3://…` (default
    /// `https://s3.<region>.amazonaws.com`; an S3-compatible server's `http(s)://host:port`).
    #[arg(long, env = "GRADTEL_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Region of the bucket.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// PEM CA bundle to trust for an `https://` endpoint instead of the system's.
    #[arg(long, env = "GRADTEL_S3_CA")]
    pub s3_ca: Option<PathBuf>,
    /// Keep the fetched files here (fetch only what is missing next time); default: a
    /// temporary directory.
    #[arg(long)]
    pub s3_cache: Option<PathBuf>,
}

/// A local copy of the lake (held: a temporary one is removed when this is dropped).
pub struct LocalLake {
    pub path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// `lake` if it is a local path; else the fetched copy of `s3://…` (only `run`'s files if given).
pub fn local(lake: &Path, run: Option<&str>, s3: &S3Args) -> anyhow::Result<LocalLake> {
    let Some(text) = lake.to_str().filter(|t| t.starts_with("s3://")) else {
        return Ok(LocalLake {
            path: lake.to_path_buf(),
            _temp: None,
        });
    };
    let location: S3Location = text.parse()?;
    let client = S3Client::from_env(
        s3.s3_endpoint.as_deref(),
        location,
        &s3.s3_region,
        s3.s3_ca.as_deref(),
    )?;
    let (path, temp) = match &s3.s3_cache {
        Some(dir) => (dir.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("gradtel-s3-lake-")
                .tempdir()
                .context("creating a directory for the fetched lake")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    // On a thread of its own: the caller may already be inside a runtime (the CLI's).
    let fetched = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(fetch(&client, run, &path))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the fetching thread panicked"))?
    })?;
    eprintln!("fetched {fetched} files of {text} into {}", path.display());
    Ok(LocalLake { path, _temp: temp })
}

/// The lake's relative path of `key` (below the prefix), if it is a table file.
fn relative<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rel = if prefix.is_empty() {
        key
    } else {
        key.strip_prefix(prefix)?.strip_prefix('/')?
    };
    let parts: Vec<&str> = rel.split('/').collect();
    let ok = parts.len() == 3
        && parts[0].starts_with("run=")
        && parts[1].starts_with("table=")
        && parts[2].ends_with(".parquet")
        && !parts[2].starts_with('.')
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != ".." && *p != ".");
    ok.then_some(rel)
}

async fn fetch(client: &S3Client, run: Option<&str>, into: &Path) -> anyhow::Result<usize> {
    let prefix = client.location().prefix.clone();
    let listed = match run {
        Some(r) => client.key(&format!("run={r}/")),
        None => client.key(""),
    };
    let keys = client
        .list(&listed)
        .await
        .with_context(|| format!("listing {}", client.location()))?;
    let mut fetched = 0;
    for key in &keys {
        let Some(rel) = relative(&prefix, key) else {
            continue;
        };
        let dest = into.join(rel);
        if dest.exists() {
            continue;
        }
        let body = client.get(key).await?;
        let dir = dest.parent().unwrap_or(into);
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // Written under a hidden name and renamed, so an interrupted fetch leaves no part file
        // that a later one would take as whole.
        let tmp = dir.join(format!(".{}.fetch", fetched));
        std::fs::write(&tmp, &body).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("write {}", dest.display()))?;
        fetched += 1;
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::relative;

    #[test]
    fn only_table_files_below_the_prefix_are_fetched() {
        let p = "team/runs";
        assert_eq!(
            relative(p, "team/runs/run=a/table=steps/part-1.parquet"),
            Some("run=a/table=steps/part-1.parquet")
        );
        assert_eq!(
            relative("", "run=a/table=t/x.parquet"),
            Some("run=a/table=t/x.parquet")
        );
        for bad in [
            "team/runsX/run=a/table=steps/p.parquet",
            "team/runs/run=a/table=steps/.p.parquet",
            "team/runs/run=a/steps/p.parquet",
            "team/runs/run=a/table=steps/p.txt",
            "team/runs/run=a/table=steps/sub/p.parquet",
            "team/runs/_uploaded",
        ] {
            assert_eq!(relative(p, bad), None, "{bad}");
        }
        // A run directory named `..` cannot escape: `run=..` is a name, not a parent.
        assert_eq!(
            relative("", "run=../table=t/x.parquet"),
            Some("run=../table=t/x.parquet")
        );
    }
}
