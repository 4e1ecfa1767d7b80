//! Starting the real `example-app` binary and talking to it over HTTP: shared
//! by the end-to-end tests.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use example_app::adapters::database::Database;
use example_app::adapters::storage::Storage;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;

/// A running `example-app`, killed when dropped.
pub struct Server {
    child: Child,
    base: String,
    addr: SocketAddr,
}

/// The admin token of the servers that tests start with
/// `("ADMIN_TOKEN", ADMIN_TOKEN)`: see [`admin`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A port free now that this process never handed out before: two servers
/// started at once by one test binary never get the same one (the kernel
/// may give a port just released to the next `bind`, before the first
/// server bound it), so a test never talks to another test's server.
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Held until the loop ends: each port probed is a different one.
    let mut probes = Vec::new();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
        probes.push(listener);
    }
}

impl Server {
    /// Starts `binary` on a free port over the SQLite file `database`, and
    /// waits until it listens.
    pub fn start(binary: &str, database: &Path) -> Server {
        Server::start_with(binary, &format!("sqlite://{}", database.display()), &[])
    }

    /// Starts `binary` on a free port over the database at `database_url`
    /// (SQLite or PostgreSQL), with more environment variables.
    pub fn start_with(binary: &str, database_url: &str, env: &[(&str, &str)]) -> Server {
        Server::spawn(binary, database_url, env, Stdio::null(), Stdio::inherit())
    }

    /// [`start_with`](Self::start_with), its log (at `info`, unless `env`
    /// sets `RUST_LOG`; the service logs to standard output) and its
    /// standard error written to the file `log`.
    pub fn start_logging(
        binary: &str,
        database_url: &str,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Server {
        let file = std::fs::File::create(log).expect("the log file");
        let mut env = env.to_vec();
        if !env.iter().any(|(name, _)| *name == "RUST_LOG") {
            env.push(("RUST_LOG", "info"));
        }
        let errors = file.try_clone().expect("the log file, again");
        Server::spawn(
            binary,
            database_url,
            &env,
            Stdio::from(file),
            Stdio::from(errors),
        )
    }

    fn spawn(
        binary: &str,
        database_url: &str,
        env: &[(&str, &str)],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Server {
        let port = free_port();
        let child = Command::new(binary)
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(database_url)
            .env("RUST_LOG", "warn")
            // The broker only when a test asks for it, whatever the
            // environment the tests run in.
            .env_remove("REDIS_URL")
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("the binary starts");
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited before it listened ({status}): see its error above");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Where it listens, for raw TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the process at once (SIGKILL): no shutdown, no flush.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGINT (Ctrl-C) and waits for the process to exit.
    pub fn interrupt(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not shut down");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh SQLite file, in a directory kept as long as the test runs.
pub struct FreshSqlite {
    /// Its URL.
    pub url: String,
    _dir: TempDir,
}

/// A fresh SQLite database, for the contract macros.
pub async fn fresh_sqlite() -> FreshSqlite {
    let (dir, path) = database();
    FreshSqlite {
        url: format!("sqlite://{}", path.display()),
        _dir: dir,
    }
}

/// A new SQLite file that keeps its products as streams of events (the
/// service started on it follows it, as with `--storage events`).
pub async fn fresh_sqlite_events() -> FreshSqlite {
    let fresh = fresh_sqlite().await;
    let settings = arch_events_sqlx::Settings::default();
    Database::open(&fresh.url, settings, Some(Storage::Events))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .close()
        .await;
    fresh
}

pub fn database() -> (TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("allocation.db");
    (dir, path)
}

pub async fn post(server: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

pub async fn post_raw(
    server: &Server,
    path: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

pub async fn get(server: &Server, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(server.url(path)).await.expect("request sent");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

/// A request to an operations route with [`ADMIN_TOKEN`]; the body of a
/// 204 is `null`.
pub async fn admin(server: &Server, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .request(method, server.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    let body = response.bytes().await.expect("a body");
    if body.is_empty() {
        return (status, Value::Null);
    }
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

pub async fn add_batch(server: &Server, reference: &str, sku: &str, qty: u32, eta: Option<&str>) {
    let (status, body) = post(
        server,
        "/add_batch",
        json!({"ref": reference, "sku": sku, "qty": qty, "eta": eta}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

pub fn message(body: &Value) -> &str {
    body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"))
}

/// The example app's binary, built first when needed: cargo does not hold
/// its build lock while tests run. It builds what `cargo test --workspace`
/// builds (the same features, so the same artifacts): after that command's
/// own build, this is a no-op.
pub fn example_app_binary() -> String {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(
        status.success(),
        "cannot build the example app (try `cargo build -p example-app`)"
    );
    profile_dir
        .join(format!("example-app{}", std::env::consts::EXE_SUFFIX))
        .display()
        .to_string()
}

/// Runs `statement` on the server's database from outside (SQLite or
/// PostgreSQL, by the URL): the fault injection of the tests.
pub async fn on_database(database_url: &str, statement: &str) {
    if database_url.starts_with("sqlite:") {
        run_on::<sqlx::SqliteConnection>(database_url, statement).await;
    } else {
        run_on::<sqlx::PgConnection>(database_url, statement).await;
    }
}

/// Runs `statement` on a connection of its own, of the kind `C`.
async fn run_on<C>(database_url: &str, statement: &str)
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    let mut connection = C::connect(database_url).await.expect("opens");
    sqlx::raw_sql(statement)
        .execute(&mut connection)
        .await
        .expect("runs");
    connection.close().await.expect("closes");
}
