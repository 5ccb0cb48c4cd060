//! Reading the collector's lake: `<lake>/run=<id>/table=<name>/*.parquet`, pruned by run (only
//! the wanted run's directories are opened) and streamed one record batch at a time.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Runs present in the lake (directories `run=<id>` holding at least one table).
pub fn runs(lake: &Path) -> anyhow::Result<Vec<String>> {
    let entries = std::fs::read_dir(lake)
        .with_context(|| format!("cannot read the lake {}", lake.display()))?;
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("run=").map(str::to_string))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The published Parquet files of one table of one run.
pub fn files(lake: &Path, run: &str, table: &str) -> anyhow::Result<Vec<PathBuf>> {
    let dir = lake
        .join(format!("run={run}"))
        .join(format!("table={table}"));
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(_) => bail!(
            "run {run:?} has no table {table:?} (no directory {}); was it written by a gradtel collector with live estimators?",
            dir.display()
        ),
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    out.sort();
    Ok(out)
}

/// Values of one column of a table, from the Parquet footers (no data is read): its rows, or
/// for a list column the items of its lists (the `coords` table's `index`).
pub fn value_count(lake: &Path, run: &str, table: &str, column: &str) -> anyhow::Result<u64> {
    let mut n = 0u64;
    for path in files(lake, run, table)? {
        let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let b = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{} is not a Parquet file", path.display()))?;
        let meta = b.metadata();
        let Some(leaf) = meta
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().parts().first().is_some_and(|p| p == column))
        else {
            bail!(
                "table {table} ({}) has no column {column:?}",
                path.display()
            );
        };
        n += meta
            .row_groups()
            .iter()
            .map(|g| g.column(leaf).num_values().max(0) as u64)
            .sum::<u64>();
    }
    Ok(n)
}

/// Call `f` on every record batch of a table, one batch in memory at a time.
pub fn for_each_batch(
    lake: &Path,
    run: &str,
    table: &str,
    f: impl FnMut(&Batch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for_each_batch_of(lake, run, table, None, f)
}

/// As [`for_each_batch`], reading only the named top-level columns when `columns` is given
/// (a name a file lacks is left out of its batches).
pub fn for_each_batch_of(
    lake: &Path,
    run: &str,
    table: &str,
    columns: Option<&[&str]>,
    mut f: impl FnMut(&Batch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for path in files(lake, run, table)? {
        let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{} is not a Parquet file", path.display()))?
            .with_batch_size(8192);
        if let Some(names) = columns {
            let schema = builder.parquet_schema();
            let roots: Vec<usize> = schema
                .root_schema()
                .get_fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| names.contains(&f.name()))
                .map(|(i, _)| i)
                .collect();
            let mask = ProjectionMask::roots(schema, roots);
            builder = builder.with_projection(mask);
        }
        let reader = builder.build()?;
        for batch in reader {
            let batch = batch.with_context(|| format!("reading {}", path.display()))?;
            f(&Batch {
                batch,
                path: &path,
                table,
            })?;
        }
    }
    Ok(())
}

/// A record batch with typed column access and clear errors.
pub struct Batch<'a> {
    pub batch: RecordBatch,
    path: &'a Path,
    table: &'a str,
}

impl<'a> Batch<'a> {
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The same batch transformed by `f` (e.g. the `coords` lists exploded), errors naming the
    /// file.
    pub fn map(
        &self,
        f: impl FnOnce(&RecordBatch) -> Result<RecordBatch, arrow_schema::ArrowError>,
    ) -> anyhow::Result<Batch<'a>> {
        Ok(Batch {
            batch: f(&self.batch)
                .with_context(|| format!("table {} ({})", self.table, self.path.display()))?,
            path: self.path,
            table: self.table,
        })
    }

    fn column(&self, name: &str, want: &[DataType]) -> anyhow::Result<&ArrayRef> {
        let c = self.batch.column_by_name(name).with_context(|| {
            format!(
                "table {} ({}) has no column {name:?}",
                self.table,
                self.path.display()
            )
        })?;
        if !want.contains(c.data_type()) {
            bail!(
                "table {} ({}): column {name:?} has type {}, expected {}",
                self.table,
                self.path.display(),
                c.data_type(),
                want.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
        }
        Ok(c)
    }

    pub fn strs(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let c = self.column(name, &[DataType::Utf8])?.as_string::<i32>();
        Ok((0..c.len()).map(|i| c.value(i).to_string()).collect())
    }

    /// Whether the batch has a column of this name (a lake written by an older collector may
    /// lack a later one).
    pub fn has(&self, name: &str) -> bool {
        self.batch.column_by_name(name).is_some()
    }

    /// Unsigned integer column (u32 or u64) as u64; nulls as `None`.
    pub fn u64s(&self, name: &str) -> anyhow::Result<Vec<Option<u64>>> {
        let c = self.column(name, &[DataType::UInt64, DataType::UInt32])?;
        Ok(match c.data_type() {
            DataType::UInt64 => {
                let a = c.as_primitive::<UInt64Type>();
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i)))
                    .collect()
            }
            _ => {
                let a = c.as_primitive::<UInt32Type>();
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| u64::from(a.value(i))))
                    .collect()
            }
        })
    }

    /// Float column (f32 or f64) as f64; nulls as `None`.
    pub fn f64s(&self, name: &str) -> anyhow::Result<Vec<Option<f64>>> {
        let c = self.column(name, &[DataType::Float64, DataType::Float32])?;
        Ok(match c.data_type() {
            DataType::Float64 => {
                let a = c.as_primitive::<Float64Type>();
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i)))
                    .collect()
            }
            _ => {
                let a = c.as_primitive::<Float32Type>();
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| f64::from(a.value(i))))
                    .collect()
            }
        })
    }

    pub fn bools(&self, name: &str) -> anyhow::Result<Vec<bool>> {
        let c = self.column(name, &[DataType::Boolean])?.as_boolean();
        Ok((0..c.len()).map(|i| c.is_valid(i) && c.value(i)).collect())
    }

    /// A list<uint64> column.
    pub fn u64_lists(&self, name: &str) -> anyhow::Result<Vec<Vec<u64>>> {
        let c = self.column(
            name,
            &[DataType::List(std::sync::Arc::new(
                arrow_schema::Field::new("item", DataType::UInt64, true),
            ))],
        )?;
        let l = c.as_list::<i32>();
        Ok((0..l.len())
            .map(|i| l.value(i).as_primitive::<UInt64Type>().values().to_vec())
            .collect())
    }
}
