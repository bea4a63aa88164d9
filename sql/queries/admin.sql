-- Issuer and certificate changes made by the admin CLI. Every change to a certificate row takes a
-- new change_seq so delta CRLs and the presigner can find it.

-- name: issuer_insert
INSERT INTO issuers (name, cert_der, subject_der, key_id,
                     name_sha1, key_sha1, name_sha256, key_sha256,
                     name_sha384, key_sha384, name_sha512, key_sha512,
                     key_path, ocsp_cert_der, ocsp_key_path, crl_shards, profile)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
RETURNING id;

-- name: issuer_update
UPDATE issuers
   SET cert_der = $2, subject_der = $3, key_id = $4,
       name_sha1 = $5, key_sha1 = $6, name_sha256 = $7, key_sha256 = $8,
       name_sha384 = $9, key_sha384 = $10, name_sha512 = $11, key_sha512 = $12,
       key_path = $13, ocsp_cert_der = $14, ocsp_key_path = $15, crl_shards = $16, profile = $17
 WHERE name = $1
RETURNING id;

-- name: issuer_by_name
SELECT * FROM issuers WHERE name = $1;

-- name: issuer_by_identity
-- The name under which this CA (subject and key: the CertID identity) is registered, other than
-- $3; backed by the unique index issuers_identity.
SELECT name FROM issuers WHERE subject_der = $1 AND key_sha256 = $2 AND name <> $3;

-- name: issuer_all
SELECT * FROM issuers ORDER BY id;

-- name: cert_insert
INSERT INTO certificates (issuer_id, serial, not_after, crl_url, shard)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (issuer_id, serial) DO NOTHING
RETURNING change_seq;

-- name: cert_for_update
SELECT * FROM certificates WHERE issuer_id = $1 AND serial = $2 FOR UPDATE;

-- name: cert_revoke
UPDATE certificates
   SET status = 'revoked', revoked_at = $3, reason = $4, invalidity_date = $5, crl_entry = $6,
       hold_released = false, change_seq = nextval('cert_change_seq')
 WHERE issuer_id = $1 AND serial = $2
RETURNING change_seq;

-- name: cert_unhold
UPDATE certificates
   SET status = 'good', revoked_at = NULL, reason = NULL, invalidity_date = NULL,
       crl_entry = NULL, hold_released = true, change_seq = nextval('cert_change_seq')
 WHERE issuer_id = $1 AND serial = $2 AND status = 'revoked' AND reason = 6
RETURNING change_seq;

-- name: import_stage_create
CREATE TEMPORARY TABLE import_stage (
    serial          bytea NOT NULL,
    not_after       timestamptz NOT NULL,
    status          text NOT NULL,
    revoked_at      timestamptz,
    reason          smallint,
    invalidity_date timestamptz,
    crl_entry       bytea,
    shard           integer
) ON COMMIT DROP;

-- name: import_vacuum
-- After a large import, outside its transaction (revoc/importer.py says why).
VACUUM (ANALYZE) certificates;

-- name: import_stage_merge
-- New serials are inserted. A known serial changes only when the index revokes it while we hold
-- it as good, or raises its reason to keyCompromise: an import never un-revokes anything (the
-- index may be older than revocations made with `revoc cert revoke`).
WITH merged AS (
    INSERT INTO certificates AS c (issuer_id, serial, not_after, status, revoked_at, reason,
                                   invalidity_date, crl_entry, shard)
    SELECT $1, s.serial, s.not_after, s.status, s.revoked_at, s.reason, s.invalidity_date,
           s.crl_entry, s.shard
      FROM import_stage s
    ON CONFLICT (issuer_id, serial) DO UPDATE
       SET status = EXCLUDED.status, revoked_at = EXCLUDED.revoked_at, reason = EXCLUDED.reason,
           invalidity_date = EXCLUDED.invalidity_date, crl_entry = EXCLUDED.crl_entry,
           hold_released = false, change_seq = nextval('cert_change_seq')
     WHERE EXCLUDED.status = 'revoked'
       AND (c.status = 'good' OR (EXCLUDED.reason = 1 AND c.reason IS DISTINCT FROM 1))
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
  FROM merged;

-- name: import_duplicate_serials
SELECT count(*) - count(DISTINCT serial) FROM import_stage;

-- name: notify_cert_changed
SELECT pg_notify('cert_changed', $1);

-- name: issuer_has_certificates
SELECT EXISTS (SELECT 1 FROM certificates WHERE issuer_id = $1);
