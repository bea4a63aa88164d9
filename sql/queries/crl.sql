-- CRL publisher (crl_publisher/publisher.py) and CRL serving (responder/crl_files.py).

-- name: crl_scope_lock
-- One transaction-level advisory lock per (issuer, shard); the key is built in Python
-- (crl_publisher.publisher.scope_lock_key) in a range of its own.
SELECT pg_advisory_xact_lock($1);

-- name: crl_block_certificate_writers
-- Taken inside a savepoint and released by rolling back to it once the round's snapshot is
-- taken: waits until every transaction that changed certificates has ended, so each change_seq
-- up to the value read next is committed (or gone) and visible to the snapshot, and no later one
-- is. A writer left open (an idle session in a transaction) fails the round after a minute
-- instead of stalling the publisher: the round is retried and the heartbeat says why.
-- LOCK TABLE certificates IN SHARE MODE, through a function (0006) so that the publisher's role
-- needs no UPDATE on certificates for it.
SET LOCAL lock_timeout = '60s';
SELECT revoc_block_certificate_writers();

-- name: crl_take_snapshot
-- The first statement of the round's REPEATABLE READ transaction fixes its snapshot.
SELECT true;

-- name: crl_database_clock
SELECT clock_timestamp();

-- name: crl_change_horizon
SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS horizon FROM cert_change_seq;

-- name: crl_latest_of_scopes
-- The newest full and delta CRL (without bytes) of each given shard ($2) of an issuer: one index
-- lookup each, one round trip.
SELECT s.shard, k.kind, c.number, c.base_number, c.this_update, c.next_update, c.max_change_seq,
       c.entries, c.idp_urls
  FROM unnest($2::integer[]) AS s (shard)
 CROSS JOIN (VALUES ('full'), ('delta')) AS k (kind)
 CROSS JOIN LATERAL (
       SELECT number, base_number, this_update, next_update, max_change_seq, entries, idp_urls
         FROM crls
        WHERE issuer_id = $1 AND crls.shard = s.shard AND crls.kind = k.kind
        ORDER BY number DESC
        LIMIT 1) AS c;

-- name: crl_shard_urls
-- Distribution point URLs stored with each shard's certificates (SHARD-1), NULL for
-- certificates that carry none (index.txt imports: the default URL applies). One row per
-- distinct pair, found by probes of certificates_shard_urls (0011) instead of a scan of every
-- certificate: the shards one after another (the least shard above the last), within each the
-- URLs one after another, then whether the shard has a certificate without a URL.
WITH RECURSIVE shards (shard) AS (
    SELECT min(shard) FROM certificates WHERE issuer_id = $1
    UNION ALL
    SELECT (SELECT min(c.shard) FROM certificates c WHERE c.issuer_id = $1 AND c.shard > s.shard)
      FROM shards s
     WHERE s.shard IS NOT NULL
), urls (shard, crl_url) AS (
    SELECT s.shard, (SELECT min(c.crl_url) FROM certificates c
                      WHERE c.issuer_id = $1 AND c.shard = s.shard)
      FROM shards s
     WHERE s.shard IS NOT NULL
    UNION ALL
    SELECT u.shard, (SELECT min(c.crl_url) FROM certificates c
                      WHERE c.issuer_id = $1 AND c.shard = u.shard AND c.crl_url > u.crl_url)
      FROM urls u
     WHERE u.crl_url IS NOT NULL
)
SELECT shard, crl_url FROM urls WHERE crl_url IS NOT NULL
UNION ALL
SELECT s.shard, NULL FROM shards s
 WHERE s.shard IS NOT NULL
   AND (SELECT true FROM certificates c
         WHERE c.issuer_id = $1 AND c.shard = s.shard AND c.crl_url IS NULL
         ORDER BY c.shard, c.crl_url LIMIT 1);  -- in the index's order: a probe, never a scan

