-- Queries of the OCSP responder (`revoc serve`). The hot path never runs any of them: they fill
-- the in-memory cache on a miss, feed the live signer, and keep the issuer index current.

-- name: responder_issuers
-- The CertID lookup index is rebuilt from this on start, on reconnect and on `<issuer>:*`.
SELECT id, name, cert_der, subject_der, key_id,
       name_sha1, key_sha1, name_sha256, key_sha256,
       name_sha384, key_sha384, name_sha512, key_sha512,
       key_path, ocsp_cert_der, ocsp_key_path, crl_shards, profile
  FROM issuers
 ORDER BY id;

-- name: responder_cert_status
-- What the live signer needs to answer for one certificate.
SELECT status, revoked_at, reason, invalidity_date
  FROM certificates
 WHERE issuer_id = $1 AND serial = $2;

-- name: responder_in_recovery
-- A hot standby (read replica): LISTEN is refused there, changes come by catch-up only.
SELECT pg_is_in_recovery();

-- name: responder_ocsp_response_batch
-- Pre-signed responses for many cache misses in one round trip (responder/miss_batch.py):
-- $1 issuer ids, $2 serials, $3 hash algorithms, position by position; `n` is the position.
-- Only a response signed from the certificate's current row is servable (ARCHITECTURE invariant
-- 1): a revocation takes a new change_seq in its own transaction, so from its commit on the old
-- `good` is never read again. A known certificate without a servable response comes back with
-- der NULL (`tryLater`, or a live signature); a serial never recorded comes back not at all.
-- certs_id (migration 0007): `der` is a stem, the responder_certs element with that id is spliced
-- in (revoc/der/ocsp_certs.py); NULL: `der` is the whole response.
SELECT k.n,
       r.der,
       extract(epoch FROM r.this_update)::bigint AS this_update,
       extract(epoch FROM r.next_update)::bigint AS next_update,
       r.certs_id
  FROM unnest($1::integer[], $2::bytea[], $3::smallint[])
       WITH ORDINALITY AS k(issuer_id, serial, hash_alg, n)
  JOIN certificates c
    ON c.issuer_id = k.issuer_id AND c.serial = k.serial
  LEFT JOIN ocsp_responses r
    ON r.issuer_id = k.issuer_id AND r.serial = k.serial AND r.hash_alg = k.hash_alg
   AND r.cert_change_seq >= c.change_seq;

-- name: responder_certs_all
-- Every certs element, for the bulk warm-up (a handful of rows).
SELECT id, certs_block FROM responder_certs;

-- name: responder_certs_by_id
-- The certs elements (delegated responder certificates) that stored responses name, read once
-- per responder process and id (a handful in all).
SELECT id, certs_block FROM responder_certs WHERE id = ANY($1::bigint[]);

-- name: responder_changes_since
-- Catch-up (ARCHITECTURE invariant 5): status changes made by transactions that had not ended
-- when the previous catch-up's snapshot was taken ($1: that snapshot's xmin; NULL at start, when
-- the cache is empty and only the new xmin is wanted). Every transaction with an xid below the
-- xmin had ended, so its changes were visible then; every later one has an xid at or above it,
-- whatever order its change_seq was drawn in. One statement, so the rows and the new xmin come
-- from one snapshot.
SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
       coalesce(array_agg(c.issuer_id ORDER BY c.change_seq), '{}') AS issuer_ids,
       coalesce(array_agg(c.serial ORDER BY c.change_seq), '{}') AS serials,
       coalesce(array_agg(c.change_seq ORDER BY c.change_seq), '{}') AS change_seqs
  FROM certificates c
 WHERE c.change_xid >= $1::xid8;

-- name: responder_oldest_unreflected
-- Ages (seconds) of the oldest status change that OCSP (the presigner's queue) and the CRLs
-- (the latest CRL of the certificate's scope: its shard, else the issuer-wide scope) do not
-- reflect yet; NULL when everything is reflected. Issuers whose CRLs are signed elsewhere
-- (no CA key here) do not count for CRLs.
WITH latest AS (
    SELECT issuer_id, shard, max(max_change_seq) AS seq FROM crls GROUP BY issuer_id, shard
), floors AS (
    SELECT i.id AS issuer_id,
           coalesce((SELECT min(l.seq) FROM latest l WHERE l.issuer_id = i.id), 0) AS seq
      FROM issuers i
     WHERE i.key_path IS NOT NULL
)
SELECT (SELECT extract(epoch FROM now() - min(changed_at))::float8 FROM ocsp_pending) AS ocsp,
       (SELECT extract(epoch FROM now() - min(c.changed_at))::float8
          FROM floors f
          JOIN certificates c ON c.issuer_id = f.issuer_id AND c.change_seq > f.seq
         WHERE c.changed_at IS NOT NULL
           AND c.change_seq > coalesce((SELECT l.seq FROM latest l
                                         WHERE l.issuer_id = c.issuer_id
                                           AND l.shard = coalesce(c.shard, -1)), 0)
       ) AS crl;

-- name: responder_warm_responses
-- Bulk warm-up of a new responder's cache (responder/cache_warm.py), read through a cursor in
-- large batches: every servable pre-signed response, valid for at least $1 more seconds, the
-- most recently signed first (those stay valid longest; with more than fit in the cache, $2,
-- the rest are left to misses). Servable as in `responder_ocsp_response_batch`: signed from the
-- certificate's current row (ARCHITECTURE invariant 1), so the snapshot holds no `good` from
-- before a revocation it can see; the ones it cannot see are for the cache's BulkFill to skip.
-- certs_id as in the batch query: `der` is a stem to splice the responder_certs element into
-- (read first in the same snapshot: `responder_certs_all`).
SELECT r.issuer_id, r.serial, r.hash_alg, r.der,
       extract(epoch FROM r.this_update)::bigint AS this_update,
       extract(epoch FROM r.next_update)::bigint AS next_update,
       r.certs_id
  FROM ocsp_responses r
  JOIN certificates c
    ON c.issuer_id = r.issuer_id AND c.serial = r.serial
 WHERE r.cert_change_seq >= c.change_seq
   AND r.next_update > now() + make_interval(secs => $1)
 ORDER BY r.next_update DESC
 LIMIT $2;
