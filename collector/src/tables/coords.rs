//! The `coords` table: the raw value of every tracked coordinate, per step and rank — the
//! per-coordinate series the offline analyser tests (iteration-wise and SGN samples).
//!
//! Rows are kept column by column ([`Coords`]): a report carries each tensor's tracked values
//! as an index list and a value list sharing run, step, rank, tensor and flags, and keeping
//! them so costs two slice copies per tensor instead of a row (two shared-name reference
//! counts) per value. The table has a row per value all the same.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, BooleanBufferBuilder, Float32Array, RecordBatch, StringArray,
    UInt32Array, UInt64Array,
};
use arrow::error::ArrowError;

pub const TABLE: &str = "coords";

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordRow {
    pub run_id: Arc<str>,
    pub step: u64,
    pub rank: u32,
    pub tensor: Arc<str>,
    /// Flattened (row-major) coordinate within the tensor.
    pub index: u64,
    /// The gradient value, exactly as the training process held it (f16/bf16 widen exactly).
    pub value: f32,
    /// The rank's local (pre-all-reduce) gradient, or the reduced one.
    pub local: bool,
    pub late: bool,
}

/// What the rows of one group (one tensor of one report) share.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    run_id: Arc<str>,
    step: u64,
    rank: u32,
    tensor: Arc<str>,
    local: bool,
    late: bool,
    /// Rows of this group: `[end of the previous group, end)` of the value columns.
    end: usize,
}

/// Rows column by column, as one step's live estimators produced them.
#[derive(Debug, Clone, Default)]
struct Chunk {
    groups: Vec<Group>,
    index: Vec<u64>,
    value: Vec<f32>,
}

impl Chunk {
    /// The groups with their row ranges in this chunk's columns.
    fn spans(&self) -> impl Iterator<Item = (&Group, std::ops::Range<usize>)> {
        self.groups.iter().scan(0, |start, g| {
            let r = *start..g.end;
            *start = g.end;
            Some((g, r))
        })
    }
}

/// The table's rows, column by column, in chunks: a run's buffer takes each step's rows as
/// they are (growing one set of columns by every step's copied its 2 s of rows over and over
/// and faulted in fresh pages at each doubling, ≈ 3 % of the collector's CPU on small
/// reports), and the columns are concatenated once, when the file is written.
#[derive(Debug, Clone, Default)]
pub struct Coords {
    chunks: Vec<Chunk>,
    rows: usize,
}

impl Coords {
    fn open_chunk(&mut self) -> &mut Chunk {
        if self.chunks.is_empty() {
            self.chunks.push(Chunk::default());
        }
        let last = self.chunks.len() - 1;
        &mut self.chunks[last]
    }

    /// Add the rows `(index[i], value[i])` of one tensor of one rank's report (the shorter
    /// list's length).
    #[allow(clippy::too_many_arguments)]
    pub fn push_group(
        &mut self,
        run_id: &Arc<str>,
        step: u64,
        rank: u32,
        tensor: &Arc<str>,
        local: bool,
        late: bool,
        index: &[u64],
        value: &[f32],
    ) {
        let n = index.len().min(value.len());
        if n == 0 {
            return;
        }
        self.rows += n;
        let c = self.open_chunk();
        c.index.extend_from_slice(&index[..n]);
        c.value.extend_from_slice(&value[..n]);
        c.groups.push(Group {
            run_id: run_id.clone(),
            step,
            rank,
            tensor: tensor.clone(),
            local,
            late,
            end: c.index.len(),
        });
    }

    pub fn push(&mut self, r: &CoordRow) {
        self.push_group(
            &r.run_id,
            r.step,
            r.rank,
            &r.tensor,
            r.local,
            r.late,
            &[r.index],
            &[r.value],
        );
    }

    /// Room for `groups` more groups holding `rows` more rows.
    pub fn reserve(&mut self, groups: usize, rows: usize) {
        let c = self.open_chunk();
        c.groups.reserve(groups);
        c.index.reserve(rows);
        c.value.reserve(rows);
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Move `other`'s rows after these (its chunks, not a copy of its columns).
    pub fn append(&mut self, other: &mut Coords) {
        self.chunks
            .extend(other.chunks.drain(..).filter(|c| !c.groups.is_empty()));
        self.rows += std::mem::take(&mut other.rows);
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.rows = 0;
    }

    /// The groups with their row ranges, chunk by chunk.
    fn spans(&self) -> impl Iterator<Item = (&Chunk, &Group, std::ops::Range<usize>)> {
        self.chunks
            .iter()
            .flat_map(|c| c.spans().map(move |(g, r)| (c, g, r)))
    }

    /// Every row, in order.
    pub fn rows(&self) -> impl Iterator<Item = CoordRow> + '_ {
        self.spans().flat_map(move |(c, g, r)| {
            r.map(move |i| CoordRow {
                run_id: g.run_id.clone(),
                step: g.step,
                rank: g.rank,
                tensor: g.tensor.clone(),
                index: c.index[i],
                value: c.value[i],
                local: g.local,
                late: g.late,
            })
        })
    }

