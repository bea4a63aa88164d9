-- CRL publisher state. PostgreSQL 15 compatible.

-- The issuingDistributionPoint URLs a CRL was built with. A delta CRL must carry exactly the IDP
-- of its base (CONFORMANCE DELTA-5), and the URLs of a shard may gain members between two full
-- CRLs (a certificate with a new CDN host name), so the delta copies them from its base instead
-- of recomputing them. NULL: no IDP (the issuer-wide CRL).
ALTER TABLE crls ADD COLUMN idp_urls text[];
