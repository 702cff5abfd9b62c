//! Server child processes: spawning them so they die with the test process, signals,
//! waiting for exit, their log, and their temporary directories.

use std::ffi::c_int;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// Name of the file, in every server directory, holding the id of the test process that
/// owns the directory.
const OWNER_FILE: &str = "harness.pid";

/// Prefix of every server directory (see [`base_dir`]).
const DIR_PREFIX: &str = "dbcollector-";

/// An unprivileged system account a server runs as when the harness runs as root
/// (PostgreSQL refuses to run as root; MariaDB should not).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServiceUser {
    pub uid: u32,
    pub gid: u32,
}

impl ServiceUser {
    /// Returns the account `name` when this process runs as root, `None` otherwise (the
    /// server then runs as the current user).
    pub fn for_root(name: &str) -> anyhow::Result<Option<Self>> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }

        let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
        let fields = passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&name) && fields.len() > 3)
            .ok_or_else(|| {
                anyhow!("system user `{name}` does not exist; run scripts/setup.sh to install it")
            })?;
        let uid = fields[2]
            .parse()
            .with_context(|| format!("uid of `{name}`"))?;
        let gid = fields[3]
            .parse()
            .with_context(|| format!("gid of `{name}`"))?;
        Ok(Some(Self { uid, gid }))
    }
}

/// A request to the spawner thread: a command and where to send the spawned child.
type SpawnJob = (Command, oneshot::Sender<io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as the test process.
///
/// A parent-death signal fires when the *thread* that forked the child exits, not the
/// process; spawning from a test thread or a tokio blocking thread would kill a server
/// shared between tests as soon as that thread ends.
async fn spawn_from_lasting_thread(cmd: Command) -> anyhow::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();

    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the spawner thread"));
        tx
    });

    let (tx, rx) = oneshot::channel();
    sender
        .send((cmd, tx))
        .map_err(|_| anyhow!("the harness spawner thread is gone"))?;
    let child = rx
        .await
        .map_err(|_| anyhow!("the harness spawner thread dropped a request"))?;
    Ok(child?)
}

/// A long-running server process in its own process group, with its output in a log file.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    /// Program name, for messages.
    name: &'static str,
    /// Where stdout and stderr go; appended to by every start.
    log_path: PathBuf,
    /// The running server; `None` once it has been reaped.
    child: Option<Child>,
}

impl ServerProcess {
    /// A server that is not running yet.
    pub fn new(name: &'static str, log_path: PathBuf) -> Self {
        Self {
            name,
            log_path,
            child: None,
        }
    }

