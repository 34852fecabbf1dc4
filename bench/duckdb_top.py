"""DuckDB baseline on the same JSON Lines file as `rankmysteps bench replay`.

Per-day per-user totals and each day's top-100 (day = date part of the naive timestamp, as in
the benchmark file, which has no offsets). Usage: python3 bench/duckdb_top.py FILE
Needs `pip install duckdb`; not part of the test suite.
"""
import sys
import time

import duckdb

path = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/rankmysteps-bench-10m.jsonl"
con = duckdb.connect()
start = time.time()
cpu0 = time.process_time()
rows = con.execute(
    f"""
    WITH ev AS (
        SELECT uuid, CAST(substr(timestamp, 1, 10) AS DATE) AS day, steps
        FROM read_json('{path}', format = 'newline_delimited', ignore_errors = true,
                       columns = {{'uuid': 'VARCHAR', 'timestamp': 'VARCHAR', 'steps': 'BIGINT'}})
        WHERE uuid IS NOT NULL AND timestamp IS NOT NULL AND steps IS NOT NULL
    ),
    totals AS (SELECT day, uuid, sum(steps) AS total FROM ev GROUP BY day, uuid)
    SELECT day, uuid, total,
           rank() OVER (PARTITION BY day ORDER BY total DESC) AS rnk
    FROM totals
    QUALIFY row_number() OVER (PARTITION BY day ORDER BY total DESC, uuid) <= 100
    ORDER BY day, total DESC, uuid
    """
).fetchall()
wall = time.time() - start
cpu = time.process_time() - cpu0
days = sorted({r[0] for r in rows})
print(f"duckdb: {len(rows)} top rows over {len(days)} days in {wall:.2f} s wall, {cpu:.2f} CPU s")
for d in days:
    first = [r for r in rows if r[0] == d][0]
    print(f"  {d}: #1 {first[1]} {first[2]}")
