//! One SQLite connection per database, behind a mutex, used from `spawn_blocking`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::error::ApiError;

/// Cheap-clone handle to a database file.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) the file in WAL mode, runs `schema`, and calls `seed` inside
    /// one transaction when `is_empty` says the database holds no data yet.
    pub fn open(
        path: &Path,
        schema: &str,
        is_empty: impl FnOnce(&Connection) -> rusqlite::Result<bool>,
        seed: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<()>,
    ) -> anyhow::Result<Db> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(schema)?;
        if is_empty(&conn)? {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            seed(&tx)?;
            tx.commit()?;
            tracing::info!(db = %path.display(), "seeded a fresh database");
        }
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// `open` on a blocking thread, for a server's async `run`.
    pub async fn open_blocking(
        path: std::path::PathBuf,
        schema: &'static str,
        is_empty: impl FnOnce(&Connection) -> rusqlite::Result<bool> + Send + 'static,
        seed: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<()> + Send + 'static,
    ) -> anyhow::Result<Db> {
        tokio::task::spawn_blocking(move || Db::open(&path, schema, is_empty, seed)).await?
    }

    /// Runs read work on a blocking thread.
    pub async fn read<R, F>(&self, work: F) -> Result<R, ApiError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, ApiError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let guard = conn.lock().map_err(|_| ApiError::internal("db mutex poisoned"))?;
            work(&guard)
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Runs write work in a `BEGIN IMMEDIATE` transaction on a blocking thread; commits on
    /// `Ok`, rolls back on `Err`.
    pub async fn write<R, F>(&self, work: F) -> Result<R, ApiError>
    where
        R: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<R, ApiError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| ApiError::internal("db mutex poisoned"))?;
            let tx = guard.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = work(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(ApiError::internal)?
    }
}

/// True when `table` has no rows (the "seed if empty" check).
pub fn table_is_empty(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    let count: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
    Ok(count == 0)
}

/// True when the error is a UNIQUE / PRIMARY KEY violation.
pub fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}
