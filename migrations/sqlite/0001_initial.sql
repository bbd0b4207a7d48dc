-- tokengate schema, SQLite. Times are Unix seconds. Token secrets are never
-- stored: only their SHA-256 (`hash`) and a short display prefix.

CREATE TABLE tenants (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    created_at  INTEGER NOT NULL
);

CREATE TABLE accounts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id          INTEGER NOT NULL REFERENCES tenants(id),
    email              TEXT    NOT NULL,
    name               TEXT    NOT NULL,
    customer_id        TEXT    NOT NULL UNIQUE,
    external_id        TEXT,
    parent_account_id  INTEGER REFERENCES accounts(id),
    status             TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    created_at         INTEGER NOT NULL,
    UNIQUE (tenant_id, email)
);
CREATE INDEX accounts_parent ON accounts(parent_account_id);

CREATE TABLE workspaces (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id  INTEGER NOT NULL REFERENCES accounts(id),
    name        TEXT    NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    created_at  INTEGER NOT NULL
);
CREATE INDEX workspaces_account ON workspaces(account_id);

CREATE TABLE tokens (
    id              TEXT    PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('root', 'tenant_admin', 'session', 'api')),
    tenant_id       INTEGER REFERENCES tenants(id),
    account_id      INTEGER REFERENCES accounts(id),
    workspace_id    INTEGER REFERENCES workspaces(id),
    name            TEXT    NOT NULL,
    abilities       TEXT    NOT NULL,           -- JSON array of strings
    display_prefix  TEXT    NOT NULL,
    hash            BLOB    NOT NULL UNIQUE,    -- SHA-256 of the whole token
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    revoked_at      INTEGER,
    last_used_at    INTEGER,
    created_by      TEXT
);
CREATE INDEX tokens_account ON tokens(account_id);
CREATE INDEX tokens_tenant ON tokens(tenant_id);

CREATE TABLE audit_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    at               INTEGER NOT NULL,
    action           TEXT    NOT NULL,
    actor_token_id   TEXT,
    tenant_id        INTEGER,
    target_token_id  TEXT,
    outcome          TEXT    NOT NULL,
    detail           TEXT
);
CREATE INDEX audit_tenant ON audit_events(tenant_id, id);
