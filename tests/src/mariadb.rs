//! Throwaway MariaDB servers: a fresh data directory in a temporary directory, a free port
//! on 127.0.0.1, performance_schema on with statement digests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::{ConnectOptions as _, Connection as _};
use tempfile::TempDir;
use tokio::sync::OnceCell;

use crate::process::{self, ServerProcess, ServiceUser};
use crate::{try_free_port, url_encode, LOOPBACK};

/// The account the server runs as when the harness runs as root.
const SYSTEM_USER: &str = "mysql";

/// Server settings every harness server gets, before [`MariaDbOptions::extra_args`].
///
/// Memory is kept small because several servers may run at once; durability settings
/// survive a killed server process (the OS keeps what was written) but not a machine crash.
const SERVER_ARGS: &[&str] = &[
    "--skip-log-bin",
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--innodb-log-buffer-size=2M",
    "--innodb-buffer-pool-dump-at-shutdown=OFF",
    "--innodb-buffer-pool-load-at-startup=OFF",
    "--innodb-doublewrite=OFF",
    "--innodb-flush-log-at-trx-commit=2",
    "--aria-pagecache-buffer-size=8M",
    "--key-buffer-size=1M",
    "--max-connections=100",
    // MariaDB turns performance_schema off by default. Digests
    // (events_statements_summary_by_digest) need only the `global_instrumentation` and
    // `statements_digest` consumers, and table and index I/O summaries only
    // `global_instrumentation`; all three are on by default in 10.11 but are named here so
    // the dependency is visible. The statement current/history consumers (which need
    // `thread_instrumentation`) feed events_statements_current / _history (query samples).
    "--performance-schema=ON",
    "--performance-schema-consumer-global-instrumentation=ON",
    "--performance-schema-consumer-thread-instrumentation=ON",
    "--performance-schema-consumer-statements-digest=ON",
    "--performance-schema-consumer-events-statements-current=ON",
    "--performance-schema-consumer-events-statements-history=ON",
    // performance_schema sizes its per-thread, -account, -host and -user tables from
    // max_connections; capping them takes a server from about 150 MB RSS to about 115 MB.
    "--performance-schema-max-thread-instances=200",
    "--performance-schema-accounts-size=20",
    "--performance-schema-hosts-size=20",
    "--performance-schema-users-size=20",
];

/// How a [`MariaDbServer`] is set up.
#[derive(Clone, Debug)]
pub struct MariaDbOptions {
    /// Extra `mariadbd` arguments (`--name=value`), after the harness settings; MariaDB
    /// uses the last occurrence of an option, so these override the harness. Default none.
    pub extra_args: Vec<String>,
    /// How long a start waits for the server to answer `SELECT 1`. Default 30 s.
    pub start_timeout: Duration,
}

