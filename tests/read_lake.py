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
FROM read_parquet('{lake}/**/*.parquet', hive_partitioning=1)
WHERE run = '{run}' AND "table" = 'steps' AND scope_kind = 'model'
"""
rows, n_steps, min_ranks, late = con.execute(q).fetchone()
assert n_steps == steps, (n_steps, steps)
assert rows == steps, f"one model row per step, got {rows}"
assert min_ranks == ranks, min_ranks
assert late == 0

t = ds.dataset(lake, format="parquet", partitioning="hive").to_table(
    filter=(ds.field("run") == run) & (ds.field("scope_kind") == "tensor")
)
names = set(t.column("scope").to_pylist())
assert names == {f"fc{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")}, names
counts = t.column("count").to_pylist()
numel = t.column("numel").to_pylist()
# Every rank sends every coordinate of every tensor: count = ranks * numel (no NaN in training).
assert all(c == ranks * n for c, n in zip(counts, numel)), "coverage"
print(f"duckdb+pyarrow: {steps} steps, {t.num_rows} tensor rows, ranks={ranks}: ok")
