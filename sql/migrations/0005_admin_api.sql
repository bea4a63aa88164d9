-- Admin API tokens and the audit trail (issue 14, points 3 and 4). PostgreSQL 15 compatible.

-- 1. ------------------------------------------------------------------ API tokens

-- Bearer tokens of the admin API. Only the SHA-256 of a token is stored (the token itself, 32
-- random bytes, is printed once by `revoc token create`). A withdrawn token keeps its row
-- (revoked_at set), so the audit trail's actor names stay explained; a name is in use by at most
-- one live token.
CREATE TABLE api_tokens (
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    token_sha256    bytea NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    scope           text NOT NULL CHECK (scope IN ('read', 'revoke', 'admin')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL,
    revoked_at      timestamptz
);
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- 2. ------------------------------------------------------------------ audit trail

-- One row per change, written in the changing transaction (revoc/audit_trail.py), so a change
-- and its record commit or vanish together. No foreign keys: the trail outlives what it names
-- and a TRUNCATE ... CASCADE of the data tables never reaches it.
CREATE TABLE audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    -- Who: a token's name (API) or the operating-system user (CLI).
    actor           text NOT NULL,
    -- From where: the client's address (API) or 'cli'.
    source          text NOT NULL,
    action          text NOT NULL CHECK (action IN (
                        'revoke', 'unhold', 'cert_add', 'cert_import', 'issuer_add',
                        'issuer_replace', 'token_create', 'token_revoke')),
    issuer          text,
    serial          text CHECK (serial IS NULL OR serial ~ '^[0-9A-F]+$'),
    -- The certificate's state before and after ({"status": ..., "reason": ..., ...}); NULL when
    -- the change is not about one certificate.
    before          jsonb,
    after           jsonb,
    details         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_certificate ON audit_log (issuer, serial, id);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, id);

-- Append-only for everyone, the owner included: UPDATE, DELETE and TRUNCATE raise. (Roles of
-- 0006 also lack the grants; the trigger holds for a superuser too.)
CREATE FUNCTION revoc_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION revoc_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION revoc_audit_append_only();

-- 3. ------------------------------------------------------------------ recent changes

-- GET /v1/changes lists certificates by change_seq across issuers.
CREATE INDEX certificates_change_seq ON certificates (change_seq);
