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
SELECT status, revoked_at, reason
  FROM certificates
 WHERE issuer_id = $1 AND serial = $2;

-- name: responder_ping
-- Readiness probe on the LISTEN connection.
SELECT 1;

-- name: responder_ocsp_response_batch
-- Pre-signed responses for many cache misses in one round trip (responder/miss_batch.py):
-- $1 issuer ids, $2 serials, $3 hash algorithms, position by position; `n` is the position.
SELECT k.n,
       r.der,
       extract(epoch FROM r.this_update)::bigint AS this_update,
       extract(epoch FROM r.next_update)::bigint AS next_update
  FROM unnest($1::integer[], $2::bytea[], $3::smallint[])
       WITH ORDINALITY AS k(issuer_id, serial, hash_alg, n)
  JOIN ocsp_responses r
    ON r.issuer_id = k.issuer_id AND r.serial = k.serial AND r.hash_alg = k.hash_alg;
