"""Read a gradtel lake with DuckDB and pyarrow, as a user would, and check what the demo wrote.

usage: python3 tests/read_lake.py LAKE RUN_ID STEPS RANKS
"""
import sys

import duckdb
import pyarrow.dataset as ds

lake, run, steps, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

con = duckdb.connect()
q = f"""
SELECT count(*) AS rows, count(DISTINCT step) AS steps, min(ranks_reported) AS min_ranks,
       sum(CASE WHEN late THEN 1 ELSE 0 END) AS late_rows
FROM read_parquet('{lake}/*/table=steps/*.parquet', hive_partitioning=1)
WHERE run = '{run}' AND scope_kind = 'model'
"""
rows, n_steps, min_ranks, late = con.execute(q).fetchone()
assert n_steps == steps, (n_steps, steps)
assert rows == steps, f"one model row per step, got {rows}"
assert min_ranks == ranks, min_ranks
assert late == 0

# Every table is filled, and each reads alone with its own schema.
for table in ("steps", "tails", "coords", "sgn", "spectra", "alerts"):
    (n,) = con.execute(
        f"SELECT count(*) FROM read_parquet('{lake}/*/table={table}/*.parquet', hive_partitioning=1) WHERE run = '{run}'"
    ).fetchone()
    assert n > 0, f"table {table} is empty"
# coords holds each reported tensor's tracked values as two lists; UNNEST gives a row per value.
coords = f"read_parquet('{lake}/*/table=coords/*.parquet', hive_partitioning=1)"
(listed,) = con.execute(f"SELECT sum(len(index)) FROM {coords} WHERE run = '{run}'").fetchone()
(pairs, bad) = con.execute(
    f"SELECT count(*), count(*) FILTER (WHERE i IS NULL OR v IS NULL) FROM "
    f"(SELECT unnest(index) AS i, unnest(value) AS v FROM {coords} WHERE run = '{run}')"
).fetchone()
assert listed > 0 and pairs == listed and bad == 0, (listed, pairs, bad)
# The whole lake at once needs union_by_name (the tables have different columns).
(tables,) = con.execute(
    f"SELECT count(DISTINCT \"table\") FROM read_parquet('{lake}/**/*.parquet', hive_partitioning=1, union_by_name=1)"
).fetchone()
assert tables == 6, tables
(nonfinite,) = con.execute(
    f"SELECT count(*) FROM read_parquet('{lake}/*/table=alerts/*.parquet', hive_partitioning=1) WHERE kind = 'nonfinite'"
).fetchone()
assert nonfinite == 1, f"the demo's injected NaN raises one alert, got {nonfinite}"

t = ds.dataset(f"{lake}/run={run}/table=steps", format="parquet").to_table(
    filter=ds.field("scope_kind") == "tensor"
)
names = set(t.column("scope").to_pylist())
assert names == {f"fc{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")}, names
counts = t.column("count").to_pylist()
nans = t.column("nan_count").to_pylist()
numel = t.column("numel").to_pylist()
# Every rank sends every coordinate of every tensor: finite + NaN = ranks * numel.
assert all(c + x == ranks * n for c, x, n in zip(counts, nans, numel)), "coverage"
assert sum(nans) == 1, "exactly the injected NaN"
print(f"duckdb+pyarrow: {steps} steps, {t.num_rows} tensor rows, ranks={ranks}: ok")