    /// Starts `cmd` as `user`, in a new process group, output appended to the log.
    ///
    /// The server gets `death_signal` when the test process exits, however it exits.
    pub async fn spawn(
        &mut self,
        mut cmd: Command,
        user: Option<ServiceUser>,
        death_signal: c_int,
    ) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }

        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);

        let harness_pid = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls, allocating nothing.
        unsafe {
            cmd.pre_exec(move || {
                // Drop privileges here rather than with `Command::uid`, so that the order
                // is known: changing the user clears the parent-death signal.
                if let Some(user) = user {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(user.gid) != 0
                        || libc::setuid(user.uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The harness may have exited before the signal was armed. (No allocation
                // here: another thread may have held the allocator's lock at fork.)
                if libc::getppid() as u32 != harness_pid {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }

        let child = spawn_from_lasting_thread(cmd)
            .await
            .with_context(|| format!("spawning {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the server was started and has not been reaped.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `signal` to the server's main process.
    pub fn signal(&self, signal: c_int) -> io::Result<()> {
        self.send(signal, false)
    }

    /// Sends `signal` to every process of the server's process group.
    pub fn signal_group(&self, signal: c_int) -> io::Result<()> {
        self.send(signal, true)
    }

    fn send(&self, signal: c_int, group: bool) -> io::Result<()> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
        let target = if group { -pid } else { pid };
        // SAFETY: plain system call; the pid is our own unreaped child, so it cannot have
        // been reused by another process.
        if unsafe { libc::kill(target, signal) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Reaps the server if it has exited, returning its exit status.
    pub fn try_exited(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(child) = &mut self.child else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the server to exit; true when it has.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if self.try_exited().is_err() || Instant::now() >= deadline {
                return !self.is_running();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// [`Self::wait_exit`] for `Drop`, where there may be no runtime to await on.
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if self.try_exited().is_err() || Instant::now() >= deadline {
                return !self.is_running();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Asks the server to shut down with `signal` and waits up to `timeout` for it to exit.
    /// Does nothing when it is not running.
    ///
    /// # Errors
    ///
    /// Fails when the signal cannot be sent, or when the server does not exit in time; it
    /// is then killed, so that it never outlives a failed stop.
    pub async fn shut_down(&mut self, signal: c_int, timeout: Duration) -> anyhow::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        self.signal(signal)
            .with_context(|| format!("signalling {}", self.name))?;
        if !self.wait_exit(timeout).await {
            self.kill_group_blocking();
            bail!(
                "{} did not shut down within {timeout:?} and was killed",
                self.name
            );
        }
        Ok(())
    }

    /// Fails when the server is running: a restart must follow a stop or a kill.
    pub fn ensure_stopped(&self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is still running; stop() or kill() it first", self.name);
        }
        Ok(())
    }

    /// Whether the log written since `offset` says the listening port was taken, which a
    /// start on another port can get past.
    pub fn port_was_taken(&self, offset: u64) -> bool {
        self.log_since(offset).contains("Address already in use")
    }

    /// Kills the whole process group and reaps the main process.
    pub fn kill_group_blocking(&mut self) {
        if let Err(e) = self.signal_group(libc::SIGKILL) {
            tracing::warn!(server = self.name, error = %e, "cannot kill server");
        }
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        }
        self.child = None;
    }

    /// Current length of the log, to read only what a later start writes.
    pub fn log_len(&self) -> u64 {
        fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0)
    }

    /// The log from byte `offset` on, lossily decoded.
    pub fn log_since(&self, offset: u64) -> String {
        let read = || -> io::Result<String> {
            let mut file = File::open(&self.log_path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        read().unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// The last `lines` lines of the log written since `offset`, for error messages.
    pub fn log_tail(&self, offset: u64, lines: usize) -> String {
        let log = self.log_since(offset);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Polls `probe` until it succeeds, the server exits, or `timeout` passes.
    ///
    /// Errors carry the last probe error and the tail of the log written since
    /// `log_offset`.
    pub async fn wait_ready<F, Fut>(
        &mut self,
        log_offset: u64,
        timeout: Duration,
        mut probe: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_error = anyhow!("no connection attempted");
        loop {
            if let Some(status) = self.try_exited()? {
                bail!(
                    "{} exited during startup ({status}); last connection error: {last_error:#}\n\
                     --- log tail ({}) ---\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(log_offset, 30),
                );
            }

            match tokio::time::timeout(Duration::from_secs(2), probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last_error = e,
                Err(_) => last_error = anyhow!("connection attempt timed out after 2s"),
            }

            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {timeout:?}; last connection error: {last_error:#}\n\
                     --- log tail ({}) ---\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(log_offset, 30),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Owners stop the server gracefully first; this is the last resort, e.g. when a
        // start was cancelled.
        if self.is_running() {
            self.kill_group_blocking();
        }
    }
}

/// Runs a short setup program (initdb, mariadb-install-db) to completion.
///
/// # Errors
///
/// Fails when the program cannot run or exits unsuccessfully; the message carries the tail
/// of its output.
pub(crate) async fn run_to_completion(
    mut cmd: tokio::process::Command,
    what: &str,
) -> anyhow::Result<()> {
    let output = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {what}; is it installed? (scripts/setup.sh)"))?;
    if !output.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{what} failed ({}):\n{}",
            output.status,
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    Ok(())
}

/// Copies directory `from` to `to` (which must not exist), keeping owners and modes.
pub(crate) async fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new("cp");
    cmd.arg("-a").arg(from).arg(to);
    run_to_completion(cmd, "cp -a").await
}

/// Creates a fresh server directory owned by `owner`, after removing directories left
/// behind by test processes that no longer exist.
pub(crate) fn server_dir(kind: &str, owner: Option<ServiceUser>) -> anyhow::Result<TempDir> {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_stale_dirs);

    let base = base_dir();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{kind}-"))
        .tempdir_in(base)
        .with_context(|| format!("creating a server directory in {}", base.display()))?;
    fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
        .context("writing the owner file")?;
    if let Some(user) = owner {
        chown(dir.path(), user)?;
    }
    Ok(dir)
}

/// Where server directories go: `$DBCOLLECTOR_TEST_DIR`, else `/dev/shm` when it has at
/// least 2 GiB free, else the system temporary directory.
///
/// Keeping servers in memory makes starts several times faster on slow disks (copying a
/// fresh PostgreSQL cluster: 0.05 s on tmpfs, 0.4 s on a VM disk). Small `/dev/shm`s, like
/// Docker's 64 MiB default, are skipped: PostgreSQL also needs room there for its dynamic
/// shared memory.
fn base_dir() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        if let Some(dir) = std::env::var_os("DBCOLLECTOR_TEST_DIR") {
            return PathBuf::from(dir);
        }
        let shm = Path::new("/dev/shm");
        if free_bytes(shm).is_some_and(|free| free >= 2 << 30) {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
}

/// Bytes available to unprivileged users on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain data, written by the call; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Creates a directory for a template that is shared by every server of this process:
/// like [`server_dir`], but kept until the process exits normally (and swept by the next
/// process otherwise).
pub(crate) fn template_dir(kind: &str, owner: Option<ServiceUser>) -> anyhow::Result<PathBuf> {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static REGISTER: Once = Once::new();

    extern "C" fn remove_templates() {
        let dirs = std::mem::take(&mut *DIRS.lock().unwrap_or_else(|p| p.into_inner()));
        for dir in dirs {
            let _ = fs::remove_dir_all(dir);
        }
    }

    REGISTER.call_once(|| {
        // SAFETY: registers a plain function that cannot unwind; it runs at normal exit.
        unsafe { libc::atexit(remove_templates) };
    });
    let dir = server_dir(kind, owner)?.keep();
    DIRS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.clone());
    Ok(dir)
}

/// Gives `path` to `user`.
pub(crate) fn chown(path: &Path, user: ServiceUser) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// Removes server directories whose owning test process is gone (it was killed before its
/// servers' `Drop` could run).
fn sweep_stale_dirs() {
    let bases = [base_dir().to_path_buf(), std::env::temp_dir()];
    let entries = bases
        .iter()
        .filter_map(|base| fs::read_dir(base).ok())
        .flatten();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(owner) = fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let Ok(pid) = owner.trim().parse::<libc::pid_t>() else {
            continue;
        };
        if !process_exists(pid) {
            tracing::debug!(dir = %path.display(), "removing a stale server directory");
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Whether a process with this id exists (possibly owned by another user).
fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
