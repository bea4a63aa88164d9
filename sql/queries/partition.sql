-- Hash partitioning of the per-certificate tables by (issuer_id, serial) (issue 15 point 5):
-- `revoc db partition --count N`, or REVOC_DB_PARTITIONS at `revoc db upgrade` (revoc/partition.py).
--
-- The conversion reads every table's definition from the catalog at the moment it runs, so it
-- carries whatever the migrations applied so far made of the tables (columns, defaults, checks,
-- indexes, triggers, foreign keys both ways, views, grants, owners, comments), not a copy of
-- today's DDL. It is one function call, hence one transaction: it commits whole or not at all.
-- The function lives in pg_temp (this session only), so it never becomes part of the schema.

-- name: partition_define
-- GRANT re-making one privilege (a column's when `col` is set); the owner's own come with
-- ownership. Run as the table's owner or a superuser, the grantor is the owner, as before.
CREATE OR REPLACE FUNCTION pg_temp.revoc_partition_grant(
    grantee oid, privilege text, grantable boolean, owner oid, target text, col name)
RETURNS text LANGUAGE sql AS $fn$
    SELECT CASE WHEN grantee <> owner OR col IS NOT NULL THEN
           format('GRANT %s%s ON TABLE %s TO %s%s', privilege,
                  CASE WHEN col IS NOT NULL THEN format(' (%I)', col) ELSE '' END, target,
                  CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(grantee)) END,
                  CASE WHEN grantable THEN ' WITH GRANT OPTION' ELSE '' END) END
$fn$;

CREATE OR REPLACE FUNCTION pg_temp.revoc_partition(partitions integer) RETURNS text[]
LANGUAGE plpgsql AS $fn$
DECLARE
    -- Referenced tables first: certificates is referenced by the other two.
    names text[] := ARRAY['certificates', 'ocsp_responses', 'ocsp_pending'];
    oids oid[];
    tbl text;
    rel oid;
    tmp text;
    cols text;
    copied bigint;
    i integer;
    r record;
    before_drop text[] := '{}';   -- dependents dropped before the old tables go
    per_table text[] := '{}';     -- run once the new tables carry the old names
    after_all text[] := '{}';     -- foreign keys, then views
    stmt text;
    report text[] := '{}';
