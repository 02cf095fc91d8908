//! floatlm's integration-test harness (`use testkit::…` in tests/*.rs):
//! real MariaDB (a fresh database per test), real SQLite files, signed
//! licenses, in-process Apps, and real `floatlm serve` processes on port 0,
//! started through one command-line builder, [`Serve`].

// MariaDB servers and Galera clusters of a test's own: crates/mariadb-harness,
// shared with crates/bench's Galera scenario.
pub use floatlm_mariadb_harness::{galera, own_mariadb};
pub mod mysql_wire;
pub mod nginx;
pub mod promise;
pub mod raw;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use floatlm::app::App;
use floatlm::config::Layers;
use floatlm::crypto::keyring::{Keyring, MasterKey};
pub use floatlm::crypto::SealedColumn;
use floatlm::domain::license::{parse_definition, LicenseDef, VendorSigningKey};
use floatlm::storage::mysql::MySqlStorage;
use floatlm::storage::sqlite::SqliteStorage;
use floatlm::storage::{LicenseRecord, Storage};

/// Server URL without a database; override with FLOATLM_TEST_MYSQL_URL.
pub fn mysql_server_url() -> String {
    std::env::var("FLOATLM_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
}

const HOW_TO_START: &str = "MariaDB must be reachable for this test. Start it with \
    `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd` (or `apt-get install -y mariadb-server`), \
    or run scripts/test.sh, which starts it; set FLOATLM_TEST_MYSQL_URL=mysql://USER:PASS@HOST:PORT to use another server";

/// A database of its own on the test MariaDB server, dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A database of its own for a test on `kind`: one on MariaDB, none on
    /// SQLite (whose file lives in the test's data dir).
    pub async fn for_kind(kind: Kind) -> Option<TestDb> {
        match kind {
            Kind::Mysql => Some(TestDb::new().await),
            Kind::Sqlite => None,
        }
    }

    pub async fn new() -> TestDb {
        use sqlx::Connection;
        let server = mysql_server_url();
        let mut conn = match tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::MySqlConnection::connect(&server),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("cannot connect to MariaDB at {server}: {e}. {HOW_TO_START}"),
            Err(_) => panic!("timed out connecting to MariaDB at {server}. {HOW_TO_START}"),
        };
        let name = format!("floatlm_t_{}", floatlm::crypto::random_hex(6));
        sqlx::query(&format!("CREATE DATABASE `{name}`"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        TestDb {
            url: format!("{server}/{name}"),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = mysql_server_url();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a small one of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::MySqlConnection::connect(&server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .execute(&mut c)
                        .await;
                    let _ = c.close().await;
                }
            })
        })
        .join();
    }
}

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Mysql,
}

/// A migrated storage plus whatever keeps it alive.
pub struct TestStore {
    pub storage: Arc<dyn Storage>,
    pub kind: Kind,
    pub db: Option<TestDb>,
    pub dir: tempfile::TempDir,
}

/// The storage of the database at `url` (either backend), opened the way
/// an instance opens it, without migrating it.
pub async fn open_storage(url: &str) -> Arc<dyn Storage> {
    let mut l = Layers::default();
    l.flag("database_url", Some(url));
    l.flag("master_key", Some(MASTER_KEY_1));
    let cfg = l.build().unwrap();
    floatlm::app::open_storage(&cfg).await.unwrap()
}

impl TestStore {
    pub async fn new(kind: Kind) -> TestStore {
        Self::with_pool(kind, 16).await
    }

    pub async fn with_pool(kind: Kind, pool: u32) -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let (storage, db): (Arc<dyn Storage>, Option<TestDb>) = match kind {
            Kind::Sqlite => (
                Arc::new(SqliteStorage::open(&dir.path().join("t.db")).await.unwrap()),
                None,
            ),
            Kind::Mysql => {
                let db = TestDb::new().await;
                (
                    Arc::new(MySqlStorage::connect(&db.url, pool).await.unwrap()),
                    Some(db),
                )
            }
        };
        storage.migrate().await.unwrap();
        TestStore {
            storage,
            kind,
            db,
            dir,
        }
    }

    /// A second "instance" on the same MariaDB database: a pool of its own.
    pub async fn second_pool(&self) -> Arc<dyn Storage> {
        let url = &self.db.as_ref().expect("a second pool needs MariaDB").url;
        Arc::new(MySqlStorage::connect(url, 8).await.unwrap())
    }
}

