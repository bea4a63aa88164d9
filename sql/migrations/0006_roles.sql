-- Least-privilege roles (issue 14, point 5). PostgreSQL 15 compatible.
--
-- Four group roles (NOLOGIN); an operator gives each process a login role that is a member of
-- one of them, and each process its own DSN:
--
--   revoc_responder  `revoc serve`: reads what it serves; writes only its heartbeat
--   revoc_presigner  `revoc presign`: writes ocsp_responses, dequeues ocsp_pending
--   revoc_publisher  `revoc publish`: writes crls (and repairs a certificate's cached CRL entry)
--   revoc_admin      admin commands and `revoc admin-api`: writes issuers, certificates,
--                    api_tokens, appends to audit_log
--
-- Every role may write workers (heartbeats) and quarantine (the workers' bad rows). No role may
-- UPDATE or DELETE audit_log (and its trigger refuses even the owner).
--
-- Roles belong to the whole cluster, grants to this database: several databases on one server
-- (test runs, staging next to production) share the four roles, each granting on its own
-- tables. Creating a role needs CREATEROLE; a migration run without it creates none and
-- grants to whichever exist already, so `revoc db upgrade` never fails for want of it (the
-- embedded server's user is a superuser and creates them).

DO $$
DECLARE
    role_name text;
    may_create boolean;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create FROM pg_roles WHERE rolname = current_user;
    FOREACH role_name IN ARRAY ARRAY['revoc_responder', 'revoc_presigner', 'revoc_publisher',
                                     'revoc_admin'] LOOP
        IF may_create AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it at the same moment
            END;
        END IF;
    END LOOP;
END $$;

-- The publisher waits for certificate writers with LOCK TABLE certificates IN SHARE MODE,
-- which needs UPDATE on the whole table; this function takes the lock for it (the lock lasts
-- until the caller's transaction ends) without granting it any write on certificates.
CREATE FUNCTION revoc_block_certificate_writers() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    LOCK TABLE public.certificates IN SHARE MODE;
END $$;
REVOKE ALL ON FUNCTION revoc_block_certificate_writers() FROM PUBLIC;

DO $$
DECLARE
    grants text[][] := ARRAY[
        -- everyone: the schema check, heartbeats, the quarantine
        ['revoc_responder', 'SELECT ON schema_migrations, issuers, certificates, ocsp_responses, crls, ocsp_pending, quarantine, workers'],
        ['revoc_responder', 'INSERT, UPDATE ON workers'],
        ['revoc_presigner', 'SELECT ON schema_migrations, issuers, certificates, ocsp_responses, ocsp_pending, quarantine, workers'],
        ['revoc_presigner', 'INSERT, UPDATE, DELETE ON ocsp_responses'],
        -- SELECT ... FOR UPDATE SKIP LOCKED on the queue needs UPDATE
        ['revoc_presigner', 'UPDATE, DELETE ON ocsp_pending'],
        ['revoc_presigner', 'INSERT, UPDATE, DELETE ON workers, quarantine'],
        ['revoc_publisher', 'SELECT ON schema_migrations, issuers, certificates, crls, quarantine, workers'],
        ['revoc_publisher', 'INSERT ON crls'],
        ['revoc_publisher', 'UPDATE (crl_entry) ON certificates'],
        ['revoc_publisher', 'INSERT, UPDATE, DELETE ON workers, quarantine'],
        ['revoc_publisher', 'EXECUTE ON FUNCTION revoc_block_certificate_writers()'],
        -- the round's horizon reads the sequence's last value (SELECT: no nextval)
        ['revoc_publisher', 'SELECT ON SEQUENCE cert_change_seq'],
        ['revoc_admin', 'SELECT ON schema_migrations, issuers, certificates, ocsp_pending, api_tokens, audit_log, quarantine, workers, crls, ocsp_responses'],
        ['revoc_admin', 'INSERT, UPDATE ON issuers, certificates, api_tokens'],
        -- the 0004 triggers queue each change in the admin's transaction
        ['revoc_admin', 'INSERT, UPDATE ON ocsp_pending'],
        ['revoc_admin', 'INSERT ON audit_log'],
        ['revoc_admin', 'USAGE ON SEQUENCE cert_change_seq']
    ];
    item text[];
BEGIN
    FOREACH item SLICE 1 IN ARRAY grants LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = item[1]) THEN
            IF item[2] LIKE '%FUNCTION%' OR item[2] LIKE '%SEQUENCE%' THEN
                EXECUTE format('GRANT %s TO %I', item[2], item[1]);
            ELSE
                EXECUTE format('GRANT %s TO %I', regexp_replace(item[2], ' ON ', ' ON TABLE '),
                               item[1]);
            END IF;
        END IF;
    END LOOP;
END $$;
