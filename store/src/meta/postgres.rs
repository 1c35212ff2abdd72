//! The shared metadata engine: PostgreSQL, for several registry replicas. One table of
//! records keyed by (family, key), versioned migrations applied at connect, batches as
//! transactions, conditional writes as single statements, a small pool of connections on
//! threads of their own that reconnects after the server restarts.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::{Client, NoTls};

use super::{Cf, MetaEngine, MetaError, Op, Result, SCHEMA_KEY, SCHEMA_VERSION};

/// Connections (and so threads) in the pool.
const POOL_SIZE: usize = 8;
/// How long a connection attempt may take before the database counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one migration per version; each runs once, in order, in a transaction.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE strata_records (
         cf    text  NOT NULL,
         key   bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (cf, key)
     )",
)];
/// Serialises migrations across replicas starting together.
const MIGRATION_LOCK: i64 = 0x5354_5241_5441; // "STRATA"

type Job = Box<dyn FnOnce(&mut Option<Client>) + Send>;

/// PostgreSQL behind a pool of worker threads (the synchronous client runs its own small
/// runtime, which must not nest in the caller's: callers may be async tasks).
pub(super) struct Postgres {
    jobs: Mutex<mpsc::Sender<Job>>,
    config: postgres::Config,
    url_for_debug: String,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.url_for_debug)
            .finish()
    }
}

fn unavailable(e: postgres::Error) -> MetaError {
    MetaError::Unavailable(e.to_string())
}

/// A failure the server or the network caused — worth a 503 and a retry on a fresh
/// connection — or one of the statement.
fn backend(e: postgres::Error) -> MetaError {
    let transient = match e.as_db_error() {
        None => true,
        // Connection exceptions (08), shutdowns and "cannot connect now" (57P0x),
        // insufficient resources (53), serialisation failures and deadlocks (40).
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code.starts_with("40")
        }
    };
    if e.is_closed() || transient {
        MetaError::Unavailable(format!("{e}: {}", e.as_db_error().map_or("", |d| d.message())))
    } else {
        MetaError::Backend(e.to_string())
    }
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl Postgres {
    pub(super) fn connect(url: &str) -> Result<Postgres> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| MetaError::Backend(format!("bad PostgreSQL URL: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..POOL_SIZE {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("postgres-{i}"))
                .spawn(move || {
                    let mut client: Option<Client> = None;
                    loop {
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        job(&mut client);
                    }
                })
                .map_err(|e| MetaError::Backend(format!("start PostgreSQL worker: {e}")))?;
        }
        let pg = Postgres {
            jobs: Mutex::new(tx),
            config,
            url_for_debug: redacted(url),
        };
        pg.run(migrate)?;
        Ok(pg)
    }

    /// Runs `f` on a pool connection (connecting, or reconnecting if the last one broke);
    /// a failure on a broken connection is retried once on a fresh one.
    fn run<T: Send + 'static>(&self, f: impl Fn(&mut Client) -> Result<T> + Send + 'static) -> Result<T> {
        let config = self.config.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |slot: &mut Option<Client>| {
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                if slot.as_ref().is_none_or(|c| c.is_closed()) {
                    match config.connect(NoTls) {
                        Ok(c) => *slot = Some(c),
                        Err(e) => break Err(unavailable(e)),
                    }
                }
                let client = slot.as_mut().expect("connected above");
                match f(client) {
                    Err(MetaError::Unavailable(_)) if attempt == 1 => {
                        *slot = None;
                        continue;
                    }
                    Err(e @ MetaError::Unavailable(_)) => {
                        *slot = None;
                        break Err(e);
                    }
                    other => break other,
                }
            };
            let _ = tx.send(result);
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| MetaError::Unavailable("PostgreSQL pool stopped".into()))?;
        rx.recv()
            .map_err(|_| MetaError::Unavailable("PostgreSQL worker stopped".into()))?
    }
}

