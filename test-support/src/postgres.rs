//! A fresh PostgreSQL database per test, on the server at `POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`), dropped when the
//! test ends.

use sqlx::{Connection, PgConnection};

/// The server's URL (its database is only used to create and drop others).
pub fn postgres_url() -> String {
    std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (server, _database) = url
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("POSTGRES_URL {url:?} names no database"));
    format!("{server}/{name}")
}

/// A connection to the server's own database, to create, drop or switch
/// off others.
pub async fn admin() -> PgConnection {
    let url = postgres_url();
    match PgConnection::connect(&url).await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "PostgreSQL is not reachable at {url}: {error}\n\
             Start one with\n  docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust \
             -e POSTGRES_DB=test postgres:16\n\
             or point POSTGRES_URL at yours (README, 'Tests against real servers')."
        ),
    }
}

/// An empty database, dropped (with its connections) when this is dropped.
pub struct FreshDatabase {
    /// Its URL.
    pub url: String,
    name: String,
}

impl FreshDatabase {
    /// Its name on the server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Refuses new connections and ends the open ones: to its clients, the
    /// database is down. [`revive`](Self::revive) brings it back.
    pub async fn kill(&self) {
        let mut admin = admin().await;
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot switch off {}: {e}", self.name));
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot end the connections to {}: {e}", self.name));
    }

    /// Accepts connections again.
    pub async fn revive(&self) {
        let mut admin = admin().await;
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot switch on {}: {e}", self.name));
    }

    /// Creates a database no other test uses.
    pub async fn create() -> FreshDatabase {
        let name = format!(
            "allocation_test_{}",
            arch_events::MessageId::new().to_string().replace('-', "")
        );
        let mut admin = admin().await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        FreshDatabase {
            url: with_database(&postgres_url(), &name),
            name,
        }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the test's runtime: the database is dropped from
        // a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut admin = admin().await;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop a test database: {error}");
        }
    }
}
