//! Throwaway PostgreSQL servers: a fresh cluster in a temporary directory, a free port on
//! 127.0.0.1, `pg_stat_statements` preloaded.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions as _, Connection as _};
use tempfile::TempDir;
use tokio::sync::OnceCell;

use crate::process::{self, ServerProcess, ServiceUser};
use crate::{try_free_port, url_encode, LOOPBACK};

/// The superuser `initdb` creates; it logs in over TCP without a password.
const SUPERUSER: &str = "postgres";

/// How a [`PgServer`] is set up.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Extra `postgresql.conf` lines, appended after the harness settings; PostgreSQL uses
    /// the last occurrence of a setting, so these override the harness. Default none.
    pub extra_conf: Vec<String>,
    /// Extra `pg_hba.conf` lines, placed before the harness lines so that they take
    /// precedence (the first matching line wins). Default none.
    pub extra_hba: Vec<String>,
    /// Create the `pg_stat_statements` extension in `postgres` and in `template1`, so
    /// that databases created later have it too. Default `true`.
    pub create_pg_stat_statements: bool,
    /// How long a start waits for the server to answer `SELECT 1`. Default 30 s.
    pub start_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            extra_conf: Vec::new(),
            extra_hba: Vec::new(),
            create_pg_stat_statements: true,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A PostgreSQL server of its own for one test, listening on 127.0.0.1.
///
/// The superuser `postgres` logs in over TCP without a password; every other role must
/// present its password (SCRAM). Dropping the server shuts it down immediately and removes
/// its directory.
///
/// # Caveats
///
/// `pg_stat_statements` is updated before a statement's reply, but the cumulative
/// statistics (`pg_stat_database`, `pg_stat_user_tables`, ...) are flushed by each backend
/// later, after up to seconds: call `pg_stat_force_next_flush()` in the session that did
/// the work, or poll with [`crate::eventually`].
#[derive(Debug)]
pub struct PgServer {
    opts: PgOptions,
    /// Directory with `initdb`, `postgres`.
    bin_dir: PathBuf,
    /// Account the server runs as; `None` when the harness is not root.
    user: Option<ServiceUser>,
    port: u16,
    process: ServerProcess,
    /// Holds `data/`, the Unix socket and `server.log`; removed on drop.
    dir: TempDir,
}

impl PgServer {
    /// Creates a cluster in a fresh temporary directory and starts it on a free port.
    ///
    /// The first start in a test process runs `initdb` into a template; every start copies
    /// the template.
    ///
    /// # Errors
    ///
    /// Fails when the binaries are missing, `initdb` fails, or the server does not answer
    /// `SELECT 1` within [`PgOptions::start_timeout`]; the message carries the tail of the
    /// server log.
    pub async fn start(opts: PgOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        let bin_dir = bin_dir()?;
        let user = ServiceUser::for_root(SUPERUSER)?;
        let dir = process::server_dir("pg", user)?;
        process::copy_dir(
            &template(&bin_dir, user).await?.join("data"),
            &dir.path().join("data"),
        )
        .await?;
        write_config(dir.path(), &opts)?;

        let log = dir.path().join("server.log");
        let mut server = Self {
            opts,
            bin_dir,
            user,
            port: 0,
            process: ServerProcess::new("postgres", log),
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

        if server.opts.create_pg_stat_statements {
            server.create_pg_stat_statements().await?;
        }
        tracing::debug!(port = server.port, elapsed = ?started.elapsed(), "postgres started");
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

    /// URL of the superuser connection to database `postgres`.
    pub fn admin_url(&self) -> String {
        self.url(SUPERUSER, None, "postgres")
    }

    /// URL for `user` (with `password`, if any) to `database`; TLS disabled.
    pub fn url(&self, user: &str, password: Option<&str>, database: &str) -> String {
        let password = password
            .map(|p| format!(":{}", url_encode(p)))
            .unwrap_or_default();
        format!(
            "postgres://{}{password}@{LOOPBACK}:{}/{}?sslmode=disable",
            url_encode(user),
            self.port,
            url_encode(database)
        )
    }

    /// Connect options of the superuser to database `postgres`.
    pub fn admin_options(&self) -> PgConnectOptions {
        self.connect_options(SUPERUSER, None, "postgres")
    }

    /// Connect options for `user` (with `password`, if any) to `database`; TLS disabled.
    pub fn connect_options(
        &self,
        user: &str,
        password: Option<&str>,
        database: &str,
    ) -> PgConnectOptions {
        let options = PgConnectOptions::new()
            .host(&LOOPBACK.to_string())
            .port(self.port)
            .username(user)
            .database(database)
            .ssl_mode(PgSslMode::Disable)
            .application_name("dbcollector-tests");
        match password {
            Some(password) => options.password(password),
            None => options,
        }
    }

    /// A small pool of superuser connections to database `postgres`.
    ///
    /// # Errors
    ///
    /// Fails when the server cannot be reached.
    pub async fn admin_pool(&self) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.admin_options())
            .await
            .with_context(|| format!("connecting to postgres on port {}", self.port))
    }

