-- The presigner (responder/presigner.py, responder/presign_queue.py): find certificates whose
-- responses are missing, stale or due, store freshly signed responses, and tell the responders.
--
-- Every query that hands certificate rows to the encoder reads revoked_at through the same guard:
-- a time Python cannot hold (before year 1 or after 9999; -infinity and infinity decode, as naive
-- datetime.min/max) comes back NULL with `revoked` still true, so one such row is quarantined
-- (the presigner refuses to sign a revoked row without a time) instead of failing the whole read.

-- name: presign_due_certificates
-- One keyset page of an issuer's certificates that need signing. A certificate needs signing when,
-- for one of the wanted hash algorithms ($3), its response is missing, was signed from an older
-- certificate row (change_seq), or is due for refresh: thisUpdate at or before $4 (now -
-- refresh_after + lead, CONFORMANCE BR-5) or nextUpdate at or before $5 (now + lead). $7 forces
-- every certificate (a new signer: OCSP-SIGNER-6 re-sign after rotation). `changed` says a
-- responder may hold an answer that is now wrong (or none at all), so it must hear of this one.
-- Certificates whose notAfter is at or before $8 are past retention and no longer signed (NULL:
-- keep signing forever; CONFORMANCE OCSP-RESP-18). A certificate with a row in ocsp_pending is
-- left to the queue (responder/presign_queue.py), which signs each change exactly once.
SELECT c.serial,
       CASE WHEN NOT isfinite(c.revoked_at)
              OR c.revoked_at BETWEEN '0001-01-01 00:00:00Z' AND '9999-12-31 23:59:59Z'
            THEN c.revoked_at END AS revoked_at,
       CASE WHEN isfinite(c.invalidity_date)
             AND c.invalidity_date BETWEEN '0001-01-02 00:00:00Z' AND '9999-12-30 23:59:59Z'
            THEN c.invalidity_date END AS invalidity_date,
       c.status = 'revoked' AS revoked, c.reason, c.change_seq,
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
   AND NOT EXISTS (SELECT 1 FROM ocsp_pending p
                    WHERE p.issuer_id = c.issuer_id AND p.serial = c.serial)
 ORDER BY c.serial
 LIMIT $6;

