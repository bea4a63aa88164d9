-- Bookkeeping for revoc.db.upgrade: the migration ledger and its lock.
-- Each block runs from its "-- name:" line to the next one.

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: migration_lock
-- Session-level advisory lock serializing concurrent upgrades. The key is the
-- ASCII of 'revoc' (0x7265766f63); it is per database, like the migrations.
SELECT pg_advisory_lock(491328532323);

-- name: migration_unlock
SELECT pg_advisory_unlock(491328532323);

-- name: schema_versions
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version) VALUES ($1);

-- name: schema_table_exists
SELECT to_regclass('schema_migrations') IS NOT NULL;
