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

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, RecordBatch, StringArray,
    TimestampNanosecondArray, UInt32Array, UInt64Array,
};
use arrow::error::ArrowError;

/// Rows of every table, for one run, waiting for their files.
#[derive(Debug, Default)]
pub struct Tables {
    pub steps: Vec<steps::StepRow>,
    pub tails: Vec<tails::TailRow>,
    pub coords: coords::Coords,
    pub sgn: Vec<sgn::SgnRow>,
    pub spectra: Vec<spectra::SpectrumRow>,
    pub alerts: Vec<alerts::AlertRow>,
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

    /// Names of the non-empty tables, in write order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (steps::TABLE, self.steps.len()),
            (tails::TABLE, self.tails.len()),
            (coords::TABLE, self.coords.len()),
            (sgn::TABLE, self.sgn.len()),
            (spectra::TABLE, self.spectra.len()),
            (alerts::TABLE, self.alerts.len()),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, _)| t)
        .collect()
    }

    /// Encode one table's rows.
    pub fn batch(&self, table: &str) -> Result<RecordBatch, ArrowError> {
        match table {
            steps::TABLE => steps::to_batch(&self.steps),
            tails::TABLE => tails::to_batch(&self.tails),
            coords::TABLE => self.coords.to_batch(),
            sgn::TABLE => sgn::to_batch(&self.sgn),
            spectra::TABLE => spectra::to_batch(&self.spectra),
            alerts::TABLE => alerts::to_batch(&self.alerts),
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
pub struct Columns<'a, R> {
    rows: &'a [R],
    cols: Vec<(&'static str, ArrayRef)>,
}

impl<'a, R> Columns<'a, R> {
    pub fn new(rows: &'a [R]) -> Self {
        Self {
            rows,
            cols: Vec::new(),
        }
    }

    pub fn array(mut self, name: &'static str, a: ArrayRef) -> Self {
        self.cols.push((name, a));
        self
    }

    pub fn str(self, name: &'static str, f: impl Fn(&R) -> &str) -> Self {
        let a: StringArray = self.rows.iter().map(|r| Some(f(r))).collect();
        self.array(name, Arc::new(a))
    }

    pub fn opt_str(self, name: &'static str, f: impl Fn(&R) -> Option<&str>) -> Self {
        let a: StringArray = self.rows.iter().map(f).collect();
        self.array(name, Arc::new(a))
    }

    pub fn u64(self, name: &'static str, f: impl Fn(&R) -> u64) -> Self {
        self.opt_u64(name, |r| Some(f(r)))
    }

    pub fn opt_u64(self, name: &'static str, f: impl Fn(&R) -> Option<u64>) -> Self {
        let a: UInt64Array = self.rows.iter().map(f).collect();
        self.array(name, Arc::new(a))
    }

    pub fn u32(self, name: &'static str, f: impl Fn(&R) -> u32) -> Self {
        self.opt_u32(name, |r| Some(f(r)))
    }

    pub fn opt_u32(self, name: &'static str, f: impl Fn(&R) -> Option<u32>) -> Self {
        let a: UInt32Array = self.rows.iter().map(f).collect();
        self.array(name, Arc::new(a))
    }

    pub fn f64(self, name: &'static str, f: impl Fn(&R) -> Option<f64>) -> Self {
        let a: Float64Array = self.rows.iter().map(f).collect();
        self.array(name, Arc::new(a))
    }

    pub fn f32(self, name: &'static str, f: impl Fn(&R) -> f32) -> Self {
        let a: Float32Array = self.rows.iter().map(|r| Some(f(r))).collect();
        self.array(name, Arc::new(a))
    }

    pub fn bool(self, name: &'static str, f: impl Fn(&R) -> bool) -> Self {
        self.opt_bool(name, |r| Some(f(r)))
    }

    pub fn opt_bool(self, name: &'static str, f: impl Fn(&R) -> Option<bool>) -> Self {
        let a: BooleanArray = self.rows.iter().map(f).collect();
        self.array(name, Arc::new(a))
    }

    /// UTC timestamp in nanoseconds.
    pub fn time(self, name: &'static str, f: impl Fn(&R) -> i64) -> Self {
        let a = TimestampNanosecondArray::from(self.rows.iter().map(f).collect::<Vec<_>>())
            .with_timezone("UTC");
        self.array(name, Arc::new(a))
    }

    pub fn finish(self) -> Result<RecordBatch, ArrowError> {
        RecordBatch::try_from_iter(self.cols)
    }
}