-- name: presign_unsigned_certificates
-- Certificates named by cert_changed that have no current response for some wanted hash ($3)
-- and no queued change (a certificate just added good; a change is the queue's). Past retention
-- ($4, as in presign_due_certificates) they are not signed. Two presigners may both sign a new
-- certificate; that is harmless (the merge keeps one), a change is never signed twice.
SELECT c.serial,
       CASE WHEN NOT isfinite(c.revoked_at)
              OR c.revoked_at BETWEEN '0001-01-01 00:00:00Z' AND '9999-12-31 23:59:59Z'
            THEN c.revoked_at END AS revoked_at,
       CASE WHEN isfinite(c.invalidity_date)
             AND c.invalidity_date BETWEEN '0001-01-02 00:00:00Z' AND '9999-12-30 23:59:59Z'
            THEN c.invalidity_date END AS invalidity_date,
       c.status = 'revoked' AS revoked, c.reason, c.change_seq, true AS changed
  FROM certificates c
 WHERE c.issuer_id = $1 AND c.serial = ANY($2::bytea[])
   AND ($4::timestamptz IS NULL OR c.not_after > $4)
   AND NOT EXISTS (SELECT 1 FROM ocsp_pending p
                    WHERE p.issuer_id = c.issuer_id AND p.serial = c.serial)
   AND (SELECT count(*) FROM ocsp_responses o
         WHERE o.issuer_id = c.issuer_id AND o.serial = c.serial
           AND o.hash_alg = ANY($3::smallint[]) AND o.cert_change_seq >= c.change_seq)
       < cardinality($3::smallint[])
 ORDER BY c.serial;

-- name: presign_pending_claim
-- Claim up to $3 queued changes, oldest first, in the transaction that will store their responses
-- and delete them: SKIP LOCKED hands each row to exactly one presigner, and a change committed
-- meanwhile waits on the row lock (its trigger updates the row) until the claim ends. Issuers in
-- $1 are left alone (their key cannot be used now). $2 false: rows not quarantined at their
-- current change; $2 true: only those (the slow retry).
SELECT p.issuer_id, p.serial, p.change_seq, p.changed_at
  FROM ocsp_pending p
 WHERE p.issuer_id <> ALL($1::integer[])
   AND EXISTS (SELECT 1 FROM quarantine q
                WHERE q.kind = 'presign' AND q.issuer_id = p.issuer_id AND q.serial = p.serial
                  AND q.change_seq >= p.change_seq) = $2
 ORDER BY p.changed_at
 LIMIT $3
   FOR UPDATE SKIP LOCKED;

-- name: presign_pending_certificates
-- The certificate rows of claimed changes, read after the claim: a change committed before it
-- is in the claimed row already, one committed after it waits for our commit, so change_seq here
-- is at least the claimed one. `expired`: past retention ($3), dequeued without signing.
SELECT c.issuer_id, c.serial,
       CASE WHEN NOT isfinite(c.revoked_at)
              OR c.revoked_at BETWEEN '0001-01-01 00:00:00Z' AND '9999-12-31 23:59:59Z'
            THEN c.revoked_at END AS revoked_at,
       CASE WHEN isfinite(c.invalidity_date)
             AND c.invalidity_date BETWEEN '0001-01-02 00:00:00Z' AND '9999-12-30 23:59:59Z'
            THEN c.invalidity_date END AS invalidity_date,
       c.status = 'revoked' AS revoked, c.reason, c.change_seq,
       ($3::timestamptz IS NOT NULL AND c.not_after <= $3) AS expired
  FROM unnest($1::integer[], $2::bytea[]) AS k(issuer_id, serial)
  JOIN certificates c ON c.issuer_id = k.issuer_id AND c.serial = k.serial
 ORDER BY c.issuer_id, c.serial;

-- name: presign_pending_done_plan
-- For presign_pending_done, in its transaction: rows found by probes of the primary key, one per
-- dequeued change. Left to the planner, a queue of 100k-500k rows (after a mass revocation, before
-- its statistics catch up) was hashed in full for every batch of 2,000: a seq scan of the whole
-- queue per batch, 73 ms a batch at 300k queued against 6.5 ms by probes (bench/RESULTS.md,
-- "Mass revocation"). The other statements of the drain transaction join nothing.
SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;

-- name: presign_pending_done
-- Dequeue what was reflected: only rows whose change_seq is at most the one signed from, so a
-- newer change stays queued. Returns changed_at for the commit-to-OCSP lag.
DELETE FROM ocsp_pending p
 USING unnest($1::integer[], $2::bytea[], $3::bigint[]) AS d(issuer_id, serial, change_seq)
 WHERE p.issuer_id = d.issuer_id AND p.serial = d.serial AND p.change_seq <= d.change_seq
RETURNING p.issuer_id, p.serial, p.changed_at;

-- name: presign_drop_expired
-- Responses of an issuer's certificates past retention (notAfter at or before $2). A responder
-- keeps serving what it cached until that response's nextUpdate (it is validly signed), then
-- finds no row and answers `unauthorized` (CONFORMANCE OCSP-RESP-18).
DELETE FROM ocsp_responses o
 USING certificates c
 WHERE c.issuer_id = $1 AND c.not_after <= $2
   AND o.issuer_id = c.issuer_id AND o.serial = c.serial;

-- name: presign_responder_certs_put
-- Store the certs elements ($2) the staged rows name by id ($1: SHA-256 prefix, migration 0007),
-- in the merge's transaction. Returns how many ids already hold a *different* element (a prefix
-- collision: the caller refuses to store rows that would be spliced with the wrong certificate).
WITH given AS (
    SELECT * FROM unnest($1::bigint[], $2::bytea[]) AS g(id, certs_block)
), added AS (
    INSERT INTO responder_certs (id, certs_block)
    SELECT id, certs_block FROM given
        ON CONFLICT (id) DO NOTHING
)
SELECT count(*) FROM given g JOIN responder_certs r ON r.id = g.id
 WHERE r.certs_block <> g.certs_block;

-- name: presign_store
-- Store signed responses, one array element per (certificate, hash algorithm), in one statement
-- (no temporary table and COPY per batch: about twice the rows per second, measured with
-- bench-sized batches of 4,000): DER stems and the responder_certs id of the certs element the
-- responder splices in ($9; NULL: the CA signs, the DER is whole). A response never replaces one
-- signed from a newer certificate row: a slow sweep that read a certificate as good must not
-- overwrite the revoked answer a notification produced meanwhile.
INSERT INTO ocsp_responses AS o (issuer_id, serial, hash_alg, der, produced_at, this_update,
                                 next_update, cert_change_seq, certs_id)
SELECT * FROM unnest($1::integer[], $2::bytea[], $3::smallint[], $4::bytea[],
                     $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::bigint[],
                     $9::bigint[])
    ON CONFLICT (issuer_id, serial, hash_alg) DO UPDATE
   SET der = EXCLUDED.der, produced_at = EXCLUDED.produced_at,
       this_update = EXCLUDED.this_update, next_update = EXCLUDED.next_update,
       cert_change_seq = EXCLUDED.cert_change_seq, certs_id = EXCLUDED.certs_id
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
