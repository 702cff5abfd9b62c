//! What a MySQL or MariaDB server offers: flavor, version, performance_schema, digest
//! columns, replica status spelling and the monitoring user's grants.
//!
//! MariaDB reports versions like `10.11.6-MariaDB`, which must never be compared with
//! MySQL's `8.0` (case my-01): every version check here is per flavor. A missing
//! capability costs only the families that need it; it is logged once, when it appears,
//! and exported as `capability_missing{target,capability}` until it goes away.

use std::collections::BTreeSet;
use std::sync::Arc;

use sqlx::MySqlConnection;

use super::queries;
use crate::telemetry::{CapabilityLabels, Metrics};

/// The server's lineage; decides variable names and SQL spellings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Oracle MySQL (and Percona Server).
    MySql,
    /// MariaDB.
    MariaDb,
}

impl Flavor {
    /// The `db.system.name` of the flavor.
    pub fn system(self) -> &'static str {
        match self {
            Flavor::MySql => "mysql",
            Flavor::MariaDb => "mariadb",
        }
    }
}

/// A `major.minor.patch` version, compared only within one flavor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

/// Reads flavor and version from `SELECT VERSION()`, e.g. `8.0.36-0ubuntu0.22.04.1`,
/// `10.11.6-MariaDB-log` or, from old MariaDB proxies, `5.5.5-10.4.12-MariaDB`.
pub fn parse_version(text: &str) -> (Flavor, Version) {
    let flavor = if text.to_ascii_lowercase().contains("mariadb") {
        Flavor::MariaDb
    } else {
        Flavor::MySql
    };
    // MariaDB once prefixed its version with `5.5.5-` for old replication clients.
    let text = match flavor {
        Flavor::MariaDb => text.strip_prefix("5.5.5-").unwrap_or(text),
        Flavor::MySql => text,
    };
    let numbers = text
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("");
    let mut parts = numbers.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let version = Version(
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (flavor, version)
}

/// How replica status is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaSyntax {
    /// `SHOW REPLICA STATUS` (MySQL 8.0.22+, MariaDB 10.5.1+).
    Replica,
    /// `SHOW SLAVE STATUS` (older servers).
    Slave,
}

impl ReplicaSyntax {
    /// The syntax a server understands. MariaDB answers `SHOW REPLICA STATUS` with the
    /// old column names (`Seconds_Behind_Master`); the query reads either spelling.
    pub fn for_server(flavor: Flavor, version: Version) -> Self {
        let new = match flavor {
            Flavor::MySql => version >= Version(8, 0, 22),
            Flavor::MariaDb => version >= Version(10, 5, 1),
        };
        if new {
            ReplicaSyntax::Replica
        } else {
            ReplicaSyntax::Slave
        }
    }
}

/// A capability a target can lack. The label values are fixed, so the metric stays
/// bounded; grants are named as they are written in `GRANT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// `performance_schema` is OFF (MariaDB's default): it is only set at server start.
    PerformanceSchema,
    /// The `statements_digest` consumer is disabled: the digest table stays empty.
    DigestConsumer,
    /// The digest table lacks a column every supported version has.
    DigestColumns,
    /// `SELECT` on `performance_schema` is not granted.
    GrantPerformanceSchema,
    /// `SLAVE MONITOR` (MariaDB 10.5.9+) is not granted.
    GrantSlaveMonitor,
    /// `REPLICATION CLIENT` (MySQL, older MariaDB) is not granted.
    GrantReplicationClient,
    /// `PROCESS` is not granted.
    GrantProcess,
}

impl Capability {
    /// The `capability` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::PerformanceSchema => "performance_schema",
            Capability::DigestConsumer => "performance_schema.statements_digest",
            Capability::DigestColumns => "performance_schema.digest_columns",
            Capability::GrantPerformanceSchema => "grant:SELECT ON performance_schema.*",
            Capability::GrantSlaveMonitor => "grant:SLAVE MONITOR",
            Capability::GrantReplicationClient => "grant:REPLICATION CLIENT",
            Capability::GrantProcess => "grant:PROCESS",
        }
    }

    /// What goes uncollected without it, for the log.
    fn costs(self) -> &'static str {
        match self {
            Capability::PerformanceSchema | Capability::GrantPerformanceSchema => {
                "table and index I/O waits and statement digests"
            }
            Capability::DigestConsumer | Capability::DigestColumns => "statement digests",
            Capability::GrantSlaveMonitor | Capability::GrantReplicationClient => "replica status",
            // No family of this receiver needs it today; other sessions' threads stay
            // hidden, which operators expect a monitoring user to see.
            Capability::GrantProcess => "visibility of other sessions",
        }
    }
}

