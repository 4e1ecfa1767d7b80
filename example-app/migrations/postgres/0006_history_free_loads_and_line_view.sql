-- Stop every instance of the service before this migration runs: an older
-- one neither keeps batches.allocated_quantity nor writes this view. The
-- service took identifiers of any length before; PostgreSQL's indexes
-- refuse a key over about 2.7 KB, so a database holding an order id or sku
-- that long makes this migration fail (and the service not start) until
-- those rows are shortened or removed.
--
-- Loads read only what a decision needs: a batch keeps the units it has
-- allocated (kept by every save), and a line is found by its order, a
-- batch's lines by the batch.
ALTER TABLE batches ADD COLUMN allocated_quantity BIGINT NOT NULL DEFAULT 0;
UPDATE batches SET allocated_quantity =
    (SELECT COALESCE(SUM(qty), 0) FROM allocations WHERE allocations.batchref = batches.reference);
CREATE INDEX allocations_by_line ON allocations (sku, orderid, qty);
CREATE INDEX allocations_by_batch ON allocations (batchref, id);

-- The view keeps one row per line (order, product, quantity) with the
-- product version of its latest change: events applied in any order, or
-- twice, leave the write model's rows. Rebuilt from the write model.
DROP TABLE allocations_view;
CREATE TABLE allocations_view (
    -- First allocation first.
    id       BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    orderid  TEXT NOT NULL,
    sku      TEXT NOT NULL,
    qty      BIGINT NOT NULL,
    -- NULL: the line was deallocated (kept, so that an older event about
    -- it arriving late changes nothing).
    batchref TEXT NULL,
    version  BIGINT NOT NULL,
    PRIMARY KEY (orderid, sku, qty)
);
CREATE INDEX allocations_view_by_order ON allocations_view (orderid, id);
INSERT INTO allocations_view (orderid, sku, qty, batchref, version)
    SELECT a.orderid, a.sku, a.qty, a.batchref, p.version_number
    FROM allocations a JOIN products p ON p.sku = a.sku
    ORDER BY a.id
    ON CONFLICT DO NOTHING;