-- name: crl_carried_shards
-- Every shard value the issuer's certificates carry (from the distribution point written in
-- them), whatever its shard count is now: each is a scope whose CRL must go on. NULL among them
-- when a certificate without a shard is not expired before the issuer-wide scope's latest full
-- CRL (the retention rule of crl_full_entries_issuer), or before $2 (now) when there is none:
-- then the issuer-wide CRL must go on too, the only one that can list such a certificate, and
-- the one its distribution point (if any) names. The shards by probes of
-- certificates_shard_urls (0011), as in crl_shard_urls, not a scan of every certificate.
WITH RECURSIVE shards (shard) AS (
    SELECT min(shard) FROM certificates WHERE issuer_id = $1
    UNION ALL
    SELECT (SELECT min(c.shard) FROM certificates c WHERE c.issuer_id = $1 AND c.shard > s.shard)
      FROM shards s
     WHERE s.shard IS NOT NULL
)
SELECT shard FROM shards WHERE shard IS NOT NULL
UNION ALL
SELECT NULL::integer
 WHERE (SELECT true FROM certificates
         WHERE issuer_id = $1 AND shard IS NULL
           AND not_after > coalesce((SELECT this_update FROM crls
                                      WHERE issuer_id = $1 AND shard = -1 AND kind = 'full'
                                      ORDER BY number DESC LIMIT 1), $2)
         -- In the index's order, so the certificates without a shard are read through it and
         -- a sharded issuer without any costs one probe (EXISTS let the planner pick a
         -- sequential scan of the whole table, stopping at the first match: it expected one
         -- soon, from the other issuers' rows without a shard).
         ORDER BY shard, crl_url LIMIT 1);

-- name: crl_change_groups
-- Status changes of an issuer above $2 (the least change_seq its CRLs all reflect), one row per
-- changing transaction and shard: a transaction's changes are all at or below a round's horizon
-- or all above it, so max(change_seq) places the whole group. The publisher decides from these
-- which scopes have changes their latest CRL does not reflect, the commit-to-CRL lag of those it
-- publishes, and the age of the oldest change no CRL reflects yet. change_xid and changed_at are
-- NULL for changes made before they were recorded.
SELECT shard, change_xid, changed_at, max(change_seq) AS max_seq, count(*) AS changes
  FROM certificates
 WHERE issuer_id = $1 AND change_seq > $2 AND (status = 'revoked' OR hold_released)
 GROUP BY shard, change_xid, changed_at;

-- name: crl_repair_entry
-- A stored entry that was bad or stale, replaced by the one encoded from the row's columns,
-- unless the row changed since it was read (then its new entry was written with the change).
-- change_seq stays: this repairs a cache, it is not a status change.
UPDATE certificates SET crl_entry = $3
 WHERE issuer_id = $1 AND serial = $2 AND change_seq = $4 AND status = 'revoked';

-- name: crl_quarantined
-- Rows of the issuer the publisher quarantined, with the shard that places them.
SELECT q.serial, c.shard FROM quarantine q
  LEFT JOIN certificates c ON c.issuer_id = q.issuer_id AND c.serial = q.serial
 WHERE q.kind = 'publish' AND q.issuer_id = $1;

-- name: crl_full_entries_issuer
-- The entries of a full issuer-wide CRL, for COPY: revoked and not yet expired before the
-- previous full CRL of the scope ($2, long ago when there is none; CRL-15). Hex text, so the
-- publisher decodes whole chunks in C, never row by row.
-- A missing entry becomes an empty line: the CRL then fails its entry count, and the publisher
-- rebuilds it row by row (crl_full_rows_*).
SELECT coalesce(encode(crl_entry, 'hex'), '') FROM certificates
 WHERE issuer_id = $1 AND status = 'revoked' AND not_after > $2
 ORDER BY serial;

-- name: crl_full_entries_unsharded
-- crl_full_entries_issuer for an issuer none of whose revoked certificates has a shard (asked
-- first in the same snapshot: crl_revoked_with_shard), so the same rows: one index-only range
-- scan of certificates_revoked (0011) instead of the primary key and every heap page. "ORDER BY
-- shard, serial" is "ORDER BY serial" here (shard is NULL in every row) in the index's order:
-- PostgreSQL does not take `shard IS NULL` as fixing the column, and would sort.
SELECT coalesce(encode(crl_entry, 'hex'), '') FROM certificates
 WHERE issuer_id = $1 AND shard IS NULL AND status = 'revoked' AND not_after > $2
 ORDER BY shard, serial;

-- name: crl_revoked_with_shard
-- Whether some revoked certificate of the issuer has a shard: one probe of
-- certificates_revoked, in its order (with EXISTS the planner may prefer a sequential scan
-- that it expects to stop soon, on other issuers' sharded rows).
SELECT (SELECT true FROM certificates
         WHERE issuer_id = $1 AND shard IS NOT NULL AND status = 'revoked'
         ORDER BY shard, serial LIMIT 1) IS NOT NULL;

-- name: crl_full_entries_shard
-- One shard's entries: an index-only range scan of certificates_revoked (0011) in serial order.
SELECT coalesce(encode(crl_entry, 'hex'), '') FROM certificates
 WHERE issuer_id = $1 AND shard = $3 AND status = 'revoked' AND not_after > $2
 ORDER BY serial;

-- name: crl_certificates_churn
-- Rows of certificates (all its partitions) inserted, updated or deleted since they were last
-- vacuumed, and the live rows: the pages those rows are on are not all-visible, so an
-- index-only scan visits the heap for their tuples. From the statistics system (a second or so
-- behind): it only chooses how the shards' entries are read, never which.
-- (pg_partition_tree gives no row for a table that is not partitioned.)
SELECT coalesce(sum(s.n_dead_tup + s.n_ins_since_vacuum), 0)::bigint AS churn,
       coalesce(sum(s.n_live_tup), 0)::bigint AS live
  FROM pg_stat_all_tables s
 WHERE s.relid = 'certificates'::regclass
    OR s.relid IN (SELECT relid FROM pg_partition_tree('certificates'::regclass));

-- name: crl_full_entries_shards
-- The entries of the full CRLs of several shards ($2) of one issuer, each shard with its own
-- cutoff ($3, same order), in one pass in serial order (the issuer's primary key), each line the
-- shard in 8 hex digits then the entry in hex; the publisher splits them by shard
-- (crl_publisher/entries.py stream_shard_entries). A missing entry leaves the prefix alone.
SELECT lpad(to_hex(shard), 8, '0') || coalesce(encode(crl_entry, 'hex'), '')
  FROM certificates
 WHERE issuer_id = $1 AND status = 'revoked' AND shard = ANY ($2::integer[])
   AND not_after > ($3::timestamptz[])[array_position($2::integer[], shard)]
 ORDER BY serial;

-- name: crl_full_rows_issuer
-- The rows behind crl_full_entries_issuer with the columns an entry is encoded from, for the
-- rebuild after a CRL failed its check. Dates Python cannot hold (infinite, year 10000 and
-- later, BC) come as NULL, with their text for the log line.
SELECT serial, crl_entry, change_seq, reason,
       CASE WHEN isfinite(revoked_at) AND revoked_at >= '0001-01-02Z'
                 AND revoked_at < '9999-12-31Z' THEN revoked_at END AS revoked_at,
       revoked_at::text AS revoked_at_text,
       CASE WHEN isfinite(invalidity_date) AND invalidity_date >= '0001-01-02Z'
                 AND invalidity_date < '9999-12-31Z' THEN invalidity_date END AS invalidity_date,
       invalidity_date::text AS invalidity_date_text
  FROM certificates
 WHERE issuer_id = $1 AND status = 'revoked' AND not_after > $2
 ORDER BY serial;

-- name: crl_full_rows_shard
SELECT serial, crl_entry, change_seq, reason,
       CASE WHEN isfinite(revoked_at) AND revoked_at >= '0001-01-02Z'
                 AND revoked_at < '9999-12-31Z' THEN revoked_at END AS revoked_at,
       revoked_at::text AS revoked_at_text,
       CASE WHEN isfinite(invalidity_date) AND invalidity_date >= '0001-01-02Z'
                 AND invalidity_date < '9999-12-31Z' THEN invalidity_date END AS invalidity_date,
       invalidity_date::text AS invalidity_date_text
  FROM certificates
 WHERE issuer_id = $1 AND shard = $3 AND status = 'revoked' AND not_after > $2
 ORDER BY serial;

-- name: crl_delta_rows_issuer
-- What changed since the base: rows revoked (or re-revoked) after it, and holds released after
-- it (status good, hold_released). crl_entry is NULL for the latter: the publisher encodes
-- removeFromCRL. The other columns as in crl_full_rows_issuer, for a rebuild row by row.
SELECT serial, crl_entry, status, change_seq, reason,
       CASE WHEN isfinite(revoked_at) AND revoked_at >= '0001-01-02Z'
                 AND revoked_at < '9999-12-31Z' THEN revoked_at END AS revoked_at,
       revoked_at::text AS revoked_at_text,
       CASE WHEN isfinite(invalidity_date) AND invalidity_date >= '0001-01-02Z'
                 AND invalidity_date < '9999-12-31Z' THEN invalidity_date END AS invalidity_date,
       invalidity_date::text AS invalidity_date_text
  FROM certificates
 WHERE issuer_id = $1 AND change_seq > $2 AND (status = 'revoked' OR hold_released)
 ORDER BY serial;

-- name: crl_delta_rows_shard
SELECT serial, crl_entry, status, change_seq, reason,
       CASE WHEN isfinite(revoked_at) AND revoked_at >= '0001-01-02Z'
                 AND revoked_at < '9999-12-31Z' THEN revoked_at END AS revoked_at,
       revoked_at::text AS revoked_at_text,
       CASE WHEN isfinite(invalidity_date) AND invalidity_date >= '0001-01-02Z'
                 AND invalidity_date < '9999-12-31Z' THEN invalidity_date END AS invalidity_date,
       invalidity_date::text AS invalidity_date_text
  FROM certificates
 WHERE issuer_id = $1 AND shard = $3 AND change_seq > $2
   AND (status = 'revoked' OR hold_released)
 ORDER BY serial;

-- name: crl_selfcheck_recent
-- The publisher's light self-check: the issuer's most recent status changes ($2 of them), the
-- ones most at risk of not being on a CRL yet (an index scan backwards on (issuer_id,
-- change_seq)). Rows in quarantine are reported there already; expired ones may have left.
SELECT serial, shard, status, reason, change_seq,
       CASE WHEN isfinite(revoked_at) THEN floor(extract(epoch FROM revoked_at))::float8
       END AS revoked_epoch
  FROM certificates c
 WHERE issuer_id = $1 AND (status = 'revoked' OR hold_released) AND not_after > now()
   AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.kind = 'publish'
                     AND q.issuer_id = c.issuer_id AND q.serial = c.serial)
 ORDER BY change_seq DESC
 LIMIT $2;

-- name: crl_selfcheck_latest
-- The latest full and delta CRL of one scope, for the self-check (bytes: crl_selfcheck_der).
(SELECT id, kind, number, base_number, max_change_seq, octet_length(der) AS size FROM crls
  WHERE issuer_id = $1 AND shard = $2 AND kind = 'full' ORDER BY number DESC LIMIT 1)
UNION ALL
(SELECT id, kind, number, base_number, max_change_seq, octet_length(der) AS size FROM crls
  WHERE issuer_id = $1 AND shard = $2 AND kind = 'delta' ORDER BY number DESC LIMIT 1);

-- name: crl_store_lz4
-- In the round's transaction, before its CRLs are stored: TOAST-compress them with lz4 when the
-- server was built with it (PostgreSQL 14+), pglz otherwise. A 49 MB CRL of 1M entries: lz4
-- writes it several times faster than pglz at about the same size (bench/RESULTS.md, issue 13
-- point 9). Reading needs nothing: each value records its own compression.
SELECT set_config('default_toast_compression', 'lz4', true)
 WHERE EXISTS (SELECT 1 FROM pg_settings
                WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals));

-- name: crl_insert
INSERT INTO crls (issuer_id, shard, kind, number, base_number, this_update, next_update,
                  max_change_seq, entries, der, sha256, url, idp_urls)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13);

