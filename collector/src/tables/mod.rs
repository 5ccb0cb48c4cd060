//! The Parquet tables, one module each; `docs/parquet.md` documents every column and these
//! modules are the one place that defines them. Each table is its own Hive partition
//! (`run=<id>/table=<name>/`), so each can be read alone with its own schema.

pub mod alerts;
pub mod coords;
pub mod sgn;
pub mod spectra;
pub mod steps;
pub mod tails;

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, RecordBatch, StringArray,
    TimestampNanosecondArray, UInt32Array, UInt64Array,
};
use arrow_schema::ArrowError;
use arrow_schema::{Field, Schema};

/// Rows per record batch of the tables whose rows are small (for `coords`, tracked values).
const BATCH_ROWS: usize = 8192;

/// Rows of every table, for one run, waiting for their files.
#[derive(Debug, Default)]
pub struct Tables {
    pub steps: Vec<steps::StepRow>,
    pub tails: Vec<tails::TailRow>,
    pub coords: coords::Coords,
    pub sgn: Vec<sgn::SgnRow>,
    pub spectra: Vec<spectra::SpectrumRow>,
    pub alerts: Vec<alerts::AlertRow>,
    /// A table whose encoding fails, to test what the writer does then.
    #[cfg(test)]
    pub poisoned: Option<&'static str>,
}

impl Tables {
    pub fn len(&self) -> usize {
        self.steps.len()
            + self.tails.len()
            + self.coords.len()
            + self.sgn.len()
            + self.spectra.len()
            + self.alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn append(&mut self, mut other: Tables) {
        self.steps.append(&mut other.steps);
        self.tails.append(&mut other.tails);
        self.coords.append(&mut other.coords);
        self.sgn.append(&mut other.sgn);
        self.spectra.append(&mut other.spectra);
        self.alerts.append(&mut other.alerts);
    }

    /// Rows of one table.
    pub fn len_of(&self, table: &str) -> usize {
        match table {
            steps::TABLE => self.steps.len(),
            tails::TABLE => self.tails.len(),
            coords::TABLE => self.coords.len(),
            sgn::TABLE => self.sgn.len(),
            spectra::TABLE => self.spectra.len(),
            alerts::TABLE => self.alerts.len(),
            _ => 0,
        }
    }

    /// Names of the non-empty tables, in write order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            steps::TABLE,
            tails::TABLE,
            coords::TABLE,
            sgn::TABLE,
            spectra::TABLE,
            alerts::TABLE,
        ]
        .into_iter()
        .filter(|t| self.len_of(t) > 0)
        .collect()
    }

    /// Encode one table's rows, as record batches of a bounded size (at least one, empty when
    /// the table is). A roll's rows as one batch built columns of tens of megabytes beside the
    /// rows themselves, in memory the kernel had to hand out and zero for each roll; batches of
    /// a few hundred kilobytes bound the writer's extra memory and come from the allocator's
    /// caches. (Throughput: the same within the bench's noise, `bench/RESULTS.md`.)
    pub fn batches(&self, table: &str) -> Result<Vec<RecordBatch>, ArrowError> {
        #[cfg(test)]
        if self.poisoned == Some(table) {
            return Err(ArrowError::InvalidArgumentError(
                "poisoned for a test".into(),
            ));
        }
        fn chunked<R>(
            rows: &[R],
            per_batch: usize,
            to_batch: fn(&[R]) -> Result<RecordBatch, ArrowError>,
        ) -> Result<Vec<RecordBatch>, ArrowError> {
            if rows.is_empty() {
                return Ok(vec![to_batch(rows)?]);
            }
            rows.chunks(per_batch).map(to_batch).collect()
        }
        match table {
            // A row carries a histogram of ≈ 1,000 buckets or more.
            steps::TABLE => chunked(&self.steps, 16, steps::to_batch),
            tails::TABLE => chunked(&self.tails, BATCH_ROWS, tails::to_batch),
            coords::TABLE => self.coords.to_batches(BATCH_ROWS),
            sgn::TABLE => chunked(&self.sgn, BATCH_ROWS, sgn::to_batch),
            spectra::TABLE => chunked(&self.spectra, BATCH_ROWS, spectra::to_batch),
            alerts::TABLE => chunked(&self.alerts, BATCH_ROWS, alerts::to_batch),
            other => Err(ArrowError::InvalidArgumentError(format!(
                "no table {other:?}"
            ))),
        }
    }

    /// Drop one table's rows (after its file was published).
    pub fn clear(&mut self, table: &str) {
        match table {
            steps::TABLE => self.steps.clear(),
            tails::TABLE => self.tails.clear(),
            coords::TABLE => self.coords.clear(),
            sgn::TABLE => self.sgn.clear(),
            spectra::TABLE => self.spectra.clear(),
            alerts::TABLE => self.alerts.clear(),
            _ => {}
        }
    }
}

