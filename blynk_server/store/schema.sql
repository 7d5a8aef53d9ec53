CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS templates (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS datastreams (
    template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    pin TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    min REAL,
    max REAL,
    default_value TEXT,
    enum_values TEXT,
    history INTEGER NOT NULL DEFAULT 0,
    sync INTEGER NOT NULL DEFAULT 0,
    ds_id INTEGER,
    alias TEXT,
    PRIMARY KEY (template_id, pin)
);
CREATE TABLE IF NOT EXISTS metafields (
    template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    id INTEGER NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    default_value TEXT,
    options TEXT,
    min REAL,
    max REAL,
    PRIMARY KEY (template_id, id)
);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    template_id TEXT NOT NULL REFERENCES templates(id),
    created_at INTEGER NOT NULL,
    last_seen INTEGER,
    info TEXT,
    timezone TEXT
);
CREATE TABLE IF NOT EXISTS pin_values (
    device_id INTEGER NOT NULL,
    pin TEXT NOT NULL,
    value BLOB NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (device_id, pin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS properties (
    device_id INTEGER NOT NULL,
    pin TEXT NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (device_id, pin, name)
);
CREATE TABLE IF NOT EXISTS history (
    device_id INTEGER NOT NULL,
    pin TEXT NOT NULL,
    ts INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_pin ON history (device_id, pin, ts);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER NOT NULL,
    code TEXT NOT NULL,
    description TEXT,
    ts INTEGER NOT NULL,
    resolved_at INTEGER,
    level TEXT NOT NULL DEFAULT 'info'
);
CREATE INDEX IF NOT EXISTS events_by_device ON events (device_id, ts);
CREATE TABLE IF NOT EXISTS device_meta (
    device_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device_id, name)
);
