//! What a database error means, per dialect: whether the server is away,
//! whether the statement lost a race it can win next time, or whether the
//! database refuses a value it will never hold. Each dialect names these
//! differently: PostgreSQL by SQLSTATE, MariaDB/MySQL by error number (their
//! SQLSTATEs are too coarse: HY000 covers both a lock wait timeout and a
//! syntax error), SQLite by result code.

use sqlx::error::DatabaseError;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

/// The meaning of a database error for the call that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Meaning {
    /// The server is away, going away, short of resources, or cannot take
    /// writes right now (read-only after a failover): retry, on another connection.
    Unavailable,
    /// The statement lost a race or ran out of time (lock wait, deadlock,
    /// serialization failure, statement timeout, SQLite's write lock):
    /// the same statement can succeed if run again.
    Contended,
    /// The database refuses a value (a NUL byte, a string longer than its
    /// column, a character its encoding lacks, a constraint): the same
    /// statement will never succeed.
    Refused,
    /// Anything else: a bug or a schema problem, not worth retrying.
    Other,
}

/// Whether a connection that answered with this error should not be used again:
/// a server that went read-only stays so for its sessions, so only a new
/// connection reaches the new primary.
pub(super) fn read_only(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        return pg.code() == "25006";
    }
    if let Some(my) = db.try_downcast_ref::<MySqlDatabaseError>() {
        return matches!(my.number(), 1290 | 1792 | 1836);
    }
    false
}

/// What `e` means.
pub(super) fn meaning(e: &sqlx::Error) -> Meaning {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Meaning::Unavailable,
        sqlx::Error::Database(db) => database(db.as_ref()),
        _ => Meaning::Other,
    }
}

fn database(db: &dyn DatabaseError) -> Meaning {
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        return postgres(pg.code());
    }
    if let Some(my) = db.try_downcast_ref::<MySqlDatabaseError>() {
        return mysql(my.number());
    }
    if let Some(lite) = db.try_downcast_ref::<SqliteError>() {
        return sqlite(lite.code().and_then(|c| c.parse().ok()).unwrap_or(0));
    }
    Meaning::Other
}

/// PostgreSQL SQLSTATEs (appendix A of its manual).
fn postgres(code: &str) -> Meaning {
    match code {
        // Connection exceptions; admin / crash shutdown, cannot connect now
        // (57P01-03); short of resources, too many connections (class 53);
        // read-only transaction (a standby after failover); 55000, the state
        // a standby reports for what only a primary can do.
        c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
            Meaning::Unavailable
        }
        "25006" | "55000" => Meaning::Unavailable,
        // Serialization failure, deadlock, lock_timeout (55P03),
        // statement_timeout or a cancel (57014).
        "40001" | "40P01" | "55P03" | "57014" => Meaning::Contended,
        // Data exceptions (22021: a NUL byte or invalid UTF-8, 22001: too
        // long, 22P05: not in the database's encoding), integrity constraint
        // violations, program limits (54000: an index row too large).
        c if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => Meaning::Refused,
        _ => Meaning::Other,
    }
}

/// MariaDB / MySQL error numbers.
fn mysql(number: u16) -> Meaning {
    match number {
        // Too many connections (1040), shutdown in progress (1053), read-only
        // server or transaction (1290 --read-only, 1792, 1836), connection
        // killed (MariaDB 1927), server gone away / lost (2006, 2013: client
        // codes some servers and proxies also send).
        1040 | 1053 | 1290 | 1792 | 1836 | 1927 | 2006 | 2013 => Meaning::Unavailable,
        // Lock wait timeout (1205), deadlock (1213), query interrupted
        // (1317), MariaDB max_statement_time (1969), MySQL
        // max_execution_time (3024), NOWAIT lock (3572).
        1205 | 1213 | 1317 | 1969 | 3024 | 3572 => Meaning::Contended,
        // NULL into NOT NULL (1048), out of range (1264), truncated (1265),
        // incorrect string value for the column's charset (1366), data too
        // long (1406), invalid JSON (3140), CHECK failed (MySQL 3819,
        // MariaDB 4025).
        1048 | 1264 | 1265 | 1366 | 1406 | 3140 | 3819 | 4025 => Meaning::Refused,
        _ => Meaning::Other,
    }
}

/// SQLite result codes; the low byte is the primary code of an extended one.
fn sqlite(code: i32) -> Meaning {
    match code & 0xff {
        // SQLITE_BUSY and SQLITE_LOCKED, once busy_timeout has run out.
        5 | 6 => Meaning::Contended,
        // SQLITE_IOERR, SQLITE_FULL (disk full), SQLITE_CANTOPEN.
        10 | 13 | 14 => Meaning::Unavailable,
        // SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH.
        18..=20 => Meaning::Refused,
        _ => Meaning::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dialect_names_the_same_meanings_its_own_way() {
        for (code, meaning) in [
            ("08006", Meaning::Unavailable),
            ("57P01", Meaning::Unavailable),
            ("53300", Meaning::Unavailable),
            ("25006", Meaning::Unavailable),
            ("40001", Meaning::Contended),
            ("40P01", Meaning::Contended),
            ("55P03", Meaning::Contended),
            ("57014", Meaning::Contended),
            ("22021", Meaning::Refused),
            ("22001", Meaning::Refused),
            ("23514", Meaning::Refused),
            ("54000", Meaning::Refused),
            ("42703", Meaning::Other),
        ] {
            assert_eq!(postgres(code), meaning, "PostgreSQL {code}");
        }
        for (number, meaning) in [
            (1290, Meaning::Unavailable),
            (2013, Meaning::Unavailable),
            (1205, Meaning::Contended),
            (1213, Meaning::Contended),
            (1406, Meaning::Refused),
            (1366, Meaning::Refused),
            (1064, Meaning::Other),
        ] {
            assert_eq!(mysql(number), meaning, "MySQL {number}");
        }
        for (code, meaning) in [
            (5, Meaning::Contended),
            (517, Meaning::Contended),
            (6, Meaning::Contended),
            (19, Meaning::Refused),
            (2067, Meaning::Refused),
            (1, Meaning::Other),
        ] {
            assert_eq!(sqlite(code), meaning, "SQLite {code}");
        }
    }
}
