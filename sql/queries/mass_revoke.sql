-- Mass revocation (`revoc cert revoke --serials-file`, revoc/mass_revoke.py): the serials are
-- streamed into a temporary table with COPY, then revoked by one UPDATE, all in one transaction.

-- name: mass_revoke_stage_create
CREATE TEMPORARY TABLE mass_revoke_stage (
    line      bigint NOT NULL,
    serial    bytea NOT NULL,
    crl_entry bytea NOT NULL
) ON COMMIT DROP;

-- name: mass_revoke_check
-- How many distinct serials, how many the issuer never recorded (and the first of them, by line),
-- and how many are revoked already (left as they are).
SELECT count(DISTINCT s.serial) AS serials,
       count(DISTINCT s.serial) FILTER (WHERE c.serial IS NULL) AS unknown,
       (SELECT encode(u.serial, 'hex') FROM mass_revoke_stage u
         WHERE NOT EXISTS (SELECT 1 FROM certificates k
                            WHERE k.issuer_id = $1 AND k.serial = u.serial)
         ORDER BY u.line LIMIT 1) AS first_unknown,
       count(DISTINCT s.serial) FILTER (WHERE c.status = 'revoked') AS already
  FROM mass_revoke_stage s
  LEFT JOIN certificates c ON c.issuer_id = $1 AND c.serial = s.serial;

-- name: mass_revoke_apply
-- One UPDATE for every serial not revoked yet; each row takes its own change_seq, so the
-- statement's trigger queues it for the presigner (ocsp_pending) and the publisher sees it as a
-- change. The UPDATE stamps changed_at and change_xid itself, as the 0004 trigger would (the
-- 0008 trigger then skips these rows: no PL/pgSQL call per row).
WITH staged AS (SELECT DISTINCT ON (serial) serial, crl_entry FROM mass_revoke_stage
                 ORDER BY serial, line),
     done AS (
       UPDATE certificates c
          SET status = 'revoked', revoked_at = $2, reason = $3, invalidity_date = $4,
              crl_entry = s.crl_entry, hold_released = false,
              change_seq = nextval('cert_change_seq'),
              changed_at = now(), change_xid = pg_current_xact_id()
         FROM staged s
        WHERE c.issuer_id = $1 AND c.serial = s.serial AND c.status <> 'revoked'
       RETURNING 1)
SELECT count(*) FROM done;
