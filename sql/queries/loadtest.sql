-- Read-only queries the Locust scenarios use to build real requests from a running revoc.

-- name: loadtest_issuers
SELECT id, name, cert_der FROM issuers ORDER BY id;

-- name: loadtest_certificates
SELECT issuer_id, serial, status FROM certificates
 WHERE not_after > now()
 ORDER BY random()
 LIMIT $1;
