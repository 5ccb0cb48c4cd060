//! Reading one numeric column for `gradtel fit`: Parquet, CSV or `.npy`.
//!
//! * Parquet: any integer or floating column (cast to f64); nulls are dropped and counted.
//! * CSV: a header row; the column is chosen by name (or the only column); empty fields are
//!   dropped and counted as nulls; anything else that is not a number is an error.
//! * `.npy`: little-endian f8, f4, f2, i8, i4, i2, i1, u8, u4, u2, u1 of any shape (flattened).
//!
//! Without `--column`, a file with exactly one numeric column uses it.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, Float64Array};
use arrow_schema::DataType;

/// Values read and what was left out.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub data: T,
    /// The column read (Parquet, CSV).
    pub column: Option<String>,
    /// Null values (or null rows) left out.
    pub nulls: usize,
}

/// One column of numbers.
pub type Column = Loaded<Vec<f64>>;
/// One vector per row.
pub type Matrix = Loaded<Vec<Vec<f64>>>;

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

pub fn read_column(path: &Path, column: Option<&str>) -> anyhow::Result<Column> {
    match extension(path).as_str() {
        "parquet" | "pq" => read_parquet(path, column),
        "csv" => read_csv(path, column),
        "npy" => {
            if column.is_some() {
                bail!("--column does not apply to .npy files");
            }
            read_npy(path)
        }
        _ => bail!(
            "{}: unknown input type; use a .parquet, .csv or .npy file",
            path.display()
        ),
    }
}

fn pick(names: &[String], numeric: &[bool], wanted: Option<&str>) -> anyhow::Result<usize> {
    match wanted {
        Some(w) => names
            .iter()
            .position(|n| n == w)
            .with_context(|| format!("no column {w:?}; columns are {names:?}")),
        None => {
            let numeric: Vec<usize> = (0..names.len()).filter(|&i| numeric[i]).collect();
            match numeric.as_slice() {
                [only] => Ok(*only),
                _ => bail!(
                    "choose a column with --column; numeric columns are {:?}",
                    numeric.iter().map(|&i| &names[i]).collect::<Vec<_>>()
                ),
            }
        }
    }
}

/// Open a Parquet file and read only the column chosen among those `accepts` admits.
fn parquet_column(
    path: &Path,
    column: Option<&str>,
    accepts: impl Fn(&DataType) -> bool,
    wanted: &str,
) -> anyhow::Result<(
    String,
    parquet::arrow::arrow_reader::ParquetRecordBatchReader,
)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
    let schema = builder.schema().clone();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let ok: Vec<bool> = schema
        .fields()
        .iter()
        .map(|f| accepts(f.data_type()))
        .collect();
    let idx = pick(&names, &ok, column)?;
    if !ok[idx] {
        bail!(
            "column {:?} has type {}, not {wanted}",
            names[idx],
            schema.field(idx).data_type()
        );
    }
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [idx]);
    Ok((names[idx].clone(), builder.with_projection(mask).build()?))
}

fn read_parquet(path: &Path, column: Option<&str>) -> anyhow::Result<Column> {
    let (name, reader) = parquet_column(
        path,
        column,
        |t| t.is_integer() || t.is_floating(),
        "a number",
    )?;
    let mut values = Vec::new();
    let mut nulls = 0;
    for batch in reader {
        let batch = batch?;
        let col = to_f64(batch.column(0))?;
        nulls += col.null_count();
        values.extend(col.iter().flatten());
    }
    Ok(Column {
        data: values,
        column: Some(name),
        nulls,
    })
}

/// A numeric array as f64, nulls kept, each value converted as Rust's `as f64` does (what
/// arrow's cast kernel does for these types; that kernel is not built, see Cargo.toml).
fn to_f64(a: &dyn Array) -> anyhow::Result<Float64Array> {
    fn each<T: ArrowPrimitiveType>(a: &dyn Array, f: impl Fn(T::Native) -> f64) -> Float64Array {
        a.as_primitive::<T>().unary(f)
    }
    Ok(match a.data_type() {
        DataType::Float64 => a.as_primitive::<Float64Type>().clone(),
        DataType::Float32 => each::<Float32Type>(a, f64::from),
        DataType::Float16 => each::<Float16Type>(a, |x| x.to_f64()),
        DataType::Int8 => each::<Int8Type>(a, f64::from),
        DataType::Int16 => each::<Int16Type>(a, f64::from),
        DataType::Int32 => each::<Int32Type>(a, f64::from),
        DataType::Int64 => each::<Int64Type>(a, |x| x as f64),
        DataType::UInt8 => each::<UInt8Type>(a, f64::from),
        DataType::UInt16 => each::<UInt16Type>(a, f64::from),
        DataType::UInt32 => each::<UInt32Type>(a, f64::from),
        DataType::UInt64 => each::<UInt64Type>(a, |x| x as f64),
        t => bail!("a column of {t} is not one of numbers"),
    })
}

