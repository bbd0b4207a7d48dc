-- tokengate schema, PostgreSQL. Times are Unix seconds (BIGINT), as in the
-- SQLite schema, so both stores pass one test suite. Token secrets are never
-- stored: only their SHA-256 (`hash`) and a short display prefix.

CREATE TABLE tenants (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL,
    status      TEXT   NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE accounts (
    id                 BIGSERIAL PRIMARY KEY,
    tenant_id          BIGINT NOT NULL REFERENCES tenants(id),
    email              TEXT   NOT NULL,
    name               TEXT   NOT NULL,
    customer_id        TEXT   NOT NULL UNIQUE,
    external_id        TEXT,
    parent_account_id  BIGINT REFERENCES accounts(id),
    status             TEXT   NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    created_at         BIGINT NOT NULL,
    UNIQUE (tenant_id, email)
);
CREATE INDEX accounts_parent ON accounts(parent_account_id);

CREATE TABLE workspaces (
    id          BIGSERIAL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts(id),
    name        TEXT   NOT NULL,
    status      TEXT   NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    created_at  BIGINT NOT NULL
);
CREATE INDEX workspaces_account ON workspaces(account_id);

CREATE TABLE tokens (
    id              TEXT   PRIMARY KEY,
    kind            TEXT   NOT NULL CHECK (kind IN ('root', 'tenant_admin', 'session', 'api')),
    tenant_id       BIGINT REFERENCES tenants(id),
    account_id      BIGINT REFERENCES accounts(id),
    workspace_id    BIGINT REFERENCES workspaces(id),
    name            TEXT   NOT NULL,
    abilities       TEXT   NOT NULL,           -- JSON array of strings
    display_prefix  TEXT   NOT NULL,
    hash            BYTEA  NOT NULL UNIQUE,    -- SHA-256 of the whole token
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    revoked_at      BIGINT,
    last_used_at    BIGINT,
    created_by      TEXT
);
CREATE INDEX tokens_account ON tokens(account_id);
CREATE INDEX tokens_tenant ON tokens(tenant_id);

CREATE TABLE audit_events (
    id               BIGSERIAL PRIMARY KEY,
    at               BIGINT NOT NULL,
    action           TEXT   NOT NULL,
    actor_token_id   TEXT,
    tenant_id        BIGINT,
    target_token_id  TEXT,
    outcome          TEXT   NOT NULL,
    detail           TEXT
);
CREATE INDEX audit_tenant ON audit_events(tenant_id, id);
