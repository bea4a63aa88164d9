-- The presigner (responder/presigner.py): find certificates whose responses are missing, stale or
-- due, store freshly signed responses, and tell the responders.

-- name: presign_due_certificates
-- One keyset page of an issuer's certificates that need signing. A certificate needs signing when,
-- for one of the wanted hash algorithms ($3), its response is missing, was signed from an older
-- certificate row (change_seq), or is due for refresh: thisUpdate at or before $4 (now -
-- refresh_after + lead, CONFORMANCE BR-5) or nextUpdate at or before $5 (now + lead). $7 forces
-- every certificate (a new signer: OCSP-SIGNER-6 re-sign after rotation). `changed` says a
-- responder may hold an answer that is now wrong (or none at all), so it must hear of this one.
-- Certificates whose notAfter is at or before $8 are past retention and no longer signed (NULL:
-- keep signing forever; CONFORMANCE OCSP-RESP-18).
SELECT c.serial, c.revoked_at, c.reason, c.change_seq,
       (r.responses < cardinality($3::smallint[]) OR r.stale) AS changed
  FROM certificates c
 CROSS JOIN LATERAL (
        SELECT count(*) AS responses,
               count(*) FILTER (WHERE o.cert_change_seq >= c.change_seq
                                  AND o.this_update > $4 AND o.next_update > $5) AS fresh,
               coalesce(bool_or(o.cert_change_seq < c.change_seq), false) AS stale
          FROM ocsp_responses o
         WHERE o.issuer_id = c.issuer_id AND o.serial = c.serial
           AND o.hash_alg = ANY($3::smallint[])
       ) r
 WHERE c.issuer_id = $1 AND c.serial > $2
   AND ($7 OR r.fresh < cardinality($3::smallint[]))
   AND ($8::timestamptz IS NULL OR c.not_after > $8)
 ORDER BY c.serial
 LIMIT $6;

-- name: presign_certificates_by_serial
-- The rows named by cert_changed notifications: re-signed at once, whatever their responses say,
-- unless past retention ($3, as in presign_due_certificates).
SELECT c.serial, c.revoked_at, c.reason, c.change_seq, true AS changed
  FROM certificates c
 WHERE c.issuer_id = $1 AND c.serial = ANY($2::bytea[])
   AND ($3::timestamptz IS NULL OR c.not_after > $3)
 ORDER BY c.serial;

-- name: presign_drop_expired
-- Responses of an issuer's certificates past retention (notAfter at or before $2). A responder
-- keeps serving what it cached until that response's nextUpdate (it is validly signed), then
-- finds no row and answers `unauthorized` (CONFORMANCE OCSP-RESP-18).
DELETE FROM ocsp_responses o
 USING certificates c
 WHERE c.issuer_id = $1 AND c.not_after <= $2
   AND o.issuer_id = c.issuer_id AND o.serial = c.serial;

-- name: presign_stage_create
-- Signed responses are COPYed here, then merged in one statement (bulk, scales to millions).
CREATE TEMPORARY TABLE presign_stage (
    issuer_id       integer NOT NULL,
    serial          bytea NOT NULL,
    hash_alg        smallint NOT NULL,
    der             bytea NOT NULL,
    produced_at     timestamptz NOT NULL,
    this_update     timestamptz NOT NULL,
    next_update     timestamptz NOT NULL,
    cert_change_seq bigint NOT NULL
) ON COMMIT DROP;

-- name: presign_stage_merge
-- A response never replaces one signed from a newer certificate row: a slow sweep that read a
-- certificate as good must not overwrite the revoked answer a notification produced meanwhile.
INSERT INTO ocsp_responses AS o (issuer_id, serial, hash_alg, der, produced_at, this_update,
                                 next_update, cert_change_seq)
SELECT issuer_id, serial, hash_alg, der, produced_at, this_update, next_update, cert_change_seq
  FROM presign_stage
    ON CONFLICT (issuer_id, serial, hash_alg) DO UPDATE
   SET der = EXCLUDED.der, produced_at = EXCLUDED.produced_at,
       this_update = EXCLUDED.this_update, next_update = EXCLUDED.next_update,
       cert_change_seq = EXCLUDED.cert_change_seq
 WHERE (o.cert_change_seq, o.produced_at) <= (EXCLUDED.cert_change_seq, EXCLUDED.produced_at);

-- name: presign_notify_changed
-- Payloads "<issuer id>:<serial hex>" or "<issuer id>:*", sent with the merge's transaction so a
-- responder that hears one finds the new response.
SELECT pg_notify('ocsp_changed', payload) FROM unnest($1::text[]) AS payload;

-- name: presign_earliest_next_update
-- When the next refresh falls due (served by the ocsp_responses_due index).
SELECT min(next_update) FROM ocsp_responses;

-- name: presign_issuer_lock
-- One sweep of an issuer at a time across presigners (session-level, two-key form: a key space
-- of its own, apart from the one-bigint keys of migrations and CRLs). `presign --once` waits.
SELECT pg_advisory_lock(1919252067, $1);

-- name: presign_issuer_try_lock
-- The continuous mode does not wait: another presigner sweeping this issuer is doing the work.
SELECT pg_try_advisory_lock(1919252067, $1);

-- name: presign_issuer_unlock
SELECT pg_advisory_unlock(1919252067, $1);