/// Which optional columns the digest table has (case my-01: MariaDB and MySQL 5.7 lack
/// the MySQL 8 ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DigestColumns {
    /// Every column the digest query reads exists.
    pub required: bool,
    /// `SUM_CPU_TIME` (MySQL 8.0.28+).
    pub cpu_time: bool,
    /// `QUANTILE_95/99/999` (MySQL 8.0.3+); probed, not yet exported.
    pub quantiles: bool,
    /// `QUERY_SAMPLE_TEXT` (MySQL 8.0.3+); probed, never exported (raw literals).
    pub sample_text: bool,
}

/// The columns of `events_statements_summary_by_digest` the digest query reads.
pub const DIGEST_REQUIRED: [&str; 14] = [
    "SCHEMA_NAME",
    "DIGEST",
    "DIGEST_TEXT",
    "COUNT_STAR",
    "SUM_TIMER_WAIT",
    "SUM_LOCK_TIME",
    "SUM_ERRORS",
    "SUM_ROWS_AFFECTED",
    "SUM_ROWS_SENT",
    "SUM_ROWS_EXAMINED",
    "SUM_CREATED_TMP_DISK_TABLES",
    "SUM_CREATED_TMP_TABLES",
    "SUM_SORT_ROWS",
    "SUM_NO_INDEX_USED",
];

impl DigestColumns {
    /// Reads the column list of the digest table.
    pub fn from_columns<'a>(columns: impl IntoIterator<Item = &'a str>) -> Self {
        let set: BTreeSet<String> = columns.into_iter().map(str::to_ascii_uppercase).collect();
        Self {
            required: DIGEST_REQUIRED.iter().all(|c| set.contains(*c)),
            cpu_time: set.contains("SUM_CPU_TIME"),
            quantiles: set.contains("QUANTILE_95"),
            sample_text: set.contains("QUERY_SAMPLE_TEXT"),
        }
    }
}

/// What the server offers this target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// MySQL or MariaDB.
    pub flavor: Flavor,
    /// Its version (compare within the flavor only).
    pub version: Version,
    /// `@@performance_schema` is ON and the user may read the I/O wait tables.
    pub io_waits: bool,
    /// Digests are collectable: performance_schema ON, readable, consumer enabled, the
    /// columns present.
    pub digests: bool,
    /// Digest table columns.
    pub digest_columns: DigestColumns,
    /// Replica status spelling.
    pub replica_syntax: ReplicaSyntax,
    /// The user may run it.
    pub replica: bool,
    /// What is missing.
    pub missing: BTreeSet<Capability>,
}

/// The grantee string `USER_PRIVILEGES` uses (`'user'@'host'`) for `CURRENT_USER()`
/// (`user@host`; the host never holds `@`, the user may).
pub fn grantee(current_user: &str) -> String {
    let (user, host) = current_user.rsplit_once('@').unwrap_or((current_user, ""));
    format!("'{user}'@'{host}'")
}

/// Probes the server over `conn`. `carrier` targets also probe the server-wide families'
/// requirements (replica status and PROCESS).
///
/// # Errors
/// Only when the version cannot be read; every other probe failure is a capability gap.
pub(super) async fn probe(
    conn: &mut MySqlConnection,
    carrier: bool,
    timeout: std::time::Duration,
) -> Result<Capabilities, super::Error> {
    use super::timed;

    let (version_text, current_user) =
        timed("version", timeout, queries::version(&mut *conn)).await?;
    let (flavor, version) = parse_version(&version_text);
    let mut missing = BTreeSet::new();

    // @@performance_schema is unknown on servers built without it: treat as OFF.
    let ps_on = match timed(
        "performance_schema",
        timeout,
        queries::performance_schema(conn),
    )
    .await
    {
        Ok(on) => on,
        Err(e) if e.is_server_error() => false,
        Err(e) => return Err(e),
    };

    let mut io_waits = false;
    let mut digest_columns = DigestColumns::default();
    let mut consumer = true;
    if !ps_on {
        missing.insert(Capability::PerformanceSchema);
    } else {
        // information_schema lists only the tables the user may read.
        let columns = timed("ps_columns", timeout, queries::ps_columns(conn)).await?;
        io_waits = columns.iter().any(|(t, _)| t == queries::TABLE_IO_TABLE)
            && columns.iter().any(|(t, _)| t == queries::INDEX_IO_TABLE);
        digest_columns = DigestColumns::from_columns(
            columns
                .iter()
                .filter(|(t, _)| t == queries::DIGEST_TABLE)
                .map(|(_, c)| c.as_str()),
        );
        let digest_visible = columns.iter().any(|(t, _)| t == queries::DIGEST_TABLE);
        if !io_waits || !digest_visible {
            missing.insert(Capability::GrantPerformanceSchema);
        } else if !digest_columns.required {
            missing.insert(Capability::DigestColumns);
        }
        match timed("digest_consumer", timeout, queries::digest_consumer(conn)).await {
            Ok(Some(false)) => {
                consumer = false;
                missing.insert(Capability::DigestConsumer);
            }
            Ok(_) => {}
            Err(e) if e.is_server_error() => {}
            Err(e) => return Err(e),
        }
    }
    let digests = ps_on
        && consumer
        && digest_columns.required
        && !missing.contains(&Capability::GrantPerformanceSchema);

    let replica_syntax = ReplicaSyntax::for_server(flavor, version);
    let mut replica = carrier;
    if carrier {
        match timed(
            "replica_status",
            timeout,
            queries::replica_status(conn, replica_syntax),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.is_access_denied() => {
                replica = false;
                missing.insert(replica_grant(flavor, version));
            }
            // Any other failure shows, and is logged, when the family runs.
            Err(e) if e.is_server_error() => {}
            Err(e) => return Err(e),
        }
        match timed(
            "privileges",
            timeout,
            queries::privileges(conn, &grantee(&current_user)),
        )
        .await
        {
            Ok(privileges) if !privileges.iter().any(|p| p == "PROCESS") => {
                missing.insert(Capability::GrantProcess);
            }
            // TODO: privileges granted through roles are not listed in USER_PRIVILEGES;
            // PROCESS gates no family today, so a false report costs only a warning.
            Ok(_) => {}
            Err(e) if e.is_server_error() => {}
            Err(e) => return Err(e),
        }
    }

    Ok(Capabilities {
        flavor,
        version,
        io_waits,
        digests,
        digest_columns,
        replica_syntax,
        replica,
        missing,
    })
}

