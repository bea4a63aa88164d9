-- Worker heartbeats (revoc/workers.py) and the quarantine of rows a worker could not encode
-- (revoc/quarantine.py). Read by `revoc status`, `revoc audit` and the responder's /metrics.

-- name: worker_beat
-- $4: the round succeeded (last_ok moves); $5: the last error (NULL: none this time).
INSERT INTO workers AS w (kind, host, pid, started_at, beat_at, last_ok, last_error,
                          last_error_at, stats)
VALUES ($1, $2, $3, $6, now(), CASE WHEN $4 THEN now() END, $5,
        CASE WHEN $5::text IS NOT NULL THEN now() END, $7::jsonb)
    ON CONFLICT (kind, host, pid) DO UPDATE
   SET beat_at = now(),
       last_ok = CASE WHEN $4 THEN now() ELSE w.last_ok END,
       last_error = coalesce($5, w.last_error),
       last_error_at = CASE WHEN $5::text IS NOT NULL THEN now() ELSE w.last_error_at END,
       stopped_at = NULL,
       stats = $7::jsonb;

-- name: worker_stopped
UPDATE workers SET stopped_at = now(), beat_at = now() WHERE kind = $1 AND host = $2 AND pid = $3;

-- name: workers_all
SELECT kind, host, pid, started_at, beat_at, last_ok, last_error, last_error_at, stopped_at,
       stats, extract(epoch FROM now() - beat_at)::float8 AS beat_age,
       extract(epoch FROM now() - last_ok)::float8 AS ok_age
  FROM workers
 ORDER BY kind, host, pid;

-- name: quarantine_add
-- Returns a row only the first time this row is quarantined at this change_seq (log it once).
INSERT INTO quarantine AS q (kind, issuer_id, serial, change_seq, error)
VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (kind, issuer_id, serial) DO UPDATE
   SET change_seq = EXCLUDED.change_seq, error = EXCLUDED.error, first_seen = now()
 WHERE q.change_seq < EXCLUDED.change_seq
RETURNING first_seen;

-- name: quarantine_release
-- A row that encoded after all (it changed, or the bug was fixed): out of quarantine.
DELETE FROM quarantine WHERE kind = $1 AND issuer_id = $2 AND serial = ANY($3::bytea[]);

-- name: quarantine_counts
SELECT kind, count(*) AS rows FROM quarantine GROUP BY kind;

-- name: quarantine_all
SELECT q.kind, i.name AS issuer, q.serial, q.change_seq, q.error, q.first_seen
  FROM quarantine q JOIN issuers i ON i.id = q.issuer_id
 ORDER BY q.first_seen, q.kind, i.name, q.serial;
