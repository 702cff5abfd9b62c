//! What the kernel says about a process and the machine: CPU time and memory of a
//! process from `/proc/<pid>`, cores, CPU model and RAM; and the measured programs as
//! child processes that never outlive the bench.

use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;

/// CPU time and memory of one process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time since the process started, seconds.
    pub cpu_s: f64,
    /// Resident set size now, bytes (`VmRSS`).
    pub rss: u64,
    /// Highest resident set size so far, bytes (`VmHWM`).
    pub peak_rss: u64,
}

/// Reads [`Usage`] of process `pid`.
///
/// # Errors
/// When the process is gone or its files cannot be parsed.
pub fn usage(pid: u32) -> io::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| io::Error::other("unreadable /proc stat"))?;
    Ok(Usage {
        cpu_s: ticks as f64 / clock_ticks_per_second(),
        rss: status_kib(&status, "VmRSS:").unwrap_or(0) * 1024,
        peak_rss: status_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
    })
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in clock ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    // After it come state (field 3) ... utime (14) and stime (15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of `/proc/<pid>/status` or `/proc/meminfo`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The machine the bench ran on, for the report.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Cores this process may use.
    pub cores: usize,
    /// `model name` of `/proc/cpuinfo`.
    pub cpu: String,
    /// `MemTotal`, bytes.
    pub ram: u64,
    /// The 1, 5 and 15 minute load averages when read (`/proc/loadavg`): other work on
    /// the machine slows the servers and the tools down.
    pub load: String,
}

impl Machine {
    /// Reads the machine's description; unknown parts stay empty or zero.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
            ram: status_kib(&meminfo, "MemTotal:").unwrap_or(0) * 1024,
            load: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// A measured program running as a child of the bench, its output in a log file. It is
/// killed when dropped and, should the bench die, by the kernel (parent-death signal).
#[derive(Debug)]
pub struct Child {
    name: String,
    child: tokio::process::Child,
    pid: u32,
}

impl Child {
    /// Starts `program` with `args` and `env`, output appended to `log`.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        // SAFETY: only an async-signal-safe system call between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id().context("child exited at once")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU and memory now.
    ///
    /// # Errors
    /// When the process has exited.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        usage(self.pid).with_context(|| format!("{} (pid {}) is gone", self.name, self.pid))
    }

    /// Fails when the process has exited.
    ///
    /// # Errors
    /// With its exit status.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => anyhow::bail!("{} exited: {status}", self.name),
            None => Ok(()),
        }
    }

    /// Asks the process to stop (SIGTERM) and waits up to 10 s, then kills it.
    pub async fn stop(mut self) {
        // SAFETY: plain system call on our own unreaped child.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 3000 0 0 0 \
                    150 50 0 0 20 0 9 0 100 700000000 5000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(200));
    }

    #[test]
    fn memory_lines_are_read_in_kib() {
        let status = "Name:\tworker\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss > 0 && u.peak_rss >= u.rss, "{u:?}");
    }
}