/// The grant that allows replica status on this server.
pub fn replica_grant(flavor: Flavor, version: Version) -> Capability {
    match flavor {
        Flavor::MariaDb if version >= Version(10, 5, 9) => Capability::GrantSlaveMonitor,
        _ => Capability::GrantReplicationClient,
    }
}

/// Reports capability changes once: a warning and a gauge when one goes missing, an info
/// line and the gauge removed when it comes back.
#[derive(Debug)]
pub struct Reporter {
    target: Arc<str>,
    metrics: Arc<Metrics>,
    reported: BTreeSet<Capability>,
}

impl Reporter {
    /// A reporter for `target` with nothing reported yet.
    pub fn new(target: Arc<str>, metrics: Arc<Metrics>) -> Self {
        Self {
            target,
            metrics,
            reported: BTreeSet::new(),
        }
    }

    fn labels(&self, c: Capability) -> CapabilityLabels {
        CapabilityLabels {
            target: self.target.to_string(),
            capability: c.as_str().to_owned(),
        }
    }

    /// Publishes `missing`, logging only what changed since the last call.
    pub fn update(&mut self, missing: &BTreeSet<Capability>) {
        for &c in missing.difference(&self.reported) {
            tracing::warn!(
                target = %self.target,
                capability = c.as_str(),
                uncollected = c.costs(),
                "mysql capability missing",
            );
            self.metrics
                .capability_missing
                .get_or_create(&self.labels(c))
                .set(1);
        }
        for &c in self.reported.difference(missing) {
            tracing::info!(
                target = %self.target,
                capability = c.as_str(),
                "mysql capability available again",
            );
            self.metrics.capability_missing.remove(&self.labels(c));
        }
        self.reported = missing.clone();
    }