    /// All rows as one record batch, in the documented column order (docs/parquet.md).
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        batch_of(&self.chunks)
    }

    /// The rows as record batches of whole chunks, each of at most `max_rows` rows unless one
    /// chunk (one step's rows) holds more.
    pub fn to_batches(&self, max_rows: usize) -> Result<Vec<RecordBatch>, ArrowError> {
        let mut out = Vec::new();
        let (mut from, mut rows) = (0, 0);
        for (i, c) in self.chunks.iter().enumerate() {
            let n = c.index.len();
            if rows > 0 && rows + n > max_rows {
                out.push(batch_of(&self.chunks[from..i])?);
                (from, rows) = (i, 0);
            }
            rows += n;
        }
        if rows > 0 || out.is_empty() {
            out.push(batch_of(&self.chunks[from..])?);
        }
        Ok(out)
    }
}

/// The rows of `chunks` as one record batch, columns in the documented order (docs/parquet.md).
///
/// Every column but `index` and `value` repeats one value per group; they are filled group
/// by group (a string builder's per-row append, with its validity bit, was most of the
/// table's encoding time), and a string shared by all groups — the run id always, since a
/// buffer holds one run — is one repeated run of bytes.
fn batch_of(chunks: &[Chunk]) -> Result<RecordBatch, ArrowError> {
    let n: usize = chunks.iter().map(|c| c.index.len()).sum();
    let spans = || {
        chunks
            .iter()
            .flat_map(|c| c.spans().map(move |(g, r)| (c, g, r)))
    };
    let strings = |f: fn(&Group) -> &str| -> Result<ArrayRef, ArrowError> {
        let bytes: usize = spans().map(|(_, g, r)| f(g).len() * r.len()).sum();
        if i32::try_from(bytes).is_err() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{bytes} bytes of names in one coords batch overflow a string column"
            )));
        }
        let mut names = spans().map(|(_, g, _)| f(g));
        let first = names.next().unwrap_or_default();
        Ok(Arc::new(if names.all(|s| s == first) {
            StringArray::new_repeated(first, n)
        } else {
            StringArray::from_iter_values(
                spans().flat_map(|(_, g, r)| std::iter::repeat_n(f(g), r.len())),
            )
        }))
    };
    let repeat_u64 = |f: fn(&Group) -> u64| -> Vec<u64> {
        spans()
            .flat_map(|(_, g, r)| std::iter::repeat_n(f(g), r.len()))
            .collect()
    };
    let flags = |f: fn(&Group) -> bool| -> ArrayRef {
        let mut b = BooleanBufferBuilder::new(n);
        for (_, g, r) in spans() {
            b.append_n(r.len(), f(g));
        }
        Arc::new(BooleanArray::new(b.finish(), None))
    };
    let rank: Vec<u32> = spans()
        .flat_map(|(_, g, r)| std::iter::repeat_n(g.rank, r.len()))
        .collect();
    let (mut index, mut value) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for c in chunks {
        index.extend_from_slice(&c.index);
        value.extend_from_slice(&c.value);
    }
    RecordBatch::try_from_iter([
        ("run_id", strings(|g| &g.run_id)?),
        (
            "step",
            Arc::new(UInt64Array::from(repeat_u64(|g| g.step))) as ArrayRef,
        ),
        ("rank", Arc::new(UInt32Array::from(rank))),
        ("tensor", strings(|g| &g.tensor)?),
        ("index", Arc::new(UInt64Array::from(index))),
        ("value", Arc::new(Float32Array::from(value))),
        ("local", flags(|g| g.local)),
        ("late", flags(|g| g.late)),
    ])
}

