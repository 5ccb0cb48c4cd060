//! The `coords` table: the raw value of every tracked coordinate, per step and rank — the
//! per-coordinate series the offline analyser tests (iteration-wise and SGN samples).
//!
//! Layout: a row per tensor of a report (run, step, rank, tensor, flags) with its tracked
//! coordinates as two lists of equal length, `index` and `value`. A row per value repeated six
//! of the eight columns over every tracked coordinate, and parquet-rs spends ≥ 7 ns per value
//! even on a constant column: 124–142 ns per value to write that layout against 45–52 ns for
//! this one, the same bytes on disk (`cargo bench -p gradtel-collector --bench coords_layout`,
//! `bench/RESULTS.md`). [`explode`] turns a batch of either layout (files written before this
//! one had a row per value) back into a row per value.
//!
//! Rows are kept column by column ([`Coords`]): a report carries each tensor's tracked values
//! as an index list and a value list sharing run, step, rank, tensor and flags — a group, which
//! is what a row of the table holds.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, ListArray, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::ArrowError;
use arrow_schema::{DataType, Field, Schema};

pub const TABLE: &str = "coords";

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordRow {
    pub run_id: Arc<str>,
    pub step: u64,
    /// The run's trajectory the step belongs to (`Assembly::trajectory`).
    pub trajectory: u64,
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
    trajectory: u64,
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
        (step, trajectory): (u64, u64),
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
            trajectory,
            rank,
            tensor: tensor.clone(),
            local,
            late,
            end: c.index.len(),
        });
    }

    /// One row; a row that continues the last group (same run, step, rank, tensor and flags)
    /// joins it.
    pub fn push(&mut self, r: &CoordRow) {
        if let Some(c) = self.chunks.last_mut()
            && let Some(g) = c.groups.last_mut()
            && g.end == c.index.len()
            && (&*g.run_id, g.step, g.trajectory, g.rank, &*g.tensor)
                == (&*r.run_id, r.step, r.trajectory, r.rank, &*r.tensor)
            && (g.local, g.late) == (r.local, r.late)
        {
            c.index.push(r.index);
            c.value.push(r.value);
            g.end += 1;
            self.rows += 1;
            return;
        }
        self.push_group(
            &r.run_id,
            (r.step, r.trajectory),
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
                trajectory: g.trajectory,
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

    /// The rows as record batches of whole chunks, each of at most `max_rows` tracked values
    /// unless one chunk (one step's values) holds more.
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

/// The groups of `chunks` as one record batch, a row per group, columns in the documented
/// order (docs/parquet.md). A string shared by all groups — the run id always, since a buffer
/// holds one run — is one repeated run of bytes.
fn batch_of(chunks: &[Chunk]) -> Result<RecordBatch, ArrowError> {
    let groups = || chunks.iter().flat_map(|c| c.groups.iter());
    let rows = groups().count();
    let values: usize = chunks.iter().map(|c| c.index.len()).sum();
    let Ok(last) = i32::try_from(values) else {
        return Err(ArrowError::InvalidArgumentError(format!(
            "{values} tracked values in one coords batch overflow its list offsets"
        )));
    };
    let strings = |f: fn(&Group) -> &str| -> Result<ArrayRef, ArrowError> {
        let bytes: usize = groups().map(|g| f(g).len()).sum();
        if i32::try_from(bytes).is_err() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{bytes} bytes of names in one coords batch overflow a string column"
            )));
        }
        let mut names = groups().map(f);
        let first = names.next().unwrap_or_default();
        Ok(Arc::new(if names.all(|s| s == first) {
            StringArray::new_repeated(first, rows)
        } else {
            StringArray::from_iter_values(groups().map(f))
        }))
    };
    let flags = |f: fn(&Group) -> bool| -> ArrayRef {
        Arc::new(BooleanArray::from_iter(groups().map(|g| Some(f(g)))))
    };
    // Each group's end is an offset into its chunk's columns; the batch's lists run over the
    // chunks' columns one after another.
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0i32);
    let mut base = 0;
    for c in chunks {
        // Ends are ≤ `values`, which fits an i32.
        offsets.extend(c.groups.iter().map(|g| (base + g.end) as i32));
        base += c.index.len();
    }
    debug_assert_eq!(offsets.last().copied(), Some(last));
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    let (mut index, mut value) = (Vec::with_capacity(values), Vec::with_capacity(values));
    for c in chunks {
        index.extend_from_slice(&c.index);
        value.extend_from_slice(&c.value);
    }
    let list = |item: DataType, values: ArrayRef| -> ArrayRef {
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", item, false)),
            offsets.clone(),
            values,
            None,
        ))
    };
    RecordBatch::try_from_iter([
        ("run_id", strings(|g| &g.run_id)?),
        (
            "step",
            Arc::new(UInt64Array::from_iter_values(groups().map(|g| g.step))) as ArrayRef,
        ),
        (
            "trajectory",
            Arc::new(UInt64Array::from_iter_values(
                groups().map(|g| g.trajectory),
            )),
        ),
        (
            "rank",
            Arc::new(UInt32Array::from_iter_values(groups().map(|g| g.rank))),
        ),
        ("tensor", strings(|g| &g.tensor)?),
        (
            "index",
            list(DataType::UInt64, Arc::new(UInt64Array::from(index))),
        ),
        (
            "value",
            list(DataType::Float32, Arc::new(Float32Array::from(value))),
        ),
        ("local", flags(|g| g.local)),
        ("late", flags(|g| g.late)),
    ])
}

