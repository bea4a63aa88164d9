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

-- name: responder_ocsp_response
-- One pre-signed response (cache miss). Times come back as epoch seconds for cheap compares.
SELECT der,
       extract(epoch FROM this_update)::bigint AS this_update,
       extract(epoch FROM next_update)::bigint AS next_update
  FROM ocsp_responses
 WHERE issuer_id = $1 AND serial = $2 AND hash_alg = $3;

-- name: responder_cert_status
-- What the live signer needs to answer for one certificate.
SELECT status, revoked_at, reason
  FROM certificates
 WHERE issuer_id = $1 AND serial = $2;

-- name: responder_ping
-- Readiness probe on the LISTEN connection.
SELECT 1;