    /// Creates a role that can log in with `password` (and only with it).
    ///
    /// # Errors
    ///
    /// Fails when the statement fails, e.g. when the role exists.
    pub async fn create_login_role(&self, name: &str, password: &str) -> anyhow::Result<()> {
        let pool = self.admin_pool().await?;
        let statement = format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            quote_ident(name),
            quote_literal(password)
        );
        sqlx::query(&statement)
            .execute(&pool)
            .await
            .with_context(|| format!("creating role {name}"))?;
        pool.close().await;
        Ok(())
    }

    /// Shuts the server down with a fast shutdown (sessions are disconnected, open
    /// transactions rolled back) and waits for it to exit. Does nothing when stopped.
    ///
    /// # Errors
    ///
    /// Fails when the server does not exit within 30 s; it is then killed.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.process
            .shut_down(libc::SIGINT, Duration::from_secs(30))
            .await
    }

    /// Simulates a crash: SIGKILLs the postmaster and all its backends at once, as when a
    /// container dies. The next start runs crash recovery.
    ///
    /// # Errors
    ///
    /// Fails when the killed processes still hold the shared memory after 10 s, which
    /// would make the next start fail.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill_group_blocking();

        // A restart refuses to run while any old backend is still attached.
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared_memory(&self.data_dir()).is_some_and(|segment| segment.attached > 0) {
            if Instant::now() >= deadline {
                bail!("killed postgres backends still hold shared memory after 10s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

    /// Spawns the postmaster and waits until it answers `SELECT 1`.
    async fn run(&mut self) -> anyhow::Result<()> {
        let offset = self.process.log_len();
        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .current_dir(self.dir.path());

        // SIGQUIT is an immediate shutdown: the postmaster takes its backends down with it
        // and releases the shared memory.
        self.process.spawn(cmd, self.user, libc::SIGQUIT).await?;

        let options = self.admin_options().disable_statement_logging();
        self.process
            .wait_ready(offset, self.opts.start_timeout, || probe(options.clone()))
            .await
            .with_context(|| format!("starting postgres on port {}", self.port))
    }

    async fn create_pg_stat_statements(&self) -> anyhow::Result<()> {
        for database in ["postgres", "template1"] {
            let mut conn = self
                .connect_options(SUPERUSER, None, database)
                .connect()
                .await
                .with_context(|| format!("connecting to {database}"))?;
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&mut conn)
                .await
                .with_context(|| format!("creating pg_stat_statements in {database}"))?;
            conn.close().await?;
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.process.is_running() {
            // Immediate shutdown: the data is thrown away, so no checkpoint is needed.
            let _ = self.process.signal(libc::SIGQUIT);
            if !self.process.wait_exit_blocking(Duration::from_secs(5)) {
                self.process.kill_group_blocking();
            }
        }

        // After `kill()` without a restart, nobody else would ever remove the segment.
        if let Some(segment) = shared_memory(&self.data_dir()) {
            if segment.attached == 0 {
                // SAFETY: removes the segment the dead server's postmaster.pid names,
                // checked against its key; nothing of ours maps it.
                unsafe { libc::shmctl(segment.id, libc::IPC_RMID, std::ptr::null_mut()) };
            }
        }
    }
}

/// Finds the PostgreSQL binaries: `$PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<major>/bin` (Debian's layout).
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let newest = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major);
    match newest {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL binaries in /usr/lib/postgresql/*/bin; run scripts/setup.sh \
             or set PG_BIN_DIR"
        ),
    }
}

/// A pristine cluster in `<dir>/data`, made once per test process and copied for each
/// server: copying takes a fraction of the time `initdb` takes.
///
/// Removed when the test process exits (see `process::template_dir`).
async fn template(bin_dir: &Path, user: Option<ServiceUser>) -> anyhow::Result<&'static Path> {
    static TEMPLATE: OnceCell<PathBuf> = OnceCell::const_new();
    let dir = TEMPLATE
        .get_or_try_init(|| async {
            let dir = process::template_dir("pg-template", user)?;
            initdb(bin_dir, &dir, user).await?;
            Ok::<_, anyhow::Error>(dir)
        })
        .await?;
    Ok(dir)
}

async fn initdb(bin_dir: &Path, dir: &Path, user: Option<ServiceUser>) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(bin_dir.join("initdb"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
        .args(["--no-sync", "--no-instructions"])
        .current_dir(dir);
    if let Some(user) = user {
        cmd.uid(user.uid).gid(user.gid);
    }
    process::run_to_completion(cmd, "initdb").await
}

/// Appends the harness settings to `postgresql.conf` and replaces `pg_hba.conf`.
fn write_config(dir: &Path, opts: &PgOptions) -> anyhow::Result<()> {
    let data = dir.join("data");
    let mut conf = String::from("\n# dbcollector test harness\n");
    let _ = writeln!(conf, "listen_addresses = '{LOOPBACK}'");
    let _ = writeln!(conf, "unix_socket_directories = '{}'", dir.display());
    conf.push_str(
        "fsync = off\n\
         full_page_writes = off\n\
         shared_buffers = 32MB\n\
         shared_preload_libraries = 'pg_stat_statements'\n\
         pg_stat_statements.max = 10000\n\
         track_io_timing = on\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n",
    );
    for line in &opts.extra_conf {
        let _ = writeln!(conf, "{line}");
    }
    let conf_path = data.join("postgresql.conf");
    let mut existing = fs::read_to_string(&conf_path).context("reading postgresql.conf")?;
    existing.push_str(&conf);
    fs::write(&conf_path, existing).context("writing postgresql.conf")?;

    // Only the superuser is trusted over TCP, so roles created with a password must
    // present it.
    let mut hba = String::new();
    for line in &opts.extra_hba {
        let _ = writeln!(hba, "{line}");
    }
    hba.push_str("local all all trust\n");
    let _ = writeln!(hba, "host all {SUPERUSER} {LOOPBACK}/32 trust");
    let _ = writeln!(hba, "host all all {LOOPBACK}/32 scram-sha-256");
    fs::write(data.join("pg_hba.conf"), hba).context("writing pg_hba.conf")
}

async fn probe(options: PgConnectOptions) -> anyhow::Result<()> {
    let mut conn = options.connect().await?;
    sqlx::query("SELECT 1").execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// The System V shared memory segment a postmaster registered in `postmaster.pid`.
struct Segment {
    id: libc::c_int,
    attached: u64,
}

/// Looks up the segment named by `postmaster.pid`; `None` when there is no pid file or the
/// segment is gone.
fn shared_memory(data_dir: &Path) -> Option<Segment> {
    // Line 7 of postmaster.pid holds "<key> <id>" of the segment.
    let pid_file = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut fields = pid_file.lines().nth(6)?.split_whitespace();
    let key: libc::key_t = fields.next()?.parse().ok()?;
    let id: libc::c_int = fields.next()?.parse().ok()?;

    // SAFETY: shmid_ds is plain data; IPC_STAT only writes into it.
    let mut stat: libc::shmid_ds = unsafe { std::mem::zeroed() };
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut stat) } != 0 {
        return None;
    }
    // The id may have been reused by another program's segment since.
    (stat.shm_perm.__key == key).then_some(Segment {
        id,
        attached: stat.shm_nattch,
    })
}

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings is on by default).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
