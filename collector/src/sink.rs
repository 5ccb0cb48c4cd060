//! Parquet sink: per-run row buffers, rolled by rows or age into Hive-partitioned files.
//!
//! A file is written as `.<name>.tmp` (hidden: Spark, DuckDB globs `*.parquet` and Hive readers
//! skip it), synced, renamed to `part-<ms>-<instance>-<n>.parquet`, and the directory is synced,
//! so a reader sees a whole file or none and a crash never leaves a half-written file visible.
//! The pipeline writes all tables of a flush this way and commits them together through the
//! publication journal ([`crate::journal`]) before renaming any; only after that are the rows'
//! reports released from the write-ahead log (DESIGN.md §3.6–3.7).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, Encoding, Type as PhysicalType, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};

use crate::journal::Logged;
use crate::tables::Tables;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("Parquet encoding: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow encoding: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("run id {0:?} is not valid")]
    BadRunId(String),
    #[error("no record batch to write")]
    NoRows,
    #[error("record batch {index} of a file has another schema than the first: {schema}")]
    SchemaMismatch { index: usize, schema: String },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

/// Rows of one run waiting for their files, with every logged report they come from.
#[derive(Debug, Default)]
pub struct Buffer {
    pub rows: Tables,
    pub reports: Vec<Logged>,
    pub since: Option<Instant>,
}

pub struct Sink {
    roll_rows: usize,
    roll_interval: Duration,
    buffers: HashMap<Arc<str>, Buffer>,
    /// The emptied rows of a finished write, whose vectors the next new buffer takes over: a
    /// buffer grown from nothing at every roll reallocated and copied its rows as it grew, in
    /// fresh pages the kernel had to zero (≈ 3 % of the pipeline thread). One, whatever the
    /// run, so runs that end leave nothing behind.
    spare: Option<Tables>,
}

impl Sink {
    pub fn new(roll_rows: usize, roll_interval: Duration) -> Self {
        Self {
            roll_rows: roll_rows.max(1),
            roll_interval,
            buffers: HashMap::new(),
            spare: None,
        }
    }

    pub fn append(&mut self, run: Arc<str>, rows: Tables, reports: Vec<Logged>) {
        let spare = &mut self.spare;
        let b = self.buffers.entry(run).or_insert_with(|| Buffer {
            rows: spare.take().unwrap_or_default(),
            ..Buffer::default()
        });
        b.since.get_or_insert_with(Instant::now);
        b.rows.append(rows);
        b.reports.extend(reports);
    }

    /// Runs whose buffer should be written now.
    pub fn due(&self, now: Instant) -> Vec<Arc<str>> {
        self.buffers
            .iter()
            .filter(|(_, b)| {
                !(b.reports.is_empty() && b.rows.is_empty())
                    && (b.rows.len() >= self.roll_rows
                        || b.since
                            .is_some_and(|s| now.duration_since(s) >= self.roll_interval))
            })
            .map(|(r, _)| r.clone())
            .collect()
    }

    pub fn runs(&self) -> Vec<Arc<str>> {
        self.buffers.keys().cloned().collect()
    }

    pub fn take(&mut self, run: &Arc<str>) -> Option<Buffer> {
        self.buffers.remove(run)
    }

    /// Give back the rows of a finished write, emptied, for a later buffer to fill.
    pub fn recycle(&mut self, rows: Tables) {
        #[cfg(test)]
        let rows = Tables {
            poisoned: None,
            ..rows
        };
        if rows.is_empty() {
            self.spare = Some(rows);
        }
    }

    /// Put back a buffer whose write failed; it is retried on the next roll.
    pub fn restore(&mut self, run: Arc<str>, mut failed: Buffer) {
        if let Some(newer) = self.buffers.remove(&run) {
            failed.rows.append(newer.rows);
            failed.reports.extend(newer.reports);
        }
        self.buffers.insert(run, failed);
    }
}

/// Directory of one run's partitions under `root`.
pub fn run_dir(root: &Path, run: &str) -> Result<PathBuf, SinkError> {
    // The run id was validated on arrival; checking again here keeps this function safe alone.
    gradtel_proto::validate_run_id(run).map_err(|_| SinkError::BadRunId(run.to_string()))?;
    Ok(root.join(format!("run={run}")))
}

/// Directory of one (run, table) partition under `root`.
pub fn partition_dir(root: &Path, run: &str, table: &str) -> Result<PathBuf, SinkError> {
    Ok(run_dir(root, run)?.join(format!("table={table}")))
}

/// Write `batches` (one schema) as one Parquet file in `dir`, atomically. Returns the path and
/// its size.
pub fn write_file(
    dir: &Path,
    name: &str,
    batches: &[RecordBatch],
) -> Result<(PathBuf, u64), SinkError> {
    let staged = write_temp(dir, name, batches)?;
    publish(&staged)?;
    sync_dir(dir)?;
    Ok((staged.dest, staged.size))
}

/// A file written and synced under its hidden temporary name, not yet visible.
#[derive(Debug)]
pub struct Staged {
    pub tmp: PathBuf,
    pub dest: PathBuf,
    pub size: u64,
}

/// The hidden name a file `name` is written under until it is published.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Write `batches` (one schema) as the file `name` in `dir`, under its temporary name, and
/// sync it; [`publish`] makes it visible.
pub fn write_temp(dir: &Path, name: &str, batches: &[RecordBatch]) -> Result<Staged, SinkError> {
    let Some(batch) = batches.first() else {
        return Err(SinkError::NoRows);
    };
    check_schema(batches)?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(temp_name(name));
    let dest = dir.join(name);
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let props = column_properties(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            // No dictionaries: building them (hashing every value, strings most) was ~5 % of
            // the collector's CPU on small reports, and zstd already folds the repeated run ids
            // and scope names (files within 2 % of the dictionary-encoded size).
            .set_dictionary_enabled(false)
            .set_created_by(format!("gradtel {}", env!("CARGO_PKG_VERSION"))),
        batch,
    )?
    .build();
    let result = (|| {
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
        for b in batches {
            w.write(b)?;
        }
        let file = w.into_inner()?;
        file.sync_all().map_err(io_err(&tmp))?;
        file.metadata().map_err(io_err(&tmp)).map(|m| m.len())
    })();
    match result {
        Ok(size) => Ok(Staged { tmp, dest, size }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Rename a staged file into place. The caller syncs its directory ([`sync_dir`]) once for
/// all the files it publishes there.
pub fn publish(staged: &Staged) -> Result<(), SinkError> {
    std::fs::rename(&staged.tmp, &staged.dest).map_err(io_err(&staged.dest))
}

pub fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Delete the hidden temporary files a crashed write left in `run`'s partitions under `root`
/// (after [`crate::journal::roll_forward`] has published the committed ones), but those of
/// the collector instance `own` (`part-<ms>-<instance>-<n>`: its writes in flight). Returns
/// how many.
pub fn remove_temp_files(root: &Path, run: &str, own: &str) -> usize {
    let Ok(run_dir) = run_dir(root, run) else {
        return 0;
    };
    let mut removed = 0;
    for table in std::fs::read_dir(&run_dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(table.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".part-")
                && name.ends_with(".parquet.tmp")
                && !name.contains(&format!("-{own}-"))
                && std::fs::remove_file(f.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `batches` can be one file: the writer takes the first batch's schema for the file,
/// and a later batch that differs (a column nullable only there) would fail deep in the
/// encoder instead.
pub fn check_schema(batches: &[RecordBatch]) -> Result<(), SinkError> {
    let Some(first) = batches.first() else {
        return Err(SinkError::NoRows);
    };
    match batches
        .iter()
        .enumerate()
        .find(|(_, b)| b.schema() != first.schema())
    {
        Some((index, other)) => Err(SinkError::SchemaMismatch {
            index,
            schema: other.schema().to_string(),
        }),
        None => Ok(()),
    }
}

/// Every integer column delta- and bit-packed. The `steps` histograms are most of the bytes
/// the collector writes (≈ 1,300 sorted bucket indices and their counts per row on a small
/// CNN): as plain 8-byte integers they were ≈ 20 % of its CPU in zstd alone; their deltas pack
/// into a few bits each.
///
/// No min/max statistics on string columns: comparing every value with the running extremes
/// was ≈ 2 % of the collector's CPU on small reports, and they could prune nothing — `run_id`
/// is one value per file (and its Hive partition), and the tables interleave their scopes,
/// tensors and estimators within every page.
fn column_properties(
    mut props: WriterPropertiesBuilder,
    batch: &RecordBatch,
) -> Result<WriterPropertiesBuilder, SinkError> {
    let parquet_schema = ArrowSchemaConverter::new().convert(&batch.schema())?;
    for col in parquet_schema.columns() {
        match col.physical_type() {
            PhysicalType::INT32 | PhysicalType::INT64 => {
                props =
                    props.set_column_encoding(col.path().clone(), Encoding::DELTA_BINARY_PACKED);
            }
            PhysicalType::BYTE_ARRAY => {
                props = props
                    .set_column_statistics_enabled(col.path().clone(), EnabledStatistics::None);
            }
            _ => {}
        }
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::UInt64Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let part = partition_dir(dir.path(), "run-1", "steps").unwrap();
        let batch = RecordBatch::try_from_iter([(
            "step",
            Arc::new(UInt64Array::from(vec![1u64, 2, 3])) as _,
        )])
        .unwrap();
        let (path, size) =
            write_file(&part, "part-0.parquet", std::slice::from_ref(&batch)).unwrap();
        assert!(size > 0);
        let names: Vec<_> = std::fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["part-0.parquet"]);
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 3);
    }

    #[test]
    fn integers_are_delta_packed_and_strings_carry_no_statistics() {
        use arrow_array::StringArray;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let batch = RecordBatch::try_from_iter([
            ("step", Arc::new(UInt64Array::from(vec![5u64, 6, 7])) as _),
            (
                "tensor",
                Arc::new(StringArray::from(vec!["b", "a", "c"])) as _,
            ),
        ])
        .unwrap();
        let (path, _) = write_file(dir.path(), "p.parquet", std::slice::from_ref(&batch)).unwrap();
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let (step, tensor) = (group.column(0), group.column(1));
        assert!(step.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
        let stats = step.statistics().expect("integer statistics kept");
        assert_eq!(stats.min_bytes_opt(), Some(&5u64.to_le_bytes()[..]));
        assert!(
            tensor
                .statistics()
                .is_none_or(|s| s.min_bytes_opt().is_none())
        );
    }

    #[test]
    fn refuses_batches_of_another_schema_before_writing() {
        use arrow_schema::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let batch = |nullable: bool, v: Vec<Option<u64>>| {
            let schema = Schema::new(vec![Field::new("loss", DataType::UInt64, nullable)]);
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(UInt64Array::from(v)) as _])
                .unwrap()
        };
        let err = write_file(
            dir.path(),
            "p.parquet",
            &[batch(false, vec![Some(1)]), batch(true, vec![None])],
        )
        .unwrap_err();
        assert!(
            matches!(err, SinkError::SchemaMismatch { index: 1, .. }),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_escaping_run_ids() {
        assert!(partition_dir(Path::new("/tmp/x"), "../evil", "steps").is_err());
    }
}