impl FromIterator<CoordRow> for Coords {
    fn from_iter<I: IntoIterator<Item = CoordRow>>(rows: I) -> Self {
        let mut c = Coords::default();
        for r in rows {
            c.push(&r);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::Columns;
    use proptest::prelude::*;

    /// The table as a row per value, built the plain way: the reference for the columns.
    fn by_rows(rows: &[CoordRow]) -> RecordBatch {
        Columns::new(rows)
            .str("run_id", |r| &r.run_id)
            .u64("step", |r| r.step)
            .u32("rank", |r| r.rank)
            .str("tensor", |r| &r.tensor)
            .u64("index", |r| r.index)
            .f32("value", |r| r.value)
            .bool("local", |r| r.local)
            .bool("late", |r| r.late)
            .finish()
            .expect("batch")
    }

    /// (run, step, rank, tensor, local, late, (index, value) pairs) of one group.
    type GroupSpec = (u8, u64, u32, u8, bool, bool, Vec<(u64, f32)>);

    fn groups() -> impl Strategy<Value = Vec<GroupSpec>> {
        proptest::collection::vec(
            (
                0u8..3,
                0u64..1000,
                0u32..8,
                0u8..4,
                any::<bool>(),
                any::<bool>(),
                proptest::collection::vec((any::<u64>(), any::<f32>()), 0..20),
            ),
            0..12,
        )
    }

    fn fill(c: &mut Coords, rows: &mut Vec<CoordRow>, gs: &[GroupSpec]) {
        for (run, step, rank, tensor, local, late, vals) in gs {
            let run: Arc<str> = format!("run-{run}").into();
            let tensor: Arc<str> = format!("layer{tensor}.weight").into();
            let (index, value): (Vec<u64>, Vec<f32>) = vals.iter().copied().unzip();
            c.push_group(&run, *step, *rank, &tensor, *local, *late, &index, &value);
            rows.extend(vals.iter().map(|&(index, value)| CoordRow {
                run_id: run.clone(),
                step: *step,
                rank: *rank,
                tensor: tensor.clone(),
                index,
                value,
                local: *local,
                late: *late,
            }));
        }
    }

    proptest! {
        /// The columns equal a row per value, and appending one set of columns to another
        /// equals keeping both sets of rows in one (the pipeline merges a flush's tables).
        #[test]
        fn columns_are_the_rows_and_append_concatenates(a in groups(), b in groups()) {
            let (mut ca, mut cb, mut rows) = (Coords::default(), Coords::default(), Vec::new());
            fill(&mut ca, &mut rows, &a);
            fill(&mut cb, &mut rows, &b);
            ca.append(&mut cb);
            prop_assert!(cb.is_empty());
            prop_assert_eq!(ca.len(), rows.len());
            prop_assert_eq!(ca.rows().collect::<Vec<_>>(), rows.clone());
            let (got, want) = (ca.to_batch().expect("batch"), by_rows(&rows));
            prop_assert_eq!(got.schema(), want.schema());
            // Compared as bits: NaN values must come through too.
            for (g, w) in got.columns().iter().zip(want.columns()) {
                prop_assert_eq!(g.to_data(), w.to_data());
            }
        }
    }

    proptest! {
        /// Batches of whole chunks, bounded in rows unless one chunk is larger, concatenate
        /// to the one batch of all rows.
        #[test]
        fn bounded_batches_concatenate_to_the_whole(
            parts in proptest::collection::vec(groups(), 0..6),
            max_rows in 1usize..40,
        ) {
            let (mut all, mut rows) = (Coords::default(), Vec::new());
            for gs in &parts {
                let mut step = Coords::default();
                fill(&mut step, &mut rows, gs);
                all.append(&mut step);
            }
            let batches = all.to_batches(max_rows).expect("batches");
            let whole = all.to_batch().expect("batch");
            prop_assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), whole.num_rows());
            for b in &batches {
                prop_assert!(b.num_rows() <= max_rows || all.chunks.iter().any(|c| c.index.len() == b.num_rows()));
            }
            let joined = arrow::compute::concat_batches(&whole.schema(), &batches).expect("concat");
            for (g, w) in joined.columns().iter().zip(whole.columns()) {
                prop_assert_eq!(g.to_data(), w.to_data());
            }
        }
    }

    #[test]
    fn lists_of_unequal_length_keep_the_pairs() {
        let mut c = Coords::default();
        let (run, t): (Arc<str>, Arc<str>) = ("r".into(), "t".into());
        c.push_group(&run, 1, 0, &t, true, false, &[4, 5, 6], &[0.5, 1.5]);
        c.push_group(&run, 1, 0, &t, true, false, &[], &[]);
        assert_eq!(c.len(), 2);
        let rows: Vec<_> = c.rows().map(|r| (r.index, r.value)).collect();
        assert_eq!(rows, [(4, 0.5), (5, 1.5)]);
        c.clear();
        assert!(c.is_empty() && c.to_batch().expect("batch").num_rows() == 0);
    }
}
