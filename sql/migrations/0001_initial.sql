-- revoc schema v1. Keep it PostgreSQL 15 compatible (CI runs 15, the embedded server 18).

CREATE TABLE issuers (
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    cert_der        bytea NOT NULL,
    subject_der     bytea NOT NULL,
    -- SubjectKeyIdentifier (or SHA-1 of the key when the CA has none): CRL AKI keyIdentifier.
    key_id          bytea NOT NULL,
    -- CertID lookup keys (OCSP-REQ-3): hash of the subject DER and of the subjectPublicKey bits.
    name_sha1       bytea NOT NULL,
    key_sha1        bytea NOT NULL,
    name_sha256     bytea NOT NULL,
    key_sha256      bytea NOT NULL,
    name_sha384     bytea NOT NULL,
    key_sha384      bytea NOT NULL,
    name_sha512     bytea NOT NULL,
    key_sha512      bytea NOT NULL,
    -- Paths only: private keys never live in the database.
    key_path        text,
    ocsp_cert_der   bytea,
    ocsp_key_path   text,
    crl_shards      integer NOT NULL DEFAULT 0 CHECK (crl_shards >= 0 AND crl_shards <= 10000),
    profile         text NOT NULL DEFAULT 'private' CHECK (profile IN ('br', 'private')),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE cert_change_seq AS bigint;

CREATE TABLE certificates (
    issuer_id       integer NOT NULL REFERENCES issuers (id),
    -- Content octets of the serial's DER INTEGER, minimal form (what the CRL entry carries).
    serial          bytea NOT NULL,
    not_after       timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'good' CHECK (status IN ('good', 'revoked')),
    revoked_at      timestamptz,
    reason          smallint CHECK (reason IS NULL OR reason IN (0, 1, 2, 3, 4, 5, 6, 9, 10)),
    invalidity_date timestamptz,
    -- True once a certificateHold was released: the next delta CRL says removeFromCRL.
    hold_released   boolean NOT NULL DEFAULT false,
    change_seq      bigint NOT NULL DEFAULT nextval('cert_change_seq'),
    -- Pre-encoded DER of this certificate's revokedCertificates entry (NULL while good).
    crl_entry       bytea,
    -- Distribution point URL as written in the certificate, and the shard it names (NULL: none).
    crl_url         text,
    shard           integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer_id, serial),
    CHECK ((status = 'good') = (revoked_at IS NULL)),
    CHECK ((status = 'good') = (crl_entry IS NULL))
);

-- Full CRLs stream revoked rows of one scope; deltas read rows changed after a sequence number.
CREATE INDEX certificates_revoked ON certificates (issuer_id, shard, serial) WHERE status = 'revoked';
CREATE INDEX certificates_changes ON certificates (issuer_id, change_seq);

CREATE TABLE ocsp_responses (
    issuer_id       integer NOT NULL,
    serial          bytea NOT NULL,
    hash_alg        smallint NOT NULL CHECK (hash_alg BETWEEN 1 AND 4),
    der             bytea NOT NULL,
    produced_at     timestamptz NOT NULL,
    this_update     timestamptz NOT NULL,
    next_update     timestamptz NOT NULL,
    -- change_seq of the certificate row this response was signed from.
    cert_change_seq bigint NOT NULL,
    PRIMARY KEY (issuer_id, serial, hash_alg),
    FOREIGN KEY (issuer_id, serial) REFERENCES certificates (issuer_id, serial) ON DELETE CASCADE
);

CREATE INDEX ocsp_responses_due ON ocsp_responses (next_update);

CREATE TABLE crls (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id       integer NOT NULL REFERENCES issuers (id),
    -- -1: the issuer-wide CRL; 0..K-1: a shard.
    shard           integer NOT NULL DEFAULT -1,
    kind            text NOT NULL CHECK (kind IN ('full', 'delta')),
    number          numeric(49, 0) NOT NULL CHECK (number >= 0),
    base_number     numeric(49, 0),
    this_update     timestamptz NOT NULL,
    next_update     timestamptz NOT NULL,
    -- Highest certificates.change_seq this CRL reflects: the next delta starts above it.
    max_change_seq  bigint NOT NULL,
    entries         integer NOT NULL,
    der             bytea NOT NULL,
    sha256          bytea NOT NULL,
    url             text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer_id, shard, kind, number),
    CHECK ((kind = 'delta') = (base_number IS NOT NULL))
);

CREATE INDEX crls_latest ON crls (issuer_id, shard, kind, number DESC);