-- name: crl_upload_prepare
-- A large CRL goes to PostgreSQL by COPY into this table, in chunks, then into crls with
-- crl_insert_uploaded: a 49 MB bytea bound as a parameter costs the client about 2.7x its size
-- in buffers (asyncpg's message, then the transport's copy of what the socket has not taken).
-- Dropped at the end of the round's transaction; emptied after each use.
CREATE TEMP TABLE IF NOT EXISTS crl_upload (der bytea NOT NULL) ON COMMIT DROP;

-- name: crl_insert_uploaded
-- crl_insert with the DER from crl_upload (exactly one row: the caller checks the row count).
INSERT INTO crls (issuer_id, shard, kind, number, base_number, this_update, next_update,
                  max_change_seq, entries, der, sha256, url, idp_urls)
SELECT $1::integer, $2::integer, $3::text, $4::numeric, $5::numeric, $6::timestamptz,
       $7::timestamptz, $8::bigint, $9::integer, u.der, $10::bytea, $11::text, $12::text[]
  FROM crl_upload u;

-- name: crl_upload_clear
DELETE FROM crl_upload;

-- name: crl_notify_published
SELECT pg_notify('crl_published', $1);

-- name: crl_latest_digests
-- The newest full and delta CRL of every scope, without the bytes: lets a reader skip scopes it
-- already holds.
SELECT DISTINCT ON (c.issuer_id, c.shard, c.kind)
       c.id, i.name AS issuer, c.issuer_id, c.shard, c.kind, c.number, c.sha256, c.entries
  FROM crls c JOIN issuers i ON i.id = c.issuer_id
 ORDER BY c.issuer_id, c.shard, c.kind, c.number DESC;

