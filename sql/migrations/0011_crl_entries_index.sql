-- The entries of a full CRL are read from an index alone (issue 13 point 9).
--
-- certificates_revoked (issuer_id, shard, serial) WHERE status = 'revoked' now also carries
-- not_after and crl_entry (INCLUDE: stored in the leaf tuples, not part of the key), so the
-- publisher reads a shard's entries, or an unsharded issuer's, by an index-only scan of one
-- contiguous range in serial order: no heap page is visited while the visibility map says the
-- table's pages are all-visible (after a VACUUM: `revoc cert import` runs one, autovacuum the
-- rest), and no heap page of another shard is read (the shards' rows are interleaved in the
-- heap). At 1M revoked certificates with 49-octet entries the index grows from 83 to about 120
-- MB; the keys, the predicate and so every other use of the index are unchanged.
--
-- Built under the same name, before the old one is dropped, so no query plans without it.
CREATE INDEX certificates_revoked_entries ON certificates (issuer_id, shard, serial)
    INCLUDE (not_after, crl_entry) WHERE status = 'revoked';
DROP INDEX certificates_revoked;
ALTER INDEX certificates_revoked_entries RENAME TO certificates_revoked;

-- Which shards an issuer's certificates carry and which distribution point URLs each shard's
-- certificates name (crl_carried_shards, crl_shard_urls) were two scans of all the issuer's
-- certificates in every publishing round (0.2 s each at 1M certificates on a quiet host);
-- with this index they are a few probes per distinct (shard, URL) pair (a "loose index scan").
-- Small: its keys repeat (one per pair), and B-tree deduplication stores each once.
CREATE INDEX certificates_shard_urls ON certificates (issuer_id, shard, crl_url);
