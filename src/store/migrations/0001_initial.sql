-- flowgate shared store, schema version 1. Applied once, in one transaction, by the first
-- instance (or `flowgate migrate`) that finds the database older.

-- Client name -> SIP ID, from its first accepted request: a client's identity never changes.
CREATE TABLE clients (
    name text PRIMARY KEY,
    sip_id text NOT NULL
);

-- Accepted requests. `record` is the request as the API shows it (JSON); the columns beside it
-- are what the store looks things up by.
CREATE TABLE requests (
    request_id text PRIMARY KEY,
    client text NOT NULL,
    job_id text NOT NULL,
    received_ms bigint NOT NULL,
    mpan text NOT NULL,
    sip_id text NOT NULL,
    date_of_action text NOT NULL,
    body_kept boolean NOT NULL,
    record text NOT NULL
);
CREATE INDEX requests_by_mpan ON requests (mpan) WHERE mpan <> '';
CREATE INDEX requests_bodies_by_age ON requests (received_ms) WHERE body_kept;

-- The idempotency claim: one request per client and job id, on every instance.
CREATE TABLE jobs (
    client text NOT NULL,
    job_id text NOT NULL,
    request_id text NOT NULL REFERENCES requests DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (client, job_id)
);

-- Request bodies in parts of at most 1 MiB (photos are base64: stored as they are, not compressed).
CREATE TABLE bodies (
    request_id text NOT NULL REFERENCES requests ON DELETE CASCADE,
    part integer NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (request_id, part)
);
ALTER TABLE bodies ALTER COLUMN bytes SET STORAGE EXTERNAL;

-- The outbox, shared: any live instance delivers. A file is handed to one instance at a time
-- (lease_owner until lease_until); `ready` holds a request's flows until its job archive is
-- delivered; `pending` is cleared once the file is settled.
CREATE TABLE outbox (
    object text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    request_id text NOT NULL REFERENCES requests,
    kind text NOT NULL,
    pending boolean NOT NULL,
    ready boolean NOT NULL,
    lease_owner text,
    lease_until timestamptz,
    file text NOT NULL
);
CREATE INDEX outbox_due ON outbox (seq) WHERE pending AND ready;
CREATE INDEX outbox_by_request ON outbox (request_id);

-- File ids: one sequence for every instance.
CREATE SEQUENCE file_ids;

-- Incoming flows matched to requests, and what became of each inbound file (once per name and
-- content).
CREATE TABLE incoming (
    request_id text NOT NULL,
    file text NOT NULL,
    summary text NOT NULL,
    PRIMARY KEY (request_id, file)
);
CREATE TABLE inbound_seen (
    seen_key text PRIMARY KEY,
    outcome text NOT NULL
);

CREATE TABLE meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);

-- Rate limits across instances: the GCRA theoretical arrival time of each key, in microseconds
-- of the database's clock. Unlogged: rate state need not survive a database crash, and writing
-- it costs no WAL flush.
CREATE UNLOGGED TABLE rate_limits (
    key_id text PRIMARY KEY,
    tat_us bigint NOT NULL
);
