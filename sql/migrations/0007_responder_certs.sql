-- Scale (issue 15 point 1): a delegated responder's certificate stored once, not in every
-- pre-signed response. PostgreSQL 15 compatible.
--
-- A response signed by a delegated responder carries its certificate in the BasicOCSPResponse's
-- `certs` field (OCSP-SIGNER-8): about 780 of a response's 1,160 octets, the same in every row of
-- an issuer. The field lies outside tbsResponseData, so the signature does not cover it.
--
-- responder_certs holds each distinct `certs` element (`[0] EXPLICIT SEQUENCE OF Certificate`,
-- tag and length included) once, under the first 8 octets of its SHA-256 as a signed bigint (any
-- presigner computes the id alone; a different element under a taken id is refused). A row of
-- ocsp_responses with certs_id set holds in `der` the response without the field (a stem, itself
-- a well-formed OCSPResponse); the responder splices the element back in
-- (revoc/der/ocsp_certs.py), byte for byte what was signed. certs_id NULL: `der` is the whole
-- response, as every row written before this migration is, and as a CA-signed one is anyway.
-- Those rows stay servable as they are and shrink when the presigner next re-signs them (at the
-- latest `refresh_after` later); nothing is rewritten here, so the upgrade is instant on a table
-- of any size.
--
-- No foreign key from ocsp_responses: it would cost an index probe per stored row. Rows of
-- responder_certs are never deleted (no role may), and a responder that finds no element for an
-- id treats the response as unservable (tryLater or a live signature, never a wrong answer).

CREATE TABLE responder_certs (
    id          bigint PRIMARY KEY,
    certs_block bytea NOT NULL CHECK (octet_length(certs_block) >= 4),
    created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE ocsp_responses ADD COLUMN certs_id bigint;

-- The same splice in SQL, for operators and checks (psql, exports): the served response.
CREATE FUNCTION revoc_der_length(n integer) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN n < 128 THEN substring(int4send(n) FROM 4)
                WHEN n < 256 THEN '\x81'::bytea || substring(int4send(n) FROM 4)
                WHEN n < 65536 THEN '\x82'::bytea || substring(int4send(n) FROM 3)
                WHEN n < 16777216 THEN '\x83'::bytea || substring(int4send(n) FROM 2)
                ELSE '\x84'::bytea || int4send(n) END
$$;

CREATE FUNCTION revoc_ocsp_der(stem bytea, certs_block bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    pos integer := 0;
    n integer;
    body bytea;
BEGIN
    IF certs_block IS NULL THEN
        RETURN stem;
    END IF;
    -- Skip to the BasicOCSPResponse's content: the OCSPResponse header, responseStatus (a whole
    -- element), the [0] and ResponseBytes headers, responseType (a whole element), the OCTET
    -- STRING and BasicOCSPResponse headers.
    FOR step IN 1..7 LOOP
        n := get_byte(stem, pos + 1);
        IF step IN (2, 5) THEN
            pos := pos + 2 + n;
        ELSE
            pos := pos + 2 + CASE WHEN n < 128 THEN 0 ELSE n - 128 END;
        END IF;
    END LOOP;
    body := substring(stem FROM pos + 1) || certs_block;
    body := '\x30'::bytea || revoc_der_length(length(body)) || body;
    body := '\x06092b0601050507300101'::bytea || '\x04'::bytea || revoc_der_length(length(body))
            || body;
    body := '\x30'::bytea || revoc_der_length(length(body)) || body;
    body := '\x0a0100'::bytea || '\xa0'::bytea || revoc_der_length(length(body)) || body;
    RETURN '\x30'::bytea || revoc_der_length(length(body)) || body;
END $$;

-- What a responder serves for each stored row (a row naming a lost element: der NULL).
CREATE VIEW ocsp_responses_served AS
SELECT r.issuer_id, r.serial, r.hash_alg,
       CASE WHEN r.certs_id IS NULL THEN r.der ELSE revoc_ocsp_der(r.der, c.certs_block) END AS der,
       r.produced_at, r.this_update, r.next_update, r.cert_change_seq, r.certs_id
  FROM ocsp_responses r
  LEFT JOIN responder_certs c ON c.id = r.certs_id;

DO $$
DECLARE
    grants text[][] := ARRAY[
        ['revoc_responder', 'SELECT'],
        ['revoc_presigner', 'SELECT, INSERT'],
        ['revoc_admin', 'SELECT']
    ];
    item text[];
BEGIN
    FOREACH item SLICE 1 IN ARRAY grants LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = item[1]) THEN
            EXECUTE format('GRANT %s ON TABLE responder_certs TO %I', item[2], item[1]);
            EXECUTE format('GRANT SELECT ON TABLE ocsp_responses_served TO %I', item[1]);
        END IF;
    END LOOP;
END $$;