fn read_csv(path: &Path, column: Option<&str>) -> anyhow::Result<Column> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let names: Vec<String> = rdr.headers()?.iter().map(str::to_string).collect();
    let all = vec![true; names.len()];
    let idx = if column.is_none() && names.len() == 1 {
        0
    } else {
        pick(&names, &all, column.or(Some("")).filter(|c| !c.is_empty()))?
    };
    let mut values = Vec::new();
    let mut nulls = 0;
    for (line, rec) in rdr.records().enumerate() {
        let rec = rec?;
        let field = rec.get(idx).unwrap_or("").trim();
        if field.is_empty() {
            nulls += 1;
            continue;
        }
        let v: f64 = field.parse().with_context(|| {
            format!(
                "row {}: {field:?} in column {:?} is not a number",
                line + 2,
                names[idx]
            )
        })?;
        values.push(v);
    }
    Ok(Column {
        data: values,
        column: Some(names[idx].clone()),
        nulls,
    })
}

fn read_npy(path: &Path) -> anyhow::Result<Column> {
    let (_, values) = read_npy_array(path)?;
    Ok(Column {
        data: values,
        column: None,
        nulls: 0,
    })
}

/// Shape and values (C order) of a `.npy` array.
fn read_npy_array(path: &Path) -> anyhow::Result<(Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{} is not a .npy file", path.display());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .context("truncated .npy header")?;
    let descr = header
        .split("'descr':")
        .nth(1)
        .and_then(|s| s.split('\'').nth(1))
        .context("no dtype in the .npy header")?;
    if header.contains("'fortran_order': True") {
        bail!("Fortran-ordered .npy arrays are not supported; save with numpy.ascontiguousarray");
    }
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .context("no shape in the .npy header")?
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = &bytes[start + header_len..];
    let conv: (usize, fn(&[u8]) -> f64) = match descr {
        "<f8" => (8, |b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
        "<f4" => (4, |b| {
            f64::from(f32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
        }),
        "<f2" => (2, |b| f64::from(half::f16::from_le_bytes([b[0], b[1]]))),
        "<i8" => (8, |b| {
            i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64
        }),
        "<i4" => (4, |b| {
            f64::from(i32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
        }),
        "<i2" => (2, |b| f64::from(i16::from_le_bytes([b[0], b[1]]))),
        "|i1" => (1, |b| f64::from(b[0] as i8)),
        "<u8" => (8, |b| {
            u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64
        }),
        "<u4" => (4, |b| {
            f64::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
        }),
        "<u2" => (2, |b| f64::from(u16::from_le_bytes([b[0], b[1]]))),
        "|u1" => (1, |b| f64::from(b[0])),
        other => bail!("unsupported .npy dtype {other:?} (use little-endian numbers)"),
    };
    if data.len() % conv.0 != 0 {
        bail!(
            ".npy payload of {} bytes is not whole {descr} values",
            data.len()
        );
    }
    Ok((shape, data.chunks_exact(conv.0).map(conv.1).collect()))
}

/// Read one vector per row: a 2-D `.npy`, or a Parquet list / fixed-size-list column of numbers.
pub fn read_matrix(path: &Path, column: Option<&str>) -> anyhow::Result<Matrix> {
    match extension(path).as_str() {
        "npy" => {
            let (shape, values) = read_npy_array(path)?;
            let [_, d] = shape[..] else {
                bail!(
                    "{}: expected a 2-D array (rows × dim), got shape {shape:?}",
                    path.display()
                );
            };
            anyhow::ensure!(d > 0, "{}: rows have no values", path.display());
            Ok(Matrix {
                data: values.chunks_exact(d).map(<[f64]>::to_vec).collect(),
                column: None,
                nulls: 0,
            })
        }
        "parquet" | "pq" => read_parquet_lists(path, column),
        _ => bail!(
            "{}: use a 2-D .npy file or a .parquet file with a list column",
            path.display()
        ),
    }
}

fn read_parquet_lists(path: &Path, column: Option<&str>) -> anyhow::Result<Matrix> {
    let is_list = |t: &DataType| {
        matches!(t, DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
            if f.data_type().is_floating() || f.data_type().is_integer())
    };
    let (name, reader) = parquet_column(path, column, is_list, "a list of numbers")?;
    let mut rows = Vec::new();
    let mut nulls = 0;
    for batch in reader {
        let batch = batch?;
        let col = batch.column(0);
        for i in 0..col.len() {
            if col.is_null(i) {
                nulls += 1;
                continue;
            }
            let item = match col.data_type() {
                DataType::List(_) => col.as_list::<i32>().value(i),
                DataType::LargeList(_) => col.as_list::<i64>().value(i),
                _ => col.as_fixed_size_list().value(i),
            };
            let item = to_f64(&item)?;
            // A null element makes the row unusable: it is kept as NaN and skipped (counted)
            // by the sketch like any non-finite row.
            rows.push(
                (0..item.len())
                    .map(|j| {
                        if item.is_null(j) {
                            f64::NAN
                        } else {
                            item.value(j)
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(Matrix {
        data: rows,
        column: Some(name),
        nulls,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        ArrayRef, Float16Array, Float32Array, Int8Array, Int16Array, Int32Array, Int64Array,
        StringArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
    };

    use super::*;

    /// Every integer and floating type, with a null and each type's extremes, converted as
    /// `as f64` converts them.
    #[test]
    fn every_numeric_type_is_read_as_f64_with_its_nulls() {
        let f16 = half::f16::from_f32(-1.5);
        let cases: Vec<(ArrayRef, Vec<Option<f64>>)> = vec![
            (
                Arc::new(Float64Array::from(vec![Some(0.25), None, Some(f64::MAX)])),
                vec![Some(0.25), None, Some(f64::MAX)],
            ),
            (
                Arc::new(Float32Array::from(vec![Some(0.1f32), None, Some(f32::MIN)])),
                vec![Some(0.1f32 as f64), None, Some(f32::MIN as f64)],
            ),
            (
                Arc::new(Float16Array::from(vec![Some(f16), None])),
                vec![Some(-1.5), None],
            ),
            (
                Arc::new(Int8Array::from(vec![Some(i8::MIN), None, Some(7)])),
                vec![Some(-128.0), None, Some(7.0)],
            ),
            (
                Arc::new(Int16Array::from(vec![Some(i16::MAX), None])),
                vec![Some(32767.0), None],
            ),
            (
                Arc::new(Int32Array::from(vec![Some(i32::MIN), None])),
                vec![Some(-2147483648.0), None],
            ),
            (
                Arc::new(Int64Array::from(vec![Some(i64::MAX), None, Some(-3)])),
                vec![Some(i64::MAX as f64), None, Some(-3.0)],
            ),
            (
                Arc::new(UInt8Array::from(vec![Some(u8::MAX), None])),
                vec![Some(255.0), None],
            ),
            (
                Arc::new(UInt16Array::from(vec![Some(u16::MAX), None])),
                vec![Some(65535.0), None],
            ),
            (
                Arc::new(UInt32Array::from(vec![Some(u32::MAX), None])),
                vec![Some(4294967295.0), None],
            ),
            (
                Arc::new(UInt64Array::from(vec![Some(u64::MAX), None, Some(1 << 53)])),
                vec![Some(u64::MAX as f64), None, Some(9007199254740992.0)],
            ),
        ];
        for (array, want) in cases {
            let got = to_f64(&array).expect("a numeric type");
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                want,
                "{}",
                array.data_type()
            );
            assert_eq!(got.null_count(), 1, "{}", array.data_type());
        }
        let words: ArrayRef = Arc::new(StringArray::from(vec!["1.0"]));
        let err = to_f64(&words).expect_err("text is not numbers").to_string();
        assert!(err.contains("Utf8"), "{err}");
    }
}