-- name: crl_der_by_id
SELECT der, this_update, next_update FROM crls WHERE id = $1;

-- name: crl_der_slice
-- $3 bytes of a stored CRL from byte $2 (counted from 1): files are repaired a slice at a time.
SELECT substring(der FROM $2 FOR $3) FROM crls WHERE id = $1;

-- name: crl_disclosure
-- What CCADB asks a CA to disclose (issue 13 point 4, revoc/crl_urls.py): per issuer and shard,
-- the distinct distribution point URLs written in certificates not expired at $1, and whether
-- some certificate of the shard (expired or not) carries none, so its CRL names the default
-- URL. Issuers without certificates come once with shard NULL and no URLs.
SELECT i.id AS issuer_id, i.name, i.crl_shards, c.shard,
       coalesce(c.live_urls, '{}') AS live_urls, coalesce(c.some_without_url, false)
       AS some_without_url
  FROM issuers i
  LEFT JOIN LATERAL (
       SELECT shard,
              array_agg(DISTINCT crl_url) FILTER (WHERE crl_url IS NOT NULL AND not_after > $1)
              AS live_urls,
              bool_or(crl_url IS NULL) AS some_without_url
         FROM certificates
        WHERE issuer_id = i.id
        GROUP BY shard) AS c ON true
 WHERE $2::integer IS NULL OR i.id = $2
 ORDER BY i.id, c.shard NULLS FIRST;