/// A grant request of `feature` for `holder` with request id `rid`, held
/// and promised for `ttl`, as instance `i-test` makes it.
pub fn grant_request(
    feature: &str,
    holder: &str,
    rid: &str,
    ttl: Duration,
) -> floatlm::domain::seats::GrantRequest {
    floatlm::domain::seats::GrantRequest {
        feature: feature.into(),
        request_id: floatlm::domain::seats::RequestId::new(rid).unwrap(),
        holder: holder.into(),
        client_info: "alice@pc1 (i-test)".into(),
        hold: ttl,
        promise: ttl,
        instance_id: "i-test".into(),
    }
}

pub fn test_keyring() -> Keyring {
    Keyring::new(vec![MasterKey::new("k1", [42; 32]).unwrap()]).unwrap()
}

/// A license record as the app would store it.
pub fn record(def: &LicenseDef, vendor: &VendorSigningKey, ring: &Keyring) -> LicenseRecord {
    let text = vendor.sign(def).unwrap();
    LicenseRecord {
        license_id: def.license_id.clone(),
        serial: def.serial as i64,
        customer: def.customer.clone(),
        vendor_key_id: vendor.public().id(),
        digest: floatlm::crypto::sha256_hex(text.as_bytes()),
        sealed: ring.seal(SealedColumn::License.at(&def.license_id), text.as_bytes()),
        features: def.features.clone(),
        repair: false,
    }
}

/// A definition with one feature.
pub fn def(license_id: &str, serial: u64, feature: &str, seats: u32) -> LicenseDef {
    parse_definition(&format!(
        "license_id = \"{license_id}\"\nserial = {serial}\ncustomer = \"Test\"\n[[feature]]\nname = \"{feature}\"\nseats = {seats}\n"
    ))
    .unwrap()
}

/// An in-process App on `kind`, with a trusted vendor key.
pub struct TestApp {
    pub app: Arc<App>,
    pub vendor: VendorSigningKey,
    pub dir: tempfile::TempDir,
    pub db: Option<TestDb>,
}

pub fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

pub const MASTER_KEY_1: &str = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
pub const MASTER_KEY_2: &str = "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

/// Layers for an App: data dir in `dir`, database per kind, master key, vendor key.
pub fn layers(
    dir: &Path,
    db_url: Option<&str>,
    master_key: &str,
    vendor: &VendorSigningKey,
) -> Layers {
    let pub_path = write(&dir.join("vendor.pub"), &vendor.public().to_text());
    let mut l = Layers::default();
    l.flag("data_dir", Some(dir.join("data").display()));
    l.flag("database_url", db_url);
    l.flag("master_key", Some(master_key));
    l.flag("vendor_keys", Some(pub_path.display()));
    l.flag("admin_token", Some("test-admin-token-0123456789"));
    l
}

impl TestApp {
    /// The URL of its database (either backend), for tampering with rows.
    pub fn db_url(&self) -> String {
        match &self.db {
            Some(db) => db.url.clone(),
            None => format!(
                "sqlite://{}",
                self.dir.path().join("data/floatlm.db").display()
            ),
        }
    }

    pub async fn new(kind: Kind) -> TestApp {
        let db = TestDb::for_kind(kind).await;
        Self::on(kind, db, VendorSigningKey::generate()).await
    }

    pub async fn on(_kind: Kind, db: Option<TestDb>, vendor: VendorSigningKey) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let url = db.as_ref().map(|d| d.url.clone());
        let cfg = layers(dir.path(), url.as_deref(), MASTER_KEY_1, &vendor)
            .build()
            .unwrap();
        let app = App::start(cfg).await.unwrap();
        TestApp {
            app,
            vendor,
            dir,
            db,
        }
    }
}

/// The command line of one `floatlm serve`, the one place a test builds
/// it: both listeners on 127.0.0.1 port 0, data in `DIR/data` and the
/// server's log in `DIR`, unless the test says otherwise; then what the
/// test adds (the demo, a MariaDB database, flags, environment).
#[derive(Debug, Clone)]
pub struct Serve {
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
}