fn migrate(c: &mut Client) -> Result<()> {
    let mut tx = c.transaction().map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(backend)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS strata_migrations (
             version integer PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now()
         )",
    )
    .map_err(backend)?;
    let applied: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM strata_migrations", &[])
        .map_err(backend)?
        .get(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if applied > newest {
        return Err(MetaError::Schema {
            found: format!("PostgreSQL migration {applied}"),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
        tx.batch_execute(sql).map_err(backend)?;
        tx.execute("INSERT INTO strata_migrations (version) VALUES ($1)", &[version])
            .map_err(backend)?;
    }
    let schema = SCHEMA_VERSION.to_string().into_bytes();
    tx.execute(
        "INSERT INTO strata_records (cf, key, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&Cf::Meta.name(), &SCHEMA_KEY.as_bytes(), &schema],
    )
    .map_err(backend)?;
    let found: Vec<u8> = tx
        .query_one(
            "SELECT value FROM strata_records WHERE cf = $1 AND key = $2",
            &[&Cf::Meta.name(), &SCHEMA_KEY.as_bytes()],
        )
        .map_err(backend)?
        .get(0);
    if found != schema {
        return Err(MetaError::Schema {
            found: String::from_utf8_lossy(&found).into_owned(),
        });
    }
    tx.commit().map_err(backend)
}

/// The smallest byte string above every string that starts with `prefix` (None: no bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl MetaEngine for Postgres {
    fn get(&self, cf: Cf, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.as_bytes().to_vec();
        self.run(move |c| {
            let row = c
                .query_opt(
                    "SELECT value FROM strata_records WHERE cf = $1 AND key = $2",
                    &[&cf.name(), &key],
                )
                .map_err(backend)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn scan(&self, cf: Cf, prefix: &str, keys_only: bool) -> Result<Vec<(String, Vec<u8>)>> {
        let start = prefix.as_bytes().to_vec();
        let end = prefix_end(&start);
        self.run(move |c| {
            let cols = if keys_only { "key, ''::bytea" } else { "key, value" };
            let rows = match &end {
                Some(end) => c.query(
                    &format!(
                        "SELECT {cols} FROM strata_records WHERE cf = $1 AND key >= $2 AND key < $3 ORDER BY key"
                    ),
                    &[&cf.name(), &start, end],
                ),
                None => c.query(
                    &format!("SELECT {cols} FROM strata_records WHERE cf = $1 AND key >= $2 ORDER BY key"),
                    &[&cf.name(), &start],
                ),
            }
            .map_err(backend)?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    let k: Vec<u8> = r.get(0);
                    (String::from_utf8_lossy(&k).into_owned(), r.get(1))
                })
                .collect())
        })
    }

    fn write(&self, ops: Vec<Op>) -> Result<()> {
        self.run(move |c| {
            let mut tx = c.transaction().map_err(backend)?;
            for op in &ops {
                match op {
                    Op::Put(cf, key, value) => tx.execute(
                        "INSERT INTO strata_records (cf, key, value) VALUES ($1, $2, $3)
                         ON CONFLICT (cf, key) DO UPDATE SET value = excluded.value",
                        &[&cf.name(), &key.as_bytes(), value],
                    ),
                    Op::Delete(cf, key) => tx.execute(
                        "DELETE FROM strata_records WHERE cf = $1 AND key = $2",
                        &[&cf.name(), &key.as_bytes()],
                    ),
                }
                .map_err(backend)?;
            }
            tx.commit().map_err(backend)
        })
    }

    fn compare_and_swap(
        &self,
        cf: Cf,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<Vec<u8>>,
    ) -> Result<bool> {
        let key = key.as_bytes().to_vec();
        let expected = expected.map(<[u8]>::to_vec);
        self.run(move |c| {
            let n = match (&expected, &value) {
                (None, Some(v)) => c.execute(
                    "INSERT INTO strata_records (cf, key, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&cf.name(), &key, v],
                ),
                (None, None) => c
                    .query_opt(
                        "SELECT 1 FROM strata_records WHERE cf = $1 AND key = $2",
                        &[&cf.name(), &key],
                    )
                    .map(|r| u64::from(r.is_none())),
                (Some(old), Some(v)) => c.execute(
                    "UPDATE strata_records SET value = $4 WHERE cf = $1 AND key = $2 AND value = $3",
                    &[&cf.name(), &key, old, v],
                ),
                (Some(old), None) => c.execute(
                    "DELETE FROM strata_records WHERE cf = $1 AND key = $2 AND value = $3",
                    &[&cf.name(), &key, old],
                ),
            }
            .map_err(backend)?;
            Ok(n == 1)
        })
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn is_shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(redacted("postgres://u:secret@h:1/db"), "postgres://u@h:1/db");
        assert_eq!(redacted("postgres://h/db"), "postgres://h/db");
    }
}
