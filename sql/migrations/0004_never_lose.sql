-- Never lose a revocation (issue 10). PostgreSQL 15 compatible.
--
-- 1. Every status change (revoke, reason change, unhold; by any writer: CLI, import, API) is
--    stamped by a trigger with the time and the transaction that made it, and queued for the
--    presigner in the same transaction. No code path can forget it.
-- 2. Plausibility constraints, so a row the encoders cannot represent never gets in.
-- 3. A quarantine of rows a worker could not encode (logged once, counted, skipped).
-- 4. Worker heartbeats, read by `revoc status` and exported by `revoc serve` in /metrics.
-- 5. A CA (subject + key) is registered once.

-- 1. ------------------------------------------------------------------ status changes

-- When the status last changed (the revoking transaction's start, now()), and the id of that
-- transaction. Responders catch up after a lost LISTEN connection by asking for rows whose
-- change_xid is at or above the xmin of the snapshot of their previous catch-up: every
-- transaction that had not ended by then has an xid at or above it, whatever order the
-- change_seq values were taken in (revoc/changes.py). NULL: never changed since it was added good.
ALTER TABLE certificates ADD COLUMN changed_at timestamptz;
ALTER TABLE certificates ADD COLUMN change_xid xid8;
CREATE INDEX certificates_change_xid ON certificates (change_xid) WHERE change_xid IS NOT NULL;

-- Work queue of the presigner: one row per certificate whose status changed and whose
-- pre-signed responses do not say so yet. Written by the trigger in the changing transaction;
-- deleted by the presigner in the transaction that stores the re-signed responses (claimed with
-- FOR UPDATE SKIP LOCKED, so each change is signed by exactly one presigner). min(changed_at)
-- is the age of the oldest change OCSP does not reflect.
CREATE TABLE ocsp_pending (
    issuer_id       integer NOT NULL,
    serial          bytea NOT NULL,
    change_seq      bigint NOT NULL,
    changed_at      timestamptz NOT NULL,
    PRIMARY KEY (issuer_id, serial),
    FOREIGN KEY (issuer_id, serial) REFERENCES certificates (issuer_id, serial) ON DELETE CASCADE
);
CREATE INDEX ocsp_pending_age ON ocsp_pending (changed_at);

CREATE FUNCTION revoc_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_at := now();
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

CREATE FUNCTION revoc_queue_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ocsp_pending (issuer_id, serial, change_seq, changed_at)
    VALUES (NEW.issuer_id, NEW.serial, NEW.change_seq, NEW.changed_at)
    ON CONFLICT (issuer_id, serial) DO UPDATE
       SET change_seq = EXCLUDED.change_seq,
           -- The oldest unreflected change keeps its age: a second change does not reset it.
           changed_at = least(ocsp_pending.changed_at, EXCLUDED.changed_at);
    RETURN NULL;
END $$;

-- A certificate inserted revoked (index.txt import) is a change; one inserted good is not.
CREATE TRIGGER certificates_stamp_insert BEFORE INSERT ON certificates
    FOR EACH ROW WHEN (NEW.status = 'revoked') EXECUTE FUNCTION revoc_stamp_change();
CREATE TRIGGER certificates_queue_insert AFTER INSERT ON certificates
    FOR EACH ROW WHEN (NEW.status = 'revoked') EXECUTE FUNCTION revoc_queue_change();
-- Every status change takes a new change_seq (sql/queries/admin.sql), so that is the test.
CREATE TRIGGER certificates_stamp_update BEFORE UPDATE ON certificates
    FOR EACH ROW WHEN (OLD.change_seq IS DISTINCT FROM NEW.change_seq)
    EXECUTE FUNCTION revoc_stamp_change();
CREATE TRIGGER certificates_queue_update AFTER UPDATE ON certificates
    FOR EACH ROW WHEN (OLD.change_seq IS DISTINCT FROM NEW.change_seq)
    EXECUTE FUNCTION revoc_queue_change();

-- 2. ------------------------------------------------------------------ plausibility

-- NOT VALID: enforced for every new or changed row; rows written before this migration are not
-- rechecked here (`revoc audit` reports them), so an upgrade never fails on old data.
-- Serial: the content octets of a positive DER INTEGER of at most 20 octets (RFC 5280 4.1.2.2).
ALTER TABLE certificates ADD CONSTRAINT certificates_serial_valid CHECK (
    CASE WHEN octet_length(serial) NOT BETWEEN 1 AND 20 THEN false
         WHEN get_byte(serial, 0) >= 128 THEN false          -- negative
         WHEN octet_length(serial) = 1 THEN get_byte(serial, 0) > 0
         WHEN get_byte(serial, 0) = 0 THEN get_byte(serial, 1) >= 128  -- minimal form
         ELSE true END
) NOT VALID;
-- Dates a CRL entry and an OCSP response can carry, and no earlier than 1950 (UTCTime's range
-- starts there; nothing in X.509 was revoked before it).
ALTER TABLE certificates ADD CONSTRAINT certificates_dates_valid CHECK (
    (revoked_at IS NULL OR (revoked_at >= '1950-01-01Z' AND revoked_at < '10000-01-01Z'))
    AND (invalidity_date IS NULL
         OR (invalidity_date >= '1950-01-01Z' AND invalidity_date < '10000-01-01Z'))
    AND isfinite(not_after) AND not_after >= '1950-01-01Z' AND not_after < '10000-01-01Z'
) NOT VALID;

-- 3. ------------------------------------------------------------------ quarantine

-- A row a worker could not encode: logged once, counted (revoc_quarantined_rows in /metrics),
-- skipped, and retried when the row changes again (a newer change_seq). `revoc audit` and
-- `revoc status` list them.
CREATE TABLE quarantine (
    kind            text NOT NULL CHECK (kind IN ('presign', 'publish')),
    issuer_id       integer NOT NULL,
    serial          bytea NOT NULL,
    change_seq      bigint NOT NULL,
    error           text NOT NULL,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, issuer_id, serial)
);

-- 4. ------------------------------------------------------------------ heartbeats

-- One row per running worker process (revoc/workers.py). beat_at moves on every loop turn,
-- last_ok after every successful round; stats holds counters and lag histograms the responder
-- sums into /metrics. A worker that stops in order sets stopped_at; one killed keeps an old
-- beat_at, which is what the alarm looks at.
CREATE TABLE workers (
    kind            text NOT NULL CHECK (kind IN ('presign', 'publish', 'serve')),
    host            text NOT NULL,
    pid             integer NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    beat_at         timestamptz NOT NULL DEFAULT now(),
    last_ok         timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    stopped_at      timestamptz,
    stats           jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (kind, host, pid)
);

-- 5. ------------------------------------------------------------------ issuer identity

-- One registration per CA: the same subject and key under a second name would make one of the
-- two unreachable through CertID lookup (both map to one key).
CREATE UNIQUE INDEX issuers_identity ON issuers (subject_der, key_sha256);
