-- The presigner stops signing, and drops the responses of, certificates that expired more than
-- REVOC_OCSP_KEEP_EXPIRED ago (CONFORMANCE OCSP-RESP-18); this index finds them per issuer
-- without reading the whole table.
CREATE INDEX certificates_expiry ON certificates (issuer_id, not_after);
