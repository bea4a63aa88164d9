-- Every change of what OCSP or a CRL says about a certificate takes a fresh change_seq, whoever
-- writes it (the one rule; ARCHITECTURE invariant 1).
--
-- Migrations 0004 and 0008 stamp and queue a row when its change_seq changes, and the responder
-- serves only responses signed from the current change_seq. Every query of revoc takes a new
-- change_seq with a status change, but a hand-written `UPDATE certificates SET status =
-- 'revoked', ...` that forgot it (or a writer that set an older value) left change_seq as it
-- was: nothing stamped, nothing queued, and the `good` signed before still counted as current.
-- Now the stamping trigger also fires when status, revocation time, reason, invalidity date or
-- the hold release changes without change_seq moving forward, and then takes nextval itself;
-- a change_seq moved backwards is replaced the same way. The queue trigger of 0008 sees the new
-- change_seq and queues the row. A writer that moves change_seq forward keeps its value (the
-- bulk path's `nextval` and its exact stamp still skip the trigger, as 0008 measured).

CREATE OR REPLACE FUNCTION revoc_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.change_seq <= OLD.change_seq THEN
        NEW.change_seq := nextval('cert_change_seq');
    END IF;
    NEW.changed_at := now();
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

DROP TRIGGER certificates_stamp_update ON certificates;
CREATE TRIGGER certificates_stamp_update BEFORE UPDATE ON certificates
    FOR EACH ROW WHEN (
        -- The status changed and change_seq did not move forward: take one.
        (NEW.change_seq <= OLD.change_seq
         AND (OLD.status, OLD.revoked_at, OLD.reason, OLD.invalidity_date, OLD.hold_released)
             IS DISTINCT FROM
             (NEW.status, NEW.revoked_at, NEW.reason, NEW.invalidity_date, NEW.hold_released))
        -- change_seq moved backwards: replaced.
        OR NEW.change_seq < OLD.change_seq
        -- change_seq moved forward without this statement's exact stamp (0008): stamp it.
        OR (NEW.change_seq > OLD.change_seq
            AND (NEW.change_xid IS DISTINCT FROM pg_current_xact_id()
                 OR NEW.changed_at IS DISTINCT FROM now())))
    EXECUTE FUNCTION revoc_stamp_change();