BEGIN
    IF partitions IS NULL OR partitions < 2 OR partitions > 1024 THEN
        RAISE EXCEPTION 'the partition count must be between 2 and 1024, not %',
            coalesce(partitions::text, 'none') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH tbl IN ARRAY names LOOP
        IF to_regclass(format('public.%I', tbl)) IS NULL THEN
            RAISE EXCEPTION 'table public.% does not exist: run `revoc db upgrade` first', tbl
                USING ERRCODE = 'undefined_table';
        END IF;
    END LOOP;
    -- Writers wait until the converted tables commit; a second conversion waits, then refuses.
    LOCK TABLE public.certificates, public.ocsp_responses, public.ocsp_pending
        IN ACCESS EXCLUSIVE MODE;
    SELECT array_agg(to_regclass(format('public.%I', n))::oid ORDER BY o)
      INTO oids FROM unnest(names) WITH ORDINALITY AS u(n, o);

    -- What this conversion does not carry over is refused, never silently lost.
    FOR r IN SELECT c.relname, c.relkind, c.relrowsecurity FROM pg_class c
              WHERE c.oid = ANY(oids) LOOP
        IF r.relkind = 'p' THEN
            RAISE EXCEPTION 'table % is already partitioned', r.relname
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        IF r.relkind <> 'r' OR r.relrowsecurity THEN
            RAISE EXCEPTION 'table % is not a plain table without row security', r.relname
                USING ERRCODE = 'feature_not_supported';
        END IF;
    END LOOP;
    FOR r IN
        SELECT 'an inheritance link' AS what, inhrelid::regclass::text AS rel FROM pg_inherits
         WHERE inhrelid = ANY(oids) OR inhparent = ANY(oids)
        UNION ALL SELECT 'a policy', polrelid::regclass::text FROM pg_policy
         WHERE polrelid = ANY(oids)
        UNION ALL SELECT 'a rule', ev_class::regclass::text FROM pg_rewrite
         WHERE ev_class = ANY(oids)
        UNION ALL SELECT 'a publication', prrelid::regclass::text FROM pg_publication_rel
         WHERE prrelid = ANY(oids)
        UNION ALL SELECT 'extended statistics', stxrelid::regclass::text FROM pg_statistic_ext
         WHERE stxrelid = ANY(oids)
        UNION ALL SELECT 'an identity or generated column', attrelid::regclass::text
          FROM pg_attribute WHERE attrelid = ANY(oids) AND NOT attisdropped
           AND (attidentity <> '' OR attgenerated <> '')
        UNION ALL SELECT 'no partition key column ' || k, n
          FROM unnest(names) AS n CROSS JOIN unnest(ARRAY['issuer_id', 'serial']) AS k
         WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                            WHERE a.attrelid = to_regclass(format('public.%I', n))
                              AND a.attname = k AND NOT a.attisdropped)
    LOOP
        RAISE EXCEPTION 'table % has %, which partitioning does not carry over', r.rel, r.what
            USING ERRCODE = 'feature_not_supported';
    END LOOP;

    -- Views over the tables (and views over those): dropped deepest first, re-created from
    -- their definitions shallowest first, with their options, owners, grants and comments.
    FOR r IN
        WITH RECURSIVE dep(view, depth) AS (
            SELECT DISTINCT w.ev_class, 1 FROM pg_depend d
              JOIN pg_rewrite w ON w.oid = d.objid
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = ANY(oids) AND w.ev_class <> d.refobjid
            UNION ALL
            SELECT w.ev_class, dep.depth + 1 FROM dep
              JOIN pg_depend d ON d.refobjid = dep.view AND d.classid = 'pg_rewrite'::regclass
                              AND d.refclassid = 'pg_class'::regclass
              JOIN pg_rewrite w ON w.oid = d.objid AND w.ev_class <> dep.view
        )
        SELECT v.oid, format('%I.%I', ns.nspname, v.relname) AS qname, v.relkind, v.relowner,
               v.reloptions, v.relacl, pg_get_userbyid(v.relowner) AS owner,
               obj_description(v.oid, 'pg_class') AS comment, max(dep.depth) AS depth
          FROM dep JOIN pg_class v ON v.oid = dep.view
          JOIN pg_namespace ns ON ns.oid = v.relnamespace
         GROUP BY v.oid, ns.nspname
         ORDER BY max(dep.depth) DESC
    LOOP
        IF r.relkind <> 'v' THEN
            RAISE EXCEPTION 'materialized view % depends on the tables; drop it first', r.qname
                USING ERRCODE = 'feature_not_supported';
        END IF;
        before_drop := before_drop || format('DROP VIEW %s', r.qname);
        after_all := format('CREATE VIEW %s%s AS %s', r.qname,
                            CASE WHEN r.reloptions IS NOT NULL
                                 THEN ' WITH (' || array_to_string(r.reloptions, ', ') || ')'
                                 ELSE '' END,
                            pg_get_viewdef(r.oid))
                     || format('ALTER VIEW %s OWNER TO %I', r.qname, r.owner)
                     || ARRAY(SELECT pg_temp.revoc_partition_grant(a.grantee, a.privilege_type, a.is_grantable,
                                                               r.relowner, r.qname, NULL)
                                FROM aclexplode(r.relacl) a)
                     || ARRAY(SELECT pg_temp.revoc_partition_grant(a.grantee, a.privilege_type, a.is_grantable,
                                                               r.relowner, r.qname, c.attname)
                                FROM pg_attribute c CROSS JOIN aclexplode(c.attacl) a
                               WHERE c.attrelid = r.oid AND c.attacl IS NOT NULL)
                     || ARRAY(SELECT format('COMMENT ON VIEW %s IS %L', r.qname, r.comment)
                               WHERE r.comment IS NOT NULL)
                     || after_all;
    END LOOP;

    -- Foreign keys from and to the tables (the ones between them too): dropped, re-added once
    -- every table is converted (which validates them against the copied rows).
    FOR r IN
        SELECT con.oid, con.conname, format('%I.%I', ns.nspname, c.relname) AS qname,
               pg_get_constraintdef(con.oid) AS def, con.conrelid = ANY(oids) AS from_ours,
               obj_description(con.oid, 'pg_constraint') AS comment
          FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace ns ON ns.oid = c.relnamespace
         WHERE con.contype = 'f' AND con.conparentid = 0
           AND (con.conrelid = ANY(oids) OR con.confrelid = ANY(oids))
         ORDER BY con.conname
    LOOP
        before_drop := before_drop || format('ALTER TABLE %s DROP CONSTRAINT %I', r.qname,
                                             r.conname);
        -- A partitioned table cannot hold a NOT VALID foreign key: it is validated instead.
        after_all := format('ALTER TABLE %s ADD CONSTRAINT %I %s', r.qname, r.conname,
                            CASE WHEN r.from_ours THEN replace(r.def, ' NOT VALID', '')
                                 ELSE r.def END)
                     || ARRAY(SELECT format('COMMENT ON CONSTRAINT %I ON %s IS %L', r.conname,
                                            r.qname, r.comment) WHERE r.comment IS NOT NULL)
                     || after_all;
    END LOOP;
    -- Foreign keys first, then the views (already ordered shallowest first).
    after_all := ARRAY(SELECT s FROM unnest(after_all) WITH ORDINALITY AS u(s, o)
                        ORDER BY (s LIKE 'ALTER TABLE %' OR s LIKE 'COMMENT ON CONSTRAINT %')
                                 DESC, o);

    FOR i IN 1 .. array_length(names, 1) LOOP
        tbl := names[i];
        rel := oids[i];
        tmp := tbl || '_partitioning';
        -- Constraints that own an index (primary key, unique, exclusion), then checks: their
        -- definitions keep NOT VALID, so rows the old table was never checked for still copy.
        per_table := per_table || ARRAY(
            SELECT format('ALTER TABLE public.%I ADD CONSTRAINT %I %s', tbl, con.conname,
                          pg_get_constraintdef(con.oid))
              FROM pg_constraint con
             WHERE con.conrelid = rel AND con.contype IN ('p', 'u', 'x', 'c')
             ORDER BY con.contype = 'c', con.conname);
        -- Other indexes, under their own names.
        per_table := per_table || ARRAY(
            SELECT pg_get_indexdef(ix.indexrelid) FROM pg_index ix
              JOIN pg_class ic ON ic.oid = ix.indexrelid
             WHERE ix.indrelid = rel
               AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = ix.indexrelid
                                                                 AND con.conrelid = rel)
             ORDER BY ic.relname);
        -- Comments on constraints and indexes.
        per_table := per_table || ARRAY(
            SELECT format('COMMENT ON CONSTRAINT %I ON public.%I IS %L', con.conname, tbl,
                          obj_description(con.oid, 'pg_constraint'))
              FROM pg_constraint con
             WHERE con.conrelid = rel AND con.contype IN ('p', 'u', 'x', 'c')
               AND obj_description(con.oid, 'pg_constraint') IS NOT NULL)
          || ARRAY(
            SELECT format('COMMENT ON INDEX public.%I IS %L', ic.relname,
                          obj_description(ic.oid, 'pg_class'))
              FROM pg_index ix JOIN pg_class ic ON ic.oid = ix.indexrelid
             WHERE ix.indrelid = rel AND obj_description(ic.oid, 'pg_class') IS NOT NULL);
        -- Triggers (not the internal ones of foreign keys), created after the copy, so copied
        -- rows are neither stamped nor queued again; then their enabled state.
        per_table := per_table || ARRAY(
            SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
             WHERE t.tgrelid = rel AND NOT t.tgisinternal ORDER BY t.tgname)
          || ARRAY(
            SELECT format('ALTER TABLE public.%I %s TRIGGER %I', tbl,
                          CASE t.tgenabled WHEN 'D' THEN 'DISABLE' WHEN 'R' THEN 'ENABLE REPLICA'
                                           ELSE 'ENABLE ALWAYS' END, t.tgname)
              FROM pg_trigger t
             WHERE t.tgrelid = rel AND NOT t.tgisinternal AND t.tgenabled <> 'O')
          || ARRAY(
            SELECT format('COMMENT ON TRIGGER %I ON public.%I IS %L', t.tgname, tbl,
                          obj_description(t.oid, 'pg_trigger'))
              FROM pg_trigger t
             WHERE t.tgrelid = rel AND NOT t.tgisinternal
               AND obj_description(t.oid, 'pg_trigger') IS NOT NULL);
        -- Owner (of the parent and of every partition), grants on the table and on columns,
        -- the table's comment, storage options (on the partitions: they hold the rows).
        SELECT c.* INTO r FROM pg_class c WHERE c.oid = rel;
        per_table := per_table
            || format('ALTER TABLE public.%I OWNER TO %I', tbl, pg_get_userbyid(r.relowner))
            || ARRAY(SELECT pg_temp.revoc_partition_grant(a.grantee, a.privilege_type, a.is_grantable,
                                   r.relowner, format('public.%I', tbl), NULL)
                       FROM aclexplode(r.relacl) a)
            || ARRAY(SELECT pg_temp.revoc_partition_grant(a.grantee, a.privilege_type, a.is_grantable,
                                   r.relowner, format('public.%I', tbl), c.attname)
                       FROM pg_attribute c CROSS JOIN aclexplode(c.attacl) a
                      WHERE c.attrelid = rel AND c.attacl IS NOT NULL AND NOT c.attisdropped)
            || ARRAY(SELECT format('COMMENT ON TABLE public.%I IS %L', tbl,
                                   obj_description(rel, 'pg_class'))
                      WHERE obj_description(rel, 'pg_class') IS NOT NULL);
        -- Sequences owned by a column would go with the old table: detach, then re-attach.
        FOR r IN SELECT format('%I.%I', sn.nspname, s.relname) AS seq, a.attname
                   FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                   JOIN pg_namespace sn ON sn.oid = s.relnamespace
                   JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = d.refobjsubid
                  WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                    AND d.refobjid = rel AND d.deptype = 'a' LOOP
            before_drop := before_drop || format('ALTER SEQUENCE %s OWNED BY NONE', r.seq);
            per_table := per_table || format('ALTER SEQUENCE %s OWNED BY public.%I.%I', r.seq,
                                             tbl, r.attname);
        END LOOP;

        -- The new table: the old one's columns, defaults, NOT NULLs, storage and comments;
        -- constraints and indexes follow after the copy (above), under their old names.
        EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING ALL EXCLUDING INDEXES '
                       'EXCLUDING CONSTRAINTS EXCLUDING STATISTICS) '
                       'PARTITION BY HASH (issuer_id, serial)', tmp, tbl);
        FOR p IN 0 .. partitions - 1 LOOP
            stmt := format('%s_p%s', tbl, lpad(p::text, length((partitions - 1)::text), '0'));
            EXECUTE format('CREATE TABLE public.%I PARTITION OF public.%I '
                           'FOR VALUES WITH (MODULUS %s, REMAINDER %s)', stmt, tmp, partitions, p);
            SELECT c.* INTO r FROM pg_class c WHERE c.oid = rel;
            per_table := per_table
                || format('ALTER TABLE public.%I OWNER TO %I', stmt, pg_get_userbyid(r.relowner))
                || ARRAY(SELECT format('ALTER TABLE public.%I SET (%s)', stmt,
                                       array_to_string(r.reloptions, ', '))
                          WHERE r.reloptions IS NOT NULL);
        END LOOP;
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
          FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
        EXECUTE format('INSERT INTO public.%I (%s) SELECT %s FROM public.%I', tmp, cols, cols,
                       tbl);
        GET DIAGNOSTICS copied = ROW_COUNT;
        report := report || format('%s: %s rows into %s partitions', tbl, copied, partitions);
        -- Swapped in below, once every table is copied.
        per_table := format('ALTER TABLE public.%I RENAME TO %I', tmp, tbl) || per_table;
        before_drop := before_drop || format('-- drop %s', tbl);
    END LOOP;

    FOREACH stmt IN ARRAY array_remove(before_drop, NULL) LOOP
        IF stmt LIKE '-- drop %' THEN
            EXECUTE format('DROP TABLE public.%I', substr(stmt, 9));
        ELSE
            EXECUTE stmt;
        END IF;
    END LOOP;
    FOREACH stmt IN ARRAY array_remove(per_table || after_all, NULL) LOOP
        EXECUTE stmt;
    END LOOP;
    RETURN report;
END $fn$;

-- name: partition_run
SELECT pg_temp.revoc_partition($1);

-- name: partition_state
-- How the per-certificate tables are laid out: for each, whether it is hash-partitioned and into
-- how many partitions (0: a plain table; NULL: missing).
SELECT n AS name,
       CASE WHEN c.oid IS NULL THEN NULL
            WHEN c.relkind = 'p' THEN (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid)
            ELSE 0 END::integer AS partitions
  FROM unnest(ARRAY['certificates', 'ocsp_responses', 'ocsp_pending']) WITH ORDINALITY AS u(n, o)
  LEFT JOIN pg_class c ON c.oid = to_regclass(format('public.%I', n))
 ORDER BY o;

-- name: partition_analyze
-- Statistics for the new partitions and their parents at once, so the first plans after the
-- conversion are made from the data, not from defaults (autovacuum would get there later).
ANALYZE certificates, ocsp_responses, ocsp_pending;
