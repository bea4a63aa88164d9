-- Admin API tokens, the audit trail and the read-only views of the admin API.

-- name: token_insert
INSERT INTO api_tokens (name, token_sha256, scope, created_by)
VALUES ($1, $2, $3, $4)
RETURNING id, created_at;

-- name: token_live_by_name
SELECT id FROM api_tokens WHERE name = $1 AND revoked_at IS NULL;

-- name: token_by_hash
-- A live token by the SHA-256 of its secret (the caller compares the hash again in constant time).
SELECT name, scope, token_sha256 FROM api_tokens
 WHERE token_sha256 = $1 AND revoked_at IS NULL;

-- name: token_all
SELECT name, scope, created_at, created_by, revoked_at FROM api_tokens
 WHERE $1 OR revoked_at IS NULL
 ORDER BY name, id;

-- name: token_revoke
UPDATE api_tokens SET revoked_at = now()
 WHERE name = $1 AND revoked_at IS NULL
RETURNING scope;

-- name: audit_insert
INSERT INTO audit_log (actor, source, action, issuer, serial, before, after, details)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb)
RETURNING id;

-- name: audit_list
-- Newest first, every filter optional (NULL: any); $5 pages backwards (ids below it).
SELECT id, at, actor, source, action, issuer, serial, before::text AS before,
       after::text AS after, details::text AS details
  FROM audit_log
 WHERE ($1::text IS NULL OR issuer = $1)
   AND ($2::text IS NULL OR serial = $2)
   AND ($3::text IS NULL OR actor = $3)
   AND ($4::timestamptz IS NULL OR at >= $4)
   AND ($5::bigint IS NULL OR id < $5)
 ORDER BY id DESC
 LIMIT $6;

-- name: cert_state
SELECT serial, not_after, status, revoked_at, reason, invalidity_date, hold_released,
       change_seq, changed_at, crl_url, shard
  FROM certificates
 WHERE issuer_id = $1 AND serial = $2;

-- name: cert_changes_since
-- Certificates whose change_seq is above $1 (additions, revocations, releases), oldest first.
SELECT i.name AS issuer, c.serial, c.not_after, c.status, c.revoked_at, c.reason,
       c.invalidity_date, c.hold_released, c.change_seq, c.changed_at, c.crl_url, c.shard
  FROM certificates c JOIN issuers i ON i.id = c.issuer_id
 WHERE c.change_seq > $1
   AND ($2::integer IS NULL OR c.issuer_id = $2)
 ORDER BY c.change_seq
 LIMIT $3;
