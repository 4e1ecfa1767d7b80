//! Reading the write model as the database holds it, for the tests that
//! compare it with the read model: every batch of a product, each loaded
//! whole by its reference (a load reads only what a decision needs).

use arch_events::EventReleaser;
use example_app::adapters::database::Database;
use example_app::domain::model::Batch;

/// Every batch of the product `sku`, with all its lines, in the order they
/// were added; none when the product does not exist.
pub async fn batches_of(database: &Database, sku: &str) -> Vec<Batch> {
    let references: Vec<String> = {
        let mut uow = database.unit_of_work(EventReleaser::new());
        match uow.products().get(sku).await.expect("read") {
            Some(product) => product
                .batches
                .iter()
                .map(|b| b.reference.clone())
                .collect(),
            None => Vec::new(),
        }
    };
    let mut batches = Vec::with_capacity(references.len());
    for reference in references {
        let mut uow = database.unit_of_work(EventReleaser::new());
        let product = uow
            .products()
            .get_with_batch_lines(&reference)
            .await
            .expect("read")
            .expect("exists");
        let batch = product.batch(&reference).expect("its batch").clone();
        assert!(batch.all_loaded(), "{reference} loaded whole");
        batches.push(batch);
    }
    batches
}