/// Builds a record batch column by column from rows, in the documented column order.
///
/// Each column's nullability is declared by the method that adds it, never read off the rows:
/// a file is written from several batches under the first one's schema, and a column that
/// had no nulls in the first batch but some in a later one (a step without a loss, a
/// constant tensor's skewness) made every write of the run fail.
pub struct Columns<'a, R> {
    rows: &'a [R],
    cols: Vec<(Field, ArrayRef)>,
}

impl<'a, R> Columns<'a, R> {
    pub fn new(rows: &'a [R]) -> Self {
        Self {
            rows,
            cols: Vec::new(),
        }
    }

    /// A column built by the caller; `nullable` says whether any row may ever be null.
    pub fn array(mut self, name: &'static str, a: ArrayRef, nullable: bool) -> Self {
        self.cols
            .push((Field::new(name, a.data_type().clone(), nullable), a));
        self
    }

    pub fn str(self, name: &'static str, f: impl Fn(&R) -> &str) -> Self {
        let a: StringArray = self.rows.iter().map(|r| Some(f(r))).collect();
        self.array(name, Arc::new(a), false)
    }

    pub fn opt_str(self, name: &'static str, f: impl Fn(&R) -> Option<&str>) -> Self {
        let a: StringArray = self.rows.iter().map(f).collect();
        self.array(name, Arc::new(a), true)
    }

    /// A column of `A` from one optional value per row.
    fn collect<T, A>(self, name: &'static str, nullable: bool, f: impl Fn(&R) -> Option<T>) -> Self
    where
        A: FromIterator<Option<T>> + Array + 'static,
    {
        let a: A = self.rows.iter().map(f).collect();
        self.array(name, Arc::new(a), nullable)
    }

    pub fn u64(self, name: &'static str, f: impl Fn(&R) -> u64) -> Self {
        self.collect::<_, UInt64Array>(name, false, |r| Some(f(r)))
    }

    pub fn opt_u64(self, name: &'static str, f: impl Fn(&R) -> Option<u64>) -> Self {
        self.collect::<_, UInt64Array>(name, true, f)
    }

    pub fn u32(self, name: &'static str, f: impl Fn(&R) -> u32) -> Self {
        self.collect::<_, UInt32Array>(name, false, |r| Some(f(r)))
    }

    pub fn opt_u32(self, name: &'static str, f: impl Fn(&R) -> Option<u32>) -> Self {
        self.collect::<_, UInt32Array>(name, true, f)
    }

    /// Nullable: an estimate is null where it is undefined.
    pub fn f64(self, name: &'static str, f: impl Fn(&R) -> Option<f64>) -> Self {
        self.collect::<_, Float64Array>(name, true, f)
    }

    pub fn f32(self, name: &'static str, f: impl Fn(&R) -> f32) -> Self {
        self.collect::<_, Float32Array>(name, false, |r| Some(f(r)))
    }

    pub fn bool(self, name: &'static str, f: impl Fn(&R) -> bool) -> Self {
        self.collect::<_, BooleanArray>(name, false, |r| Some(f(r)))
    }

    pub fn opt_bool(self, name: &'static str, f: impl Fn(&R) -> Option<bool>) -> Self {
        self.collect::<_, BooleanArray>(name, true, f)
    }

    /// UTC timestamp in nanoseconds.
    pub fn time(self, name: &'static str, f: impl Fn(&R) -> i64) -> Self {
        let a = TimestampNanosecondArray::from(self.rows.iter().map(f).collect::<Vec<_>>())
            .with_timezone("UTC");
        self.array(name, Arc::new(a), false)
    }

    pub fn finish(self) -> Result<RecordBatch, ArrowError> {
        let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = self.cols.into_iter().unzip();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
    }
}
