-- The write model: products (the aggregate), their batches and allocations.
CREATE TABLE IF NOT EXISTS products (
    sku            TEXT PRIMARY KEY NOT NULL,
    version_number INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS batches (
    reference          TEXT PRIMARY KEY NOT NULL,
    sku                TEXT NOT NULL REFERENCES products (sku),
    purchased_quantity INTEGER NOT NULL,
    eta                TEXT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_sku ON batches (sku);

CREATE TABLE IF NOT EXISTS allocations (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    batchref TEXT NOT NULL REFERENCES batches (reference),
    orderid  TEXT NOT NULL,
    sku      TEXT NOT NULL,
    qty      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS allocations_by_sku ON allocations (sku);

-- The read model (CQRS): kept by event handlers, read by the query handler.
CREATE TABLE IF NOT EXISTS allocations_view (
    orderid  TEXT NOT NULL,
    sku      TEXT NOT NULL,
    batchref TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS allocations_view_by_order ON allocations_view (orderid);
