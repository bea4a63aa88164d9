-- `revoc audit` (revoc/audit.py) and `revoc status` (revoc/status.py). Read-only. The audit runs
-- in one REPEATABLE READ snapshot and streams the big results (revoked certificates of a scope,
-- every pre-signed response) through cursors, so a million certificates never sit in memory.
-- $cutoff parameters are "now - grace": a change stamped (certificates.changed_at) at or before
-- it is settled and must be reflected; a later one is pending. Rows written before migration
-- 0004 have no changed_at and count as settled.

-- name: audit_crl_scopes
-- The scopes of one issuer worth checking: every scope with a CRL, and every scope some revoked
-- certificate belongs to (its shard, or -1 for the issuer-wide CRL when it has none), with the
-- latest full CRL, the thisUpdate of the full CRL before it (the retention cutoff the publisher
-- used, CRL-15) and the latest delta CRL.
WITH scopes AS (
    SELECT DISTINCT shard FROM crls WHERE issuer_id = $1
    UNION
    SELECT DISTINCT coalesce(shard, -1) FROM certificates
     WHERE issuer_id = $1 AND status = 'revoked'
)
SELECT s.shard,
       f.id AS full_id, f.number AS full_number, f.this_update AS full_this_update,
       f.next_update AS full_next_update, f.max_change_seq AS full_max_change_seq,
       p.this_update AS previous_this_update,
       d.id AS delta_id, d.number AS delta_number, d.base_number AS delta_base_number,
       d.next_update AS delta_next_update, d.max_change_seq AS delta_max_change_seq
  FROM scopes s
  LEFT JOIN LATERAL (
        SELECT id, number, this_update, next_update, max_change_seq FROM crls
         WHERE issuer_id = $1 AND shard = s.shard AND kind = 'full'
         ORDER BY number DESC LIMIT 1) f ON true
  LEFT JOIN LATERAL (
        SELECT this_update FROM crls
         WHERE issuer_id = $1 AND shard = s.shard AND kind = 'full'
         ORDER BY number DESC OFFSET 1 LIMIT 1) p ON true
  LEFT JOIN LATERAL (
        SELECT id, number, base_number, next_update, max_change_seq FROM crls
         WHERE issuer_id = $1 AND shard = s.shard AND kind = 'delta'
         ORDER BY number DESC LIMIT 1) d ON true
 ORDER BY s.shard;

-- name: audit_crl_der
SELECT der FROM crls WHERE id = $1;

