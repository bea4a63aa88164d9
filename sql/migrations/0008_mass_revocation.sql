-- Mass revocation at bulk speed (issue 13 point 6). PostgreSQL 15 compatible.
--
-- Migration 0004 queues every status change in ocsp_pending with an AFTER ROW trigger, and
-- ocsp_pending references certificates with a foreign key. Revoking a million certificates in one
-- UPDATE then ran a million trigger calls, a million single-row INSERT ... ON CONFLICT and a
-- million foreign-key checks: about as much work as the UPDATE itself. Here the same guarantees
-- hold, for every writer, with one set-based INSERT per statement:
--
-- 1. Stamping stays a BEFORE ROW trigger (a statement-level trigger cannot change NEW). Its
--    WHEN clause now also skips rows the statement stamped correctly itself (changed_at = now()
--    and change_xid = this transaction, as the bulk UPDATE in sql/queries/mass_revoke.sql does),
--    so the bulk path pays an expression per row instead of a PL/pgSQL call. A writer that sets
--    anything else (an old xid, another time) is stamped by the trigger as before.
-- 2. Queueing is an AFTER ... FOR EACH STATEMENT trigger with transition tables: one INSERT ...
--    SELECT of the statement's changed rows, in the same transaction. A row counts as changed
--    unless the statement's old rows hold the same key with the same change_seq (so a statement
--    that also changes the key queues the new key: too much is harmless, too little is not).
--    An INSERT ... ON CONFLICT DO UPDATE fires both statement triggers, each with its own rows.
--    SECURITY DEFINER: the queue write is the owner's, so every writer's change is queued
--    whatever that writer may do on ocsp_pending (the publisher, which updates crl_entry only,
--    runs the trigger too; it queues nothing, but the INSERT's privileges are checked anyway).
-- 3. The foreign key ocsp_pending -> certificates goes (a check per queued row); its ON DELETE
--    CASCADE becomes a statement-level AFTER DELETE trigger. A queued row whose certificate is
--    gone nevertheless (a TRUNCATE, a hand-made row) is dequeued by the presigner unsigned
--    (responder/presign_queue.py), never left to age.

CREATE OR REPLACE FUNCTION revoc_queue_inserted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO public.ocsp_pending (issuer_id, serial, change_seq, changed_at)
    SELECT n.issuer_id, n.serial, n.change_seq, n.changed_at
      FROM revoc_new_rows n
     WHERE n.status = 'revoked'
    ON CONFLICT (issuer_id, serial) DO UPDATE
       SET change_seq = EXCLUDED.change_seq,
           -- The oldest unreflected change keeps its age: a second change does not reset it.
           changed_at = least(ocsp_pending.changed_at, EXCLUDED.changed_at);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION revoc_queue_updated() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO public.ocsp_pending (issuer_id, serial, change_seq, changed_at)
    SELECT n.issuer_id, n.serial, n.change_seq, n.changed_at
      FROM revoc_new_rows n
     WHERE NOT EXISTS (SELECT 1 FROM revoc_old_rows o
                        WHERE o.issuer_id = n.issuer_id AND o.serial = n.serial
                          AND o.change_seq = n.change_seq)
    ON CONFLICT (issuer_id, serial) DO UPDATE
       SET change_seq = EXCLUDED.change_seq,
           changed_at = least(ocsp_pending.changed_at, EXCLUDED.changed_at);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION revoc_dequeue_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    DELETE FROM public.ocsp_pending p
     USING revoc_old_rows o
     WHERE p.issuer_id = o.issuer_id AND p.serial = o.serial;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION revoc_queue_inserted(), revoc_queue_updated(), revoc_dequeue_deleted()
    FROM PUBLIC;

DROP TRIGGER certificates_queue_insert ON certificates;
DROP TRIGGER certificates_queue_update ON certificates;
DROP TRIGGER certificates_stamp_update ON certificates;
DROP FUNCTION revoc_queue_change();

CREATE TRIGGER certificates_stamp_update BEFORE UPDATE ON certificates
    FOR EACH ROW WHEN (OLD.change_seq IS DISTINCT FROM NEW.change_seq
                       AND (NEW.change_xid IS DISTINCT FROM pg_current_xact_id()
                            OR NEW.changed_at IS DISTINCT FROM now()))
    EXECUTE FUNCTION revoc_stamp_change();
CREATE TRIGGER certificates_queue_insert AFTER INSERT ON certificates
    REFERENCING NEW TABLE AS revoc_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION revoc_queue_inserted();
CREATE TRIGGER certificates_queue_update AFTER UPDATE ON certificates
    REFERENCING OLD TABLE AS revoc_old_rows NEW TABLE AS revoc_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION revoc_queue_updated();
CREATE TRIGGER certificates_dequeue_delete AFTER DELETE ON certificates
    REFERENCING OLD TABLE AS revoc_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION revoc_dequeue_deleted();

ALTER TABLE ocsp_pending DROP CONSTRAINT ocsp_pending_issuer_id_serial_fkey;
