-- Plain-SQL time series for Grafana's built-in PostgreSQL data source (no extension needed).
-- One row per stored value; NaN (a name absent from an observation) is left out.

CREATE VIEW livetwin_samples AS
SELECT tw.twin,
       tw.type,
       c.name,
       to_timestamp(s.ts / 1000.0) AS ts,
       h.vals[s.i][c.k] AS value
FROM history h
JOIN twins tw ON tw.uid = h.uid
JOIN types ty ON ty.name = tw.type AND ty.version = h.version
CROSS JOIN LATERAL unnest(h.ts) WITH ORDINALITY AS s(ts, i)
CROSS JOIN LATERAL unnest(ty.columns) WITH ORDINALITY AS c(name, k)
WHERE h.vals[s.i][c.k] <> 'NaN'::double precision;

-- The same rows, but only from chunks that overlap [t_from, t_to): use it with Grafana's
-- $__timeFrom() and $__timeTo() so a dashboard never unpacks history outside its time range.
CREATE FUNCTION livetwin_samples_between(t_from timestamptz, t_to timestamptz)
RETURNS TABLE (twin text, type text, name text, ts timestamptz, value double precision)
LANGUAGE sql STABLE AS $$
    SELECT tw.twin, tw.type, c.name, to_timestamp(s.ts / 1000.0), h.vals[s.i][c.k]
    FROM history h
    JOIN twins tw ON tw.uid = h.uid
    JOIN types ty ON ty.name = tw.type AND ty.version = h.version
    CROSS JOIN LATERAL unnest(h.ts) WITH ORDINALITY AS s(ts, i)
    CROSS JOIN LATERAL unnest(ty.columns) WITH ORDINALITY AS c(name, k)
    WHERE h.ts_min < (extract(epoch FROM t_to) * 1000)::bigint
      AND h.ts_max >= (extract(epoch FROM t_from) * 1000)::bigint
      AND s.ts >= (extract(epoch FROM t_from) * 1000)::bigint
      AND s.ts < (extract(epoch FROM t_to) * 1000)::bigint
      AND h.vals[s.i][c.k] <> 'NaN'::double precision
$$;
CREATE INDEX history_time ON history (ts_max, ts_min);