impl Default for MariaDbOptions {
    fn default() -> Self {
        Self {
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A MariaDB server of its own for one test, listening on 127.0.0.1.
///
/// `root` logs in over TCP without a password. Dropping the server kills it and removes
/// its directory.
///
/// # Caveats
///
/// Three MariaDB 10.11 behaviours that tests generating statement load must allow for:
/// - Only the text protocol is digested: statements sent as prepared statements (binary
///   protocol, e.g. every `sqlx::query`, with or without binds) never appear in
///   `events_statements_summary_by_digest`. Send load with `sqlx::raw_sql` or
///   `Executor::execute(&str)`.
/// - The summaries are updated after the client has its answer, so a read from another
///   connection right away may not see the statement yet: poll with
///   [`crate::eventually`].
/// - A multi-statement text gets the first statement's digest text for every statement in
///   it; send one statement per call.
#[derive(Debug)]
pub struct MariaDbServer {
    opts: MariaDbOptions,
    /// Account the server runs as; `None` when the harness is not root.
    user: Option<ServiceUser>,
    port: u16,
    process: ServerProcess,
    /// Holds `data/`, `tmp/`, the socket, the pid file and `server.log`; removed on drop.
    dir: TempDir,
}

impl MariaDbServer {
    /// Creates a data directory in a fresh temporary directory and starts a server on a
    /// free port.
    ///
    /// The first start in a test process runs `mariadb-install-db` into a template; every
    /// start copies the template.
    ///
    /// # Errors
    ///
    /// Fails when the binaries are missing, `mariadb-install-db` fails, or the server does
    /// not answer `SELECT 1` within [`MariaDbOptions::start_timeout`]; the message carries
    /// the tail of the server log.
    pub async fn start(opts: MariaDbOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        let user = ServiceUser::for_root(SYSTEM_USER)?;
        let dir = process::server_dir("mariadb", user)?;
        process::copy_dir(
            &template(user).await?.join("data"),
            &dir.path().join("data"),
        )
        .await?;

        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).context("creating tmp/")?;
        if let Some(user) = user {
            process::chown(&tmp, user)?;
        }

        let log = dir.path().join("server.log");
        let mut server = Self {
            opts,
            user,
            port: 0,
            process: ServerProcess::new("mariadbd", log),
            dir,
        };

        // Another process may bind the port between its pick and the server's bind.
        for attempt in 1.. {
            server.port = try_free_port()?;
            let offset = server.process.log_len();
            match server.run().await {
                Ok(()) => break,
                Err(_) if attempt < 3 && server.process.port_was_taken(offset) => continue,
                Err(e) => return Err(e),
            }
        }
        tracing::debug!(port = server.port, elapsed = ?started.elapsed(), "mariadb started");
        Ok(server)
    }

    /// Port the server listens on (on 127.0.0.1); the same after [`Self::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on: `127.0.0.1`.
    pub fn host(&self) -> String {
        LOOPBACK.to_string()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the server has logged so far, across restarts.
    pub fn log(&self) -> String {
        self.process.log_since(0)
    }

    /// URL of the `root` connection, without a default database.
    pub fn admin_url(&self) -> String {
        self.url("root", None, None)
    }

    /// URL for `user` (with `password`, if any), optionally to `database`; TLS disabled.
    pub fn url(&self, user: &str, password: Option<&str>, database: Option<&str>) -> String {
        let password = password
            .map(|p| format!(":{}", url_encode(p)))
            .unwrap_or_default();
        let database = database.map(url_encode).unwrap_or_default();
        format!(
            "mysql://{}{password}@{LOOPBACK}:{}/{database}?ssl-mode=disabled",
            url_encode(user),
            self.port
        )
    }

    /// Connect options of `root`, without a default database.
    pub fn admin_options(&self) -> MySqlConnectOptions {
        self.connect_options("root", None, None)
    }

    /// Connect options for `user` (with `password`, if any), optionally to `database`;
    /// TLS disabled.
    pub fn connect_options(
        &self,
        user: &str,
        password: Option<&str>,
        database: Option<&str>,
    ) -> MySqlConnectOptions {
        let mut options = MySqlConnectOptions::new()
            .host(&LOOPBACK.to_string())
            .port(self.port)
            .username(user)
            .ssl_mode(MySqlSslMode::Disabled);
        if let Some(password) = password {
            options = options.password(password);
        }
        if let Some(database) = database {
            options = options.database(database);
        }
        options
    }

    /// A small pool of `root` connections.
    ///
    /// # Errors
    ///
    /// Fails when the server cannot be reached.
    pub async fn admin_pool(&self) -> anyhow::Result<MySqlPool> {
        MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.admin_options())
            .await
            .with_context(|| format!("connecting to mariadb on port {}", self.port))
    }

    /// Creates `name`@`%` identified by `password`.
    ///
    /// # Errors
    ///
    /// Fails when the statement fails, e.g. when the user exists.
    pub async fn create_user(&self, name: &str, password: &str) -> anyhow::Result<()> {
        let pool = self.admin_pool().await?;
        let statement = format!(
            "CREATE USER {}@'%' IDENTIFIED BY {}",
            quote_string(name),
            quote_string(password)
        );
        sqlx::query(&statement)
            .execute(&pool)
            .await
            .with_context(|| format!("creating user {name}"))?;
        pool.close().await;
        Ok(())
    }

    /// Shuts the server down normally and waits for it to exit. Does nothing when stopped.
    ///
    /// # Errors
    ///
    /// Fails when the server does not exit within 30 s; it is then killed.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.process
            .shut_down(libc::SIGTERM, Duration::from_secs(30))
            .await
    }

    /// Simulates a crash: SIGKILLs the server. The next start runs crash recovery.
    ///
    /// # Errors
    ///
    /// Never fails today; fallible for symmetry with [`crate::PgServer::kill`].
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill_group_blocking();
        Ok(())
    }