    /// Removes every gauge (the collector is closing).
    pub fn clear(&mut self) {
        self.update(&BTreeSet::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_versions_are_never_read_as_mysql_8() {
        // case my-01
        let (flavor, version) = parse_version("10.11.19-MariaDB-0+deb12u1");
        assert_eq!(flavor, Flavor::MariaDb);
        assert_eq!(version, Version(10, 11, 19));
        assert_eq!(
            parse_version("5.5.5-10.4.12-MariaDB-log"),
            (Flavor::MariaDb, Version(10, 4, 12))
        );
        assert_eq!(
            parse_version("8.0.36-0ubuntu0.22.04.1"),
            (Flavor::MySql, Version(8, 0, 36))
        );
        assert_eq!(
            parse_version("5.7.44-log"),
            (Flavor::MySql, Version(5, 7, 44))
        );
        assert_eq!(
            parse_version("8.0.mysql_aurora.3.04.0"),
            (Flavor::MySql, Version(8, 0, 0))
        );
        assert_eq!(parse_version("garbage").1, Version(0, 0, 0));
    }

    #[test]
    fn replica_status_spelling_follows_each_flavors_own_version() {
        use ReplicaSyntax::*;
        assert_eq!(
            ReplicaSyntax::for_server(Flavor::MySql, Version(8, 0, 22)),
            Replica
        );
        assert_eq!(
            ReplicaSyntax::for_server(Flavor::MySql, Version(8, 0, 21)),
            Slave
        );
        assert_eq!(
            ReplicaSyntax::for_server(Flavor::MySql, Version(5, 7, 44)),
            Slave
        );
        assert_eq!(
            ReplicaSyntax::for_server(Flavor::MariaDb, Version(10, 5, 1)),
            Replica
        );
        assert_eq!(
            ReplicaSyntax::for_server(Flavor::MariaDb, Version(10, 4, 30)),
            Slave
        );
        // 10.4 is numerically above 8.0.22 but is not a MySQL version.
        assert_eq!(
            replica_grant(Flavor::MariaDb, Version(10, 11, 6)),
            Capability::GrantSlaveMonitor
        );
        assert_eq!(
            replica_grant(Flavor::MariaDb, Version(10, 5, 8)),
            Capability::GrantReplicationClient
        );
        assert_eq!(
            replica_grant(Flavor::MySql, Version(8, 0, 36)),
            Capability::GrantReplicationClient
        );
    }

    #[test]
    fn mariadb_digest_table_has_the_required_columns_but_no_mysql_8_extras() {
        // The column list of MariaDB 10.11's events_statements_summary_by_digest.
        let mariadb = [
            "SCHEMA_NAME",
            "DIGEST",
            "DIGEST_TEXT",
            "COUNT_STAR",
            "SUM_TIMER_WAIT",
            "MIN_TIMER_WAIT",
            "AVG_TIMER_WAIT",
            "MAX_TIMER_WAIT",
            "SUM_LOCK_TIME",
            "SUM_ERRORS",
            "SUM_WARNINGS",
            "SUM_ROWS_AFFECTED",
            "SUM_ROWS_SENT",
            "SUM_ROWS_EXAMINED",
            "SUM_CREATED_TMP_DISK_TABLES",
            "SUM_CREATED_TMP_TABLES",
            "SUM_SELECT_FULL_JOIN",
            "SUM_SELECT_FULL_RANGE_JOIN",
            "SUM_SELECT_RANGE",
            "SUM_SELECT_RANGE_CHECK",
            "SUM_SELECT_SCAN",
            "SUM_SORT_MERGE_PASSES",
            "SUM_SORT_RANGE",
            "SUM_SORT_ROWS",
            "SUM_SORT_SCAN",
            "SUM_NO_INDEX_USED",
            "SUM_NO_GOOD_INDEX_USED",
            "FIRST_SEEN",
            "LAST_SEEN",
        ];
        let c = DigestColumns::from_columns(mariadb);
        assert!(c.required);
        assert!(!c.cpu_time && !c.quantiles && !c.sample_text);

        let mysql8 =
            mariadb
                .iter()
                .copied()
                .chain(["SUM_CPU_TIME", "QUANTILE_95", "QUERY_SAMPLE_TEXT"]);
        let c = DigestColumns::from_columns(mysql8);
        assert!(c.required && c.cpu_time && c.quantiles && c.sample_text);

        assert!(!DigestColumns::from_columns(["DIGEST", "COUNT_STAR"]).required);
    }

    #[test]
    fn grantee_quotes_user_and_host_splitting_at_the_last_at_sign() {
        assert_eq!(grantee("mon@%"), "'mon'@'%'");
        assert_eq!(grantee("a@b@localhost"), "'a@b'@'localhost'");
    }

    #[test]
    fn reporter_sets_gauges_for_new_gaps_and_removes_them_when_fixed() {
        let metrics = Arc::new(Metrics::unregistered());
        let mut r = Reporter::new("t1".into(), metrics.clone());
        let labels = |c: Capability| CapabilityLabels {
            target: "t1".into(),
            capability: c.as_str().into(),
        };

        r.update(&BTreeSet::from([
            Capability::PerformanceSchema,
            Capability::GrantProcess,
        ]));
        assert_eq!(
            metrics
                .capability_missing
                .get(&labels(Capability::PerformanceSchema))
                .map(|g| g.get()),
            Some(1)
        );

        r.update(&BTreeSet::from([Capability::GrantProcess]));
        assert!(metrics
            .capability_missing
            .get(&labels(Capability::PerformanceSchema))
            .is_none());
        assert_eq!(
            metrics
                .capability_missing
                .get(&labels(Capability::GrantProcess))
                .map(|g| g.get()),
            Some(1)
        );

        r.clear();
        assert!(metrics
            .capability_missing
            .get(&labels(Capability::GrantProcess))
            .is_none());
    }
}