impl Serve {
    /// `floatlm serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
    /// --data-dir DIR/data`, its log in `dir`.
    pub fn in_dir(dir: &Path) -> Serve {
        Serve {
            args: vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--admin-listen".into(),
                "127.0.0.1:0".into(),
                "--data-dir".into(),
                dir.join("data").display().to_string(),
            ],
            env: Vec::new(),
            log_dir: dir.to_path_buf(),
        }
    }

    /// Data in `data` instead of `DIR/data`.
    pub fn data_dir(mut self, data: &Path) -> Serve {
        let i = self.args.iter().position(|a| a == "--data-dir").unwrap();
        self.args[i + 1] = data.display().to_string();
        self
    }

    /// Licensing listener on `addr` instead of port 0.
    pub fn listen(mut self, addr: &str) -> Serve {
        self.args[1] = addr.to_string();
        self
    }

    /// `serve --demo`: feature `demo` with 5 seats, an identity written to
    /// DATA/demo-identity.txt.
    pub fn demo(self) -> Serve {
        self.args(&["--demo"])
    }

    /// SIGTERM stops it at once (`--drain-delay 0s`).
    pub fn no_drain_delay(self) -> Serve {
        self.args(&["--drain-delay", "0s"])
    }

    /// On the MariaDB database `db`, with master key 1 (every instance of a
    /// database holds the same keys; [`Serve::env`] sets another).
    pub fn mysql(self, db: &(impl DatabaseUrl + ?Sized)) -> Serve {
        self.database(db)
    }

    /// On the database `db` names (a MariaDB database, or an SQLite file's
    /// `sqlite://PATH`), with master key 1.
    pub fn database(self, db: &(impl DatabaseUrl + ?Sized)) -> Serve {
        self.args(&["--database-url", db.database_url()])
            .env("FLOATLM_MASTER_KEY", MASTER_KEY_1)
    }

    /// On `kind`: SQLite in the data dir, or `db` (which a MariaDB test
    /// must give) with master key 1.
    pub fn on(self, kind: Kind, db: Option<&TestDb>) -> Serve {
        match kind {
            Kind::Sqlite => self,
            Kind::Mysql => self.mysql(db.expect("a MariaDB test needs its TestDb")),
        }
    }

    /// More flags.
    pub fn args(mut self, args: &[&str]) -> Serve {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable (replacing an earlier value of it).
    pub fn env(mut self, key: &str, value: &str) -> Serve {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// More environment variables.
    pub fn envs(self, env: &[(&str, &str)]) -> Serve {
        env.iter().fold(self, |s, (k, v)| s.env(k, v))
    }

    /// Starts it; Err with its log when it does not start.
    pub fn spawn(&self) -> Result<ServerProc, String> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ServerProc::spawn(&args, &env, &self.log_dir)
    }

    /// Starts it; panics with its log when it does not start.
    pub fn start(&self) -> ServerProc {
        self.spawn().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A real `floatlm serve` process.
pub struct ServerProc {
    pub child: Child,
    pub licensing: String,
    pub admin: String,
    pub instance: String,
    pub stderr_log: PathBuf,
}

impl ServerProc {
    /// Starts `floatlm serve ARGS` with ENV and waits for its listening
    /// line; tests build ARGS and ENV with [`Serve`].
    fn spawn(args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Result<ServerProc, String> {
        let stderr_log = log_dir.join(format!("server-{}.log", floatlm::crypto::random_hex(4)));
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(" listening licensing=") {
                    let _ = tx.send(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let field = |k: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .unwrap_or_default()
                        .to_string()
                };
                let instance = line
                    .split_whitespace()
                    .nth(2)
                    .unwrap_or_default()
                    .to_string();
                Ok(ServerProc {
                    licensing: field("licensing="),
                    admin: field("admin="),
                    instance,
                    child,
                    stderr_log,
                })
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(format!(
                    "server did not start (exit {status:?}); its log:\n{}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                ))
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for exit with a deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns Some or the deadline passes.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Defines `$name_sqlite` and `$name_mysql` tests calling `$body(Kind)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::Kind::Sqlite).await }
            )*
        }
        mod mysql_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::Kind::Mysql).await }
            )*
        }
    };
}

/// Runs one statement on a TestApp's database (either backend), as an
/// operator with database access would; returns rows affected.
pub async fn raw_exec(t: &TestApp, sql: &str) -> u64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&t.db_url()).await.unwrap();
    let n = sqlx::query(sql)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    pool.close().await;
    n
}

/// The blob in `column` of row `row_id`, read like an operator with
/// database access would, from the database at `url` (either backend).
pub async fn sealed_blob(url: &str, column: SealedColumn, row_id: &str) -> Vec<u8> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?",
        column.column(),
        column.table(),
        column.row_column()
    );
    // Each backend's own driver: the Any driver decodes some MariaDB
    // binary columns as text.
    let blob = if url.starts_with("mysql:") {
        let pool = sqlx::MySqlPool::connect(url).await.unwrap();
        let blob = sqlx::query_scalar(&sql).bind(row_id).fetch_one(&pool).await;
        pool.close().await;
        blob
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let blob = sqlx::query_scalar(&sql).bind(row_id).fetch_one(&pool).await;
        pool.close().await;
        blob
    };
    blob.unwrap_or_else(|e| panic!("{sql} ({row_id}): {e}"))
}

/// Overwrites the blob in `column` of row `row_id` of the database at
/// `url`; panics unless exactly that row changed.
pub async fn set_sealed_blob(url: &str, column: SealedColumn, row_id: &str, blob: &[u8]) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let sql = format!(
        "UPDATE {} SET {} = ? WHERE {} = ?",
        column.table(),
        column.column(),
        column.row_column()
    );
    let n = sqlx::query(&sql)
        .bind(blob.to_vec())
        .bind(row_id)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    pool.close().await;
    assert_eq!(n, 1, "{sql} ({row_id})");
}

/// Serves `app` in this process on 127.0.0.1 port 0; returns (licensing, admin)
/// addresses and a sender that stops it.
pub async fn serve_in_process(app: Arc<App>) -> (String, String, tokio::sync::oneshot::Sender<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (
        l.local_addr().unwrap().to_string(),
        a.local_addr().unwrap().to_string(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(floatlm::http::serve(app, l, a, async move {
        let _ = rx.await;
    }));
    (addrs.0, addrs.1, tx)
}

/// The `floatlm` binary under test. Cargo builds it for the integration
/// tests, beside them (`target/<profile>/floatlm`, the tests in
/// `target/<profile>/deps/`); nextest also names it in
/// `NEXTEST_BIN_EXE_floatlm`. (`env!("CARGO_BIN_EXE_floatlm")` is set only
/// while compiling the root package's own tests, not this crate.)
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = std::env::var_os("NEXTEST_BIN_EXE_floatlm")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let exe = std::env::current_exe().expect("the test executable's path");
                exe.parent()
                    .and_then(Path::parent)
                    .expect("tests run from target/<profile>/deps/")
                    .join("floatlm")
            });
        assert!(
            path.is_file(),
            "the floatlm binary is not at {}: run the tests with `cargo test` or `cargo nextest run`, which build it",
            path.display()
        );
        path.display().to_string()
    })
}

/// The repository's root (nginx configs, migrations and docs live there).
fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Runs the floatlm CLI; panics with its stderr on failure; returns stdout.
pub fn floatlm_ok(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "floatlm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vendor key pair and a signed license of one feature, made with the CLI
/// in `dir`; returns (vendor .pub path, .lic path).
pub fn cli_license(dir: &Path, license_id: &str, feature: &str, seats: u32) -> (String, String) {
    let vdir = dir.join("vendor");
    floatlm_ok(&["vendor", "keygen", "--out", &vdir.display().to_string()]);
    let def = dir.join(format!("{license_id}.toml"));
    std::fs::write(
        &def,
        format!("license_id = \"{license_id}\"\nserial = 1\ncustomer = \"test\"\n[[feature]]\nname = \"{feature}\"\nseats = {seats}\n"),
    )
    .unwrap();
    let lic = dir.join(format!("{license_id}.lic")).display().to_string();
    floatlm_ok(&[
        "vendor",
        "sign",
        "--key",
        &vdir.join("vendor.key").display().to_string(),
        &def.display().to_string(),
        "-o",
        &lic,
    ]);
    (vdir.join("vendor.pub").display().to_string(), lic)
}

/// `ID:SECRET` from the output of `floatlm admin identity create`.
pub fn created_credential(out: &str) -> String {
    out.lines()
        .last()
        .unwrap()
        .rsplit_once('@')
        .unwrap()
        .0
        .to_string()
}

/// The admin token of every instance started by [`cluster_instance`].
pub const CLUSTER_TOKEN: &str = "cluster-admin-token-0123456789";

/// Names a MySQL/MariaDB database for [`cluster_instance`]: a [`TestDb`] on
/// the shared server, or any URL (a database of an
/// [`own_mariadb::OwnMariaDb`], say).
pub trait DatabaseUrl {
    fn database_url(&self) -> &str;
}

impl DatabaseUrl for TestDb {
    fn database_url(&self) -> &str {
        &self.url
    }
}

impl DatabaseUrl for str {
    fn database_url(&self) -> &str {
        self
    }
}

impl DatabaseUrl for String {
    fn database_url(&self) -> &str {
        self
    }
}

/// A `floatlm serve` on the MariaDB database `db` (shared by the instances
/// of a test; or an SQLite file's `sqlite://PATH`, under a single instance):
/// instance id `id`, data in `dir/id`, master key 1, admin token
/// [`CLUSTER_TOKEN`], no drain delay; `extra_args` and `extra_env` come on top.
pub fn cluster_instance(
    dir: &Path,
    db: &(impl DatabaseUrl + ?Sized),
    id: &str,
    listen: &str,
    extra_args: &[&str],
    extra_env: &[(&str, &str)],
) -> ServerProc {
    Serve::in_dir(dir)
        .data_dir(&dir.join(id))
        .listen(listen)
        .database(db)
        .args(&["--instance-id", id])
        .no_drain_delay()
        .env("FLOATLM_ADMIN_TOKEN", CLUSTER_TOKEN)
        .args(extra_args)
        .envs(extra_env)
        .start()
}

/// `floatlm admin --url … --token CLUSTER_TOKEN ARGS` against `p`; returns stdout.
pub fn admin_cli(p: &ServerProc, args: &[&str]) -> String {
    let url = format!("http://{}", p.admin);
    let mut all = vec!["admin", "--url", url.as_str(), "--token", CLUSTER_TOKEN];
    all.extend_from_slice(args);
    floatlm_ok(&all)
}

/// A `floatlm serve --demo` process on SQLite (or a MariaDB database of
/// the test's, [`DemoServer::start_on`]), port 0 (feature `demo`, 5 seats),
/// with its demo identity string and admin token.
pub struct DemoServer {
    pub proc: ServerProc,
    pub identity: String,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
}

impl DemoServer {
    /// Starts it with `extra` flags (e.g. `--lease-ttl 5s`).
    pub fn start(extra: &[&str]) -> DemoServer {
        Self::start_with(extra, &[])
    }

    /// Starts it with `extra` flags and environment.
    pub fn start_with(extra: &[&str], env: &[(&str, &str)]) -> DemoServer {
        Self::start_on(None, extra, env)
    }

    /// Starts it on `db` (a MariaDB database, with master key 1) or, given
    /// none, on SQLite, with `extra` flags and environment.
    pub fn start_on(db: Option<&TestDb>, extra: &[&str], env: &[(&str, &str)]) -> DemoServer {
        let dir = tempfile::tempdir().unwrap();
        let serve = Serve::in_dir(dir.path()).demo().no_drain_delay();
        let serve = match db {
            Some(db) => serve.mysql(db),
            None => serve,
        };
        let proc = serve.args(extra).envs(env).start();
        let read = |f: &str| {
            std::fs::read_to_string(dir.path().join("data").join(f))
                .unwrap()
                .trim()
                .to_string()
        };
        DemoServer {
            identity: read("demo-identity.txt"),
            admin_token: env
                .iter()
                .find(|(k, _)| *k == "FLOATLM_ADMIN_TOKEN")
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| read("admin.token")),
            proc,
            dir,
        }
    }

    /// `method path` on the admin API with the admin token; panics with the
    /// status and body unless the answer is a success, else its JSON body.
    pub async fn admin_json(&self, method: reqwest::Method, path: &str) -> serde_json::Value {
        let r = reqwest::Client::new()
            .request(method.clone(), format!("http://{}{path}", self.proc.admin))
            .bearer_auth(&self.admin_token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: HTTP {status} {body}");
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }

    /// Seats of `demo` in use, from the admin API (`GET /admin/v1/features`).
    pub async fn used(&self) -> i64 {
        let v = self
            .admin_json(reqwest::Method::GET, "/admin/v1/features")
            .await;
        v["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "demo")
            .unwrap_or_else(|| panic!("no feature demo in {v}"))["used"]
            .as_i64()
            .unwrap()
    }

    /// Force-releases `lease` as an operator (`DELETE /admin/v1/leases/{lease}`).
    pub async fn force_release(&self, lease: &str) {
        self.admin_json(
            reqwest::Method::DELETE,
            &format!("/admin/v1/leases/{lease}"),
        )
        .await;
    }

    /// The lease ids the server holds for `demo` (`GET /admin/v1/leases`).
    pub async fn leases(&self) -> Vec<String> {
        self.lease_rows()
            .await
            .iter()
            .filter_map(|l| l["lease"].as_str().map(str::to_string))
            .collect()
    }

    /// The admin API's live lease rows, as JSON.
    pub async fn lease_rows(&self) -> Vec<serde_json::Value> {
        let v = self
            .admin_json(reqwest::Method::GET, "/admin/v1/leases")
            .await;
        v["leases"].as_array().cloned().unwrap_or_default()
    }
}