/// A batch of the `coords` table as a row per tracked value, in either layout: the lists of
/// this one exploded (every other column repeated over its row's values), a batch of the
/// earlier row-per-value layout returned as it is. Columns keep their order and names; the
/// exploded `index` and `value` take their lists' item types (`UInt64`, `Float32`).
pub fn explode(b: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let item_nullable = |l: &ListArray| match l.data_type() {
        DataType::List(f) => f.is_nullable(),
        _ => true,
    };
    let lists = |name: &str| b.column_by_name(name).and_then(|c| c.as_list_opt::<i32>());
    let (Some(index), Some(value)) = (lists("index"), lists("value")) else {
        return Ok(b.clone());
    };
    if !index.offsets().lengths().eq(value.offsets().lengths()) {
        return Err(ArrowError::InvalidArgumentError(
            "coords: a row's index and value lists differ in length".into(),
        ));
    }
    // A null list may still span values; the collector never writes one.
    if index.null_count() > 0 || value.null_count() > 0 {
        return Err(ArrowError::InvalidArgumentError(
            "coords: a row without index or value list".into(),
        ));
    }
    // Pairwise by position within each row: the two lists' values need not start at the same
    // offset of their arrays.
    let items = |l: &ListArray| {
        let o = l.offsets();
        let first = o[0] as usize;
        l.values().slice(first, o[o.len() - 1] as usize - first)
    };
    let parents: UInt32Array = index
        .offsets()
        .lengths()
        .enumerate()
        .flat_map(|(row, n)| std::iter::repeat_n(row as u32, n))
        .collect();
    let mut fields = Vec::with_capacity(b.num_columns());
    let mut columns = Vec::with_capacity(b.num_columns());
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        let (field, column) = match f.name().as_str() {
            "index" => (
                Field::new("index", index.value_type(), item_nullable(index)),
                items(index),
            ),
            "value" => (
                Field::new("value", value.value_type(), item_nullable(value)),
                items(value),
            ),
            _ => (
                f.as_ref().clone(),
                arrow_select::take::take(c.as_ref(), &parents, None)?,
            ),
        };
        fields.push(field);
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
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
            .u64("trajectory", |r| r.trajectory)
            .u32("rank", |r| r.rank)
            .str("tensor", |r| &r.tensor)
            .u64("index", |r| r.index)
            .f32("value", |r| r.value)
            .bool("local", |r| r.local)
            .bool("late", |r| r.late)
            .finish()
            .expect("batch")
    }

    /// (run, step, trajectory, rank, tensor, local, late, (index, value) pairs) of one group.
    type GroupSpec = (u8, u64, u64, u32, u8, bool, bool, Vec<(u64, f32)>);

    fn groups() -> impl Strategy<Value = Vec<GroupSpec>> {
        proptest::collection::vec(
            (
                0u8..3,
                0u64..1000,
                0u64..3,
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
        for (run, step, trajectory, rank, tensor, local, late, vals) in gs {
            let run: Arc<str> = format!("run-{run}").into();
            let tensor: Arc<str> = format!("layer{tensor}.weight").into();
            let (index, value): (Vec<u64>, Vec<f32>) = vals.iter().copied().unzip();
            c.push_group(
                &run,
                (*step, *trajectory),
                *rank,
                &tensor,
                *local,
                *late,
                &index,
                &value,
            );
            rows.extend(vals.iter().map(|&(index, value)| CoordRow {
                run_id: run.clone(),
                step: *step,
                trajectory: *trajectory,
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
            let batch = ca.to_batch().expect("batch");
            prop_assert_eq!(batch.num_rows(), a.iter().chain(&b).filter(|g| !g.7.is_empty()).count());
            let (got, want) = (explode(&batch).expect("explode"), by_rows(&rows));
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
                let values = explode(b).expect("explode").num_rows();
                prop_assert!(values <= max_rows || all.chunks.iter().any(|c| c.index.len() == values));
            }
            let joined = arrow_select::concat::concat_batches(&whole.schema(), &batches).expect("concat");
            for (g, w) in joined.columns().iter().zip(whole.columns()) {
                prop_assert_eq!(g.to_data(), w.to_data());
            }
        }
    }

    proptest! {
        /// Rows pushed one by one join their group: the same table as the groups pushed whole.
        #[test]
        fn rows_pushed_one_by_one_make_the_same_table(gs in groups()) {
            let (mut grouped, mut rows) = (Coords::default(), Vec::new());
            fill(&mut grouped, &mut rows, &gs);
            let single: Coords = rows.iter().cloned().collect();
            let (got, want) = (single.to_batch().expect("batch"), grouped.to_batch().expect("batch"));
            prop_assert!(got.num_rows() <= want.num_rows());
            let (got, want) = (explode(&got).expect("explode"), explode(&want).expect("explode"));
            for (g, w) in got.columns().iter().zip(want.columns()) {
                prop_assert_eq!(g.to_data(), w.to_data());
            }
        }
    }

    #[test]
    fn a_row_per_report_tensor_with_its_values_as_lists() {
        let mut c = Coords::default();
        let (run, a, b): (Arc<str>, Arc<str>, Arc<str>) = ("r".into(), "a".into(), "b".into());
        c.push_group(&run, (7, 0), 0, &a, true, false, &[1, 5], &[0.5, -1.0]);
        c.push_group(&run, (7, 0), 1, &a, true, false, &[1, 5], &[0.25, 2.0]);
        c.push_group(&run, (7, 0), 1, &b, false, true, &[3], &[4.0]);
        let batch = c.to_batch().expect("batch");
        assert_eq!(batch.num_rows(), 3);
        let list = |name: &str, row: usize| {
            batch
                .column_by_name(name)
                .expect(name)
                .as_list::<i32>()
                .value(row)
        };
        assert_eq!(
            list("index", 1)
                .as_primitive::<arrow_array::types::UInt64Type>()
                .values(),
            &[1, 5]
        );
        assert_eq!(
            list("value", 2)
                .as_primitive::<arrow_array::types::Float32Type>()
                .values(),
            &[4.0]
        );
        let flat = explode(&batch).expect("explode");
        assert_eq!(flat.num_rows(), 5);
        assert_eq!(
            flat.column_by_name("rank")
                .expect("rank")
                .as_primitive::<arrow_array::types::UInt32Type>()
                .values(),
            &[0, 0, 1, 1, 1]
        );
        // A batch already a row per value (the earlier layout) passes through.
        assert_eq!(explode(&flat).expect("explode"), flat);
        // Lists of different lengths in one row are refused.
        let v = batch.schema().index_of("value").expect("value column");
        let mut cols = batch.columns().to_vec();
        cols[v] = Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            OffsetBuffer::from_lengths([2, 1, 2]),
            Arc::new(Float32Array::from(vec![0.0; 5])),
            None,
        ));
        let bad = RecordBatch::try_new(batch.schema(), cols.clone()).expect("batch");
        assert!(explode(&bad).is_err());
        // Lists whose values start at different offsets of their arrays pair by position.
        let mut shifted = batch.columns().to_vec();
        shifted[v] = Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            OffsetBuffer::new(ScalarBuffer::from(vec![1, 3, 5, 6])),
            Arc::new(Float32Array::from(vec![9.0, 0.5, -1.0, 0.25, 2.0, 4.0])),
            None,
        ));
        let shifted = RecordBatch::try_new(batch.schema(), shifted).expect("batch");
        assert_eq!(
            explode(&shifted).expect("explode"),
            explode(&batch).expect("explode")
        );
        // A row without lists is refused.
        cols[v] = Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            OffsetBuffer::from_lengths([2, 2, 1]),
            Arc::new(Float32Array::from(vec![0.0; 5])),
            Some(vec![true, false, true].into()),
        ));
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[v] = fields[v].clone().with_nullable(true);
        let bad = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("batch");
        assert!(explode(&bad).is_err());
    }

    #[test]
    fn lists_of_unequal_length_keep_the_pairs() {
        let mut c = Coords::default();
        let (run, t): (Arc<str>, Arc<str>) = ("r".into(), "t".into());
        c.push_group(&run, (1, 0), 0, &t, true, false, &[4, 5, 6], &[0.5, 1.5]);
        c.push_group(&run, (1, 0), 0, &t, true, false, &[], &[]);
        assert_eq!(c.len(), 2);
        let rows: Vec<_> = c.rows().map(|r| (r.index, r.value)).collect();
        assert_eq!(rows, [(4, 0.5), (5, 1.5)]);
        c.clear();
        assert!(c.is_empty() && c.to_batch().expect("batch").num_rows() == 0);
    }
}