    /// Starts the server again, on the same port and data directory, after
    /// [`Self::stop`] or [`Self::kill`].
    ///
    /// # Errors
    ///
    /// Fails when the server is running, or does not become ready (e.g. the port was
    /// taken meanwhile).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.process.ensure_stopped()?;
        self.run().await
    }

    /// Spawns `mariadbd` and waits until it answers `SELECT 1`.
    async fn run(&mut self) -> anyhow::Result<()> {
        let offset = self.process.log_len();
        let dir = self.dir.path();

        // `--no-defaults` must come first. The server runs as `mysql` already (see
        // `ServerProcess::spawn`); `--user` then only documents it.
        let mut cmd = Command::new(mariadbd()?);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg(format!("--socket={}", dir.join("mysql.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--bind-address={LOOPBACK}"))
            .args(self.user.map(|_| format!("--user={SYSTEM_USER}")))
            .args(SERVER_ARGS)
            .args(&self.opts.extra_args)
            .current_dir(dir);
        self.process.spawn(cmd, self.user, libc::SIGKILL).await?;

        let options = self.admin_options().disable_statement_logging();
        self.process
            .wait_ready(offset, self.opts.start_timeout, || probe(options.clone()))
            .await
            .with_context(|| format!("starting mariadbd on port {}", self.port))
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        // The data is thrown away, so a kill is as good as a shutdown, and faster.
        self.process.kill_group_blocking();
    }
}

/// `$MARIADBD`, else `/usr/sbin/mariadbd` (Debian's location).
fn mariadbd() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("MARIADBD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mariadbd"));
    if !path.exists() {
        bail!(
            "{} not found; run scripts/setup.sh or set MARIADBD",
            path.display()
        );
    }
    Ok(path)
}

/// A pristine data directory in `<dir>/data`, made once per test process and copied for
/// each server: copying takes a fraction of the time `mariadb-install-db` takes.
///
/// Removed when the test process exits (see `process::template_dir`).
async fn template(user: Option<ServiceUser>) -> anyhow::Result<&'static Path> {
    static TEMPLATE: OnceCell<PathBuf> = OnceCell::const_new();
    let dir = TEMPLATE
        .get_or_try_init(|| async {
            let dir = process::template_dir("mariadb-template", user)?;
            install_db(&dir, user).await?;
            Ok::<_, anyhow::Error>(dir)
        })
        .await?;
    Ok(dir)
}

/// Creates the system tables in `<dir>/data`, with a password-less `root`.
async fn install_db(dir: &Path, user: Option<ServiceUser>) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new("mariadb-install-db");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .args(user.map(|_| format!("--user={SYSTEM_USER}")))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg("--skip-name-resolve")
        // Passed on to the bootstrap server: same InnoDB sizes as the real runs.
        .args(["--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M"])
        .current_dir(dir);
    process::run_to_completion(cmd, "mariadb-install-db").await
}

async fn probe(options: MySqlConnectOptions) -> anyhow::Result<()> {
    let mut conn = options.connect().await?;
    sqlx::query("SELECT 1").execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Quotes a MariaDB string literal; backslash is an escape character by default.
fn quote_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_string_escapes_quotes_and_backslashes() {
        assert_eq!(quote_string(r"it's\"), r"'it''s\\'");
    }
}