-- name: audit_scope_revoked_issuer
-- Every revoked certificate of an issuer, for its issuer-wide CRL (shard -1). `own`: the
-- certificate names no shard, so -1 is its scope. `on_full`: the latest full CRL must list it
-- by the retention rule (notAfter after the previous full CRL's thisUpdate, $2; NULL: there is
-- none, so it lists all). `on_next`: the next full CRL will (notAfter after the latest one's, $3).
SELECT serial, shard IS NULL AS own, change_seq, changed_at, reason,
       CASE WHEN isfinite(revoked_at) THEN floor(extract(epoch FROM revoked_at))::bigint
       END AS revoked_epoch,
       ($2::timestamptz IS NULL OR not_after > $2) AS on_full,
       ($3::timestamptz IS NULL OR not_after > $3) AS on_next,
       coalesce(changed_at <= $4, true) AS settled
  FROM certificates
 WHERE issuer_id = $1 AND status = 'revoked';

-- name: audit_scope_revoked_shard
SELECT serial, true AS own, change_seq, changed_at, reason,
       CASE WHEN isfinite(revoked_at) THEN floor(extract(epoch FROM revoked_at))::bigint
       END AS revoked_epoch,
       ($2::timestamptz IS NULL OR not_after > $2) AS on_full,
       ($3::timestamptz IS NULL OR not_after > $3) AS on_next,
       coalesce(changed_at <= $4, true) AS settled
  FROM certificates
 WHERE issuer_id = $1 AND status = 'revoked' AND shard = $5;

-- name: audit_certificates_by_serial
-- Serials a CRL lists that are not revoked in its scope: released holds, other shards, unknown.
SELECT serial, status, change_seq, changed_at, hold_released,
       coalesce(changed_at <= $3, true) AS settled
  FROM certificates
 WHERE issuer_id = $1 AND serial = ANY($2::bytea[]);

-- name: audit_ocsp_responses
-- Every pre-signed response with the state of its certificate. Unordered: a sort of millions of
-- DER rows would spill to disk; findings are grouped in Python. `der` may be a stem (migration
-- 0007: the status is in it, the certs field is not); certs_lost: it names a certs element that
-- responder_certs lacks, so the responder cannot serve it.
SELECT r.issuer_id, r.serial, r.hash_alg, r.der, r.cert_change_seq,
       c.status, c.change_seq, c.changed_at, c.reason,
       CASE WHEN isfinite(c.revoked_at) THEN floor(extract(epoch FROM c.revoked_at))::bigint
       END AS revoked_epoch,
       coalesce(c.changed_at <= $1, true) AS settled,
       r.certs_id IS NOT NULL AND rc.id IS NULL AS certs_lost
  FROM ocsp_responses r
  JOIN certificates c ON c.issuer_id = r.issuer_id AND c.serial = r.serial
  LEFT JOIN responder_certs rc ON rc.id = r.certs_id;

-- name: audit_ocsp_missing
-- Revoked, unexpired ($1: now) certificates of issuers that have an OCSP key ($3) without any
-- pre-signed response: the responder cannot say `revoked` for them.
SELECT c.issuer_id, c.serial, c.changed_at, coalesce(c.changed_at <= $2, true) AS settled
  FROM certificates c
 WHERE c.status = 'revoked' AND c.not_after > $1 AND c.issuer_id = ANY($3::integer[])
   AND NOT EXISTS (SELECT 1 FROM ocsp_responses o
                    WHERE o.issuer_id = c.issuer_id AND o.serial = c.serial);

-- name: audit_implausible
-- Rows that break the plausibility constraints of migration 0004, which are NOT VALID (rows
-- older than them were never checked). The same predicates as the constraints; times as text,
-- because an infinite timestamp has no Python datetime.
SELECT c.issuer_id, c.serial,
       NOT coalesce(
         CASE WHEN octet_length(c.serial) NOT BETWEEN 1 AND 20 THEN false
              WHEN get_byte(c.serial, 0) >= 128 THEN false
              WHEN octet_length(c.serial) = 1 THEN get_byte(c.serial, 0) > 0
              WHEN get_byte(c.serial, 0) = 0 THEN get_byte(c.serial, 1) >= 128
              ELSE true END, true) AS bad_serial,
       NOT coalesce(c.revoked_at IS NULL
                    OR (c.revoked_at >= '1950-01-01Z' AND c.revoked_at < '10000-01-01Z'),
                    true) AS bad_revoked_at,
       NOT coalesce(c.invalidity_date IS NULL
                    OR (c.invalidity_date >= '1950-01-01Z'
                        AND c.invalidity_date < '10000-01-01Z'), true) AS bad_invalidity_date,
       NOT coalesce(isfinite(c.not_after) AND c.not_after >= '1950-01-01Z'
                    AND c.not_after < '10000-01-01Z', true) AS bad_not_after,
       c.revoked_at::text AS revoked_at, c.invalidity_date::text AS invalidity_date,
       c.not_after::text AS not_after
  FROM certificates c
 WHERE NOT coalesce(
         CASE WHEN octet_length(c.serial) NOT BETWEEN 1 AND 20 THEN false
              WHEN get_byte(c.serial, 0) >= 128 THEN false
              WHEN octet_length(c.serial) = 1 THEN get_byte(c.serial, 0) > 0
              WHEN get_byte(c.serial, 0) = 0 THEN get_byte(c.serial, 1) >= 128
              ELSE true END, true)
    OR NOT coalesce(
         (c.revoked_at IS NULL
          OR (c.revoked_at >= '1950-01-01Z' AND c.revoked_at < '10000-01-01Z'))
         AND (c.invalidity_date IS NULL
              OR (c.invalidity_date >= '1950-01-01Z' AND c.invalidity_date < '10000-01-01Z'))
         AND isfinite(c.not_after) AND c.not_after >= '1950-01-01Z'
         AND c.not_after < '10000-01-01Z', true);

-- name: audit_certificate_count
SELECT count(*) FROM certificates;

-- name: audit_workers
-- Heartbeats of the workers whose silence loses revocations (the responder's are in /metrics).
SELECT kind, host, pid, started_at, beat_at, last_ok, last_error, last_error_at, stopped_at
  FROM workers
 WHERE kind IN ('presign', 'publish')
 ORDER BY kind, beat_at DESC;

-- name: status_now
SELECT now();

-- name: status_latest_crls
-- The newest full and delta CRL of every scope, without the bytes.
SELECT DISTINCT ON (c.issuer_id, c.shard, c.kind)
       i.name AS issuer, c.shard, c.kind, c.number, c.base_number, c.this_update,
       c.next_update, c.entries, c.max_change_seq, octet_length(c.der) AS size
  FROM crls c JOIN issuers i ON i.id = c.issuer_id
 ORDER BY c.issuer_id, c.shard, c.kind, c.number DESC;

-- name: status_presign_backlog
-- Status changes the presigner has not reflected yet, and when the oldest of them committed.
SELECT count(*) AS changes, min(changed_at) AS oldest FROM ocsp_pending;
