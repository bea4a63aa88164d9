-- CRL publisher (crl_publisher/publisher.py) and CRL serving (responder/crl_files.py).

-- name: crl_scope_lock
-- One transaction-level advisory lock per (issuer, shard); the key is built in Python
-- (crl_publisher.publisher.scope_lock_key) in a range of its own.
SELECT pg_advisory_xact_lock($1);

-- name: crl_block_certificate_writers
-- Taken inside a savepoint and released at once by rolling back to it: waits until every
-- transaction that changed certificates has ended, so each change_seq up to the value read next
-- is committed (or gone) and visible to any snapshot taken afterwards.
LOCK TABLE certificates IN SHARE MODE;

-- name: crl_change_horizon
SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS horizon FROM cert_change_seq;

-- name: crl_latest
-- The newest CRL of one scope and kind, without its bytes.
SELECT number, base_number, this_update, next_update, max_change_seq, entries, idp_urls, sha256
  FROM crls
 WHERE issuer_id = $1 AND shard = $2 AND kind = $3
 ORDER BY number DESC
 LIMIT 1;

-- name: crl_max_number
SELECT max(number) FROM crls WHERE issuer_id = $1 AND shard = $2;

-- name: crl_shard_urls
-- Distribution point URLs stored with each shard's certificates (SHARD-1), and whether some
-- certificates of the shard carry none (index.txt imports: the default URL applies).
SELECT shard,
       coalesce(array_agg(DISTINCT crl_url) FILTER (WHERE crl_url IS NOT NULL), '{}') AS urls,
       bool_or(crl_url IS NULL) AS some_without_url
  FROM certificates
 WHERE issuer_id = $1 AND shard IS NOT NULL
 GROUP BY shard;

-- name: crl_unassigned_count
-- Certificates of a sharded issuer that no shard covers (SHARD-2 would be violated).
SELECT count(*) FROM certificates WHERE issuer_id = $1 AND shard IS NULL AND status = 'revoked';

-- name: crl_full_entries_issuer
-- The entries of a full issuer-wide CRL, for COPY: revoked and not yet expired before the
-- previous full CRL of the scope ($2, long ago when there is none; CRL-15). Hex text, so the
-- publisher decodes whole chunks in C, never row by row.
SELECT encode(crl_entry, 'hex') FROM certificates
 WHERE issuer_id = $1 AND status = 'revoked' AND not_after > $2
 ORDER BY serial;

-- name: crl_full_entries_shard
SELECT encode(crl_entry, 'hex') FROM certificates
 WHERE issuer_id = $1 AND shard = $3 AND status = 'revoked' AND not_after > $2
 ORDER BY serial;

-- name: crl_delta_rows_issuer
-- What changed since the base: rows revoked (or re-revoked) after it, and holds released after
-- it (status good, hold_released). crl_entry is NULL for the latter: the publisher encodes
-- removeFromCRL.
SELECT serial, crl_entry FROM certificates
 WHERE issuer_id = $1 AND change_seq > $2 AND (status = 'revoked' OR hold_released)
 ORDER BY serial;

-- name: crl_delta_rows_shard
SELECT serial, crl_entry FROM certificates
 WHERE issuer_id = $1 AND shard = $3 AND change_seq > $2
   AND (status = 'revoked' OR hold_released)
 ORDER BY serial;

-- name: crl_insert
INSERT INTO crls (issuer_id, shard, kind, number, base_number, this_update, next_update,
                  max_change_seq, entries, der, sha256, url, idp_urls)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13);

-- name: crl_notify_published
SELECT pg_notify('crl_published', $1);

-- name: crl_latest_all
-- The newest full and delta CRL of every scope, with bytes: what the responder serves and what
-- the publisher mirrors into --out.
SELECT DISTINCT ON (c.issuer_id, c.shard, c.kind)
       i.name AS issuer, c.issuer_id, c.shard, c.kind, c.number, c.this_update, c.next_update,
       c.der, c.sha256
  FROM crls c JOIN issuers i ON i.id = c.issuer_id
 ORDER BY c.issuer_id, c.shard, c.kind, c.number DESC;

-- name: crl_latest_digests
-- Like crl_latest_all without the bytes: lets a reader skip scopes it already holds.
SELECT DISTINCT ON (c.issuer_id, c.shard, c.kind)
       c.id, i.name AS issuer, c.issuer_id, c.shard, c.kind, c.number, c.sha256
  FROM crls c JOIN issuers i ON i.id = c.issuer_id
 ORDER BY c.issuer_id, c.shard, c.kind, c.number DESC;

-- name: crl_der_by_id
SELECT der, this_update, next_update FROM crls WHERE id = $1;
