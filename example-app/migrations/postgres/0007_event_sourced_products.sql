-- How this database keeps its products, chosen when it is created
-- (`--storage`): `state`, as rows of the tables above, or `events`, as a
-- stream per product in arch-events-sqlx's event store. A database that
-- holds products already keeps them as rows.
CREATE TABLE service_storage (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    storage TEXT NOT NULL CHECK (storage IN ('state', 'events'))
);
INSERT INTO service_storage (id, storage)
SELECT 1, 'state' WHERE EXISTS (SELECT 1 FROM products);

-- With `--storage events`: the product of each batch reference, written in
-- the transaction that appends the batch's `BatchAdded` (an inline
-- projection). A reference names one batch of one product: a second one
-- is refused, as a conflict the command's retry then reports.
CREATE TABLE batch_products (
    reference TEXT PRIMARY KEY,
    sku TEXT NOT NULL
);
