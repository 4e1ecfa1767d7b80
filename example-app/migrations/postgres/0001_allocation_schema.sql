-- The write model: products (the aggregate), their batches and allocations.
CREATE TABLE products (
    sku            TEXT PRIMARY KEY,
    version_number BIGINT NOT NULL
);

CREATE TABLE batches (
    -- Insertion order: a product's batches are loaded in the order added.
    position           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    reference          TEXT PRIMARY KEY,
    sku                TEXT NOT NULL REFERENCES products (sku),
    purchased_quantity BIGINT NOT NULL,
    eta                DATE NULL
);
CREATE INDEX batches_by_sku ON batches (sku, position);

CREATE TABLE allocations (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batchref TEXT NOT NULL REFERENCES batches (reference),
    orderid  TEXT NOT NULL,
    sku      TEXT NOT NULL,
    qty      BIGINT NOT NULL
);
CREATE INDEX allocations_by_sku ON allocations (sku, id);

-- The read model (CQRS): kept by event handlers, read by the query handler.
CREATE TABLE allocations_view (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    orderid  TEXT NOT NULL,
    sku      TEXT NOT NULL,
    batchref TEXT NOT NULL
);
CREATE INDEX allocations_view_by_order ON allocations_view (orderid, id);
