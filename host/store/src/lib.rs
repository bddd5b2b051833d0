//! Variables and blocks (`{{ prefect.variables.* }}`, `{{ prefect.blocks.* }}`) in a SQL
//! database through sqlx: SQLite embedded by default (`$HOIST_HOME/hoist.db`, mode 0600),
//! PostgreSQL when `HOIST_DATABASE_URL=postgres://...`. The same SQL runs on both.
//!
//! Blocks can be secret (every block of type `secret` is): their string values are handed
//! to the runner's redactor and shown as `********` by the CLI.
#![deny(missing_docs)]
// No function in library code over 80 lines (clippy.toml): a CI check.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

/// A store error, naming the database (never a secret).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not open or migrate the database.
    #[error("cannot open the database {url}: {source}")]
    Open {
        /// The URL with any password masked.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored value is not JSON (the database was edited by hand).
    #[error("stored value of {0} is not valid JSON")]
    Corrupt(String),
    /// The database file or its directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One block document.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Document id (for `$ref`).
    pub id: String,
    /// Type slug.
    pub slug: String,
    /// Document name.
    pub name: String,
    /// Its fields.
    pub data: Value,
    /// Whether its values are secret.
    pub secret: bool,
}

/// The variables-and-blocks store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    url: String,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS hoist_variables (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS hoist_events (id TEXT PRIMARY KEY, occurred TEXT NOT NULL, event TEXT NOT NULL, \
     resource TEXT NOT NULL, payload TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS hoist_blocks (id TEXT PRIMARY KEY, slug TEXT NOT NULL, name TEXT NOT NULL, \
     data TEXT NOT NULL, secret INTEGER NOT NULL, UNIQUE (slug, name))",
];

/// How long to wait for the database. A local or LAN database that has not answered in
/// 5 s is down; saying so beats a 30 s hang before every step that needs a variable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `$HOIST_HOME` (default `~/.hoist`); see [`hoist_policy::paths`].
pub fn hoist_home() -> PathBuf {
    hoist_policy::paths::home()
}

/// The URL with the password (if any) replaced by `********`.
fn masked(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:********{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Store {
    /// Open the default store: `HOIST_DATABASE_URL`, else SQLite in `$HOIST_HOME/hoist.db`.
    pub async fn open_default() -> Result<Self, StoreError> {
        match std::env::var("HOIST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Self::open(&url).await,
            _ => Self::open_sqlite(&hoist_policy::paths::database()).await,
        }
    }

    /// Open (creating if needed, mode 0600 in a 0700 directory) a SQLite database file.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Create {
                    path: dir.into(),
                    source,
                })?;
        }
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Create {
                    path: path.into(),
                    source,
                })?;
        }
        Self::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Open a database by URL (`sqlite://...` or `postgres://...`) and create the tables.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        install_default_drivers();
        let open_err = |source| StoreError::Open {
            url: masked(url),
            source,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await
            .map_err(open_err)?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await.map_err(open_err)?;
        }
        Ok(Self {
            pool,
            url: masked(url),
        })
    }

    /// The database URL, password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Set a variable.
    pub async fn set_variable(&self, name: &str, value: &Value) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO hoist_variables (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A variable's value.
    pub async fn variable(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let row = sqlx::query("SELECT value FROM hoist_variables WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| parse(&r.try_get::<String, _>(0)?, name))
            .transpose()
    }

    /// Several variables at once (missing ones are absent from the map).
    pub async fn variables(
        &self,
        names: impl IntoIterator<Item = &String>,
    ) -> Result<BTreeMap<String, Value>, StoreError> {
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(v) = self.variable(name).await? {
                out.insert(name.clone(), v);
            }
        }
        Ok(out)
    }

    /// All variables, by name.
    pub async fn list_variables(&self) -> Result<Vec<(String, Value)>, StoreError> {
        let rows = sqlx::query("SELECT name, value FROM hoist_variables ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                let value = parse(&r.try_get::<String, _>(1)?, &name)?;
                Ok((name, value))
            })
            .collect()
    }

    /// Remove a variable; whether it existed.
    pub async fn unset_variable(&self, name: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM hoist_variables WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Create or replace a block document; returns its id (kept when replacing).
    pub async fn set_block(
        &self,
        slug: &str,
        name: &str,
        data: &Value,
        secret: bool,
    ) -> Result<String, StoreError> {
        let id = match self.block(slug, name).await? {
            Some(b) => b.id,
            None => new_id(),
        };
        sqlx::query(
            "INSERT INTO hoist_blocks (id, slug, name, data, secret) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (slug, name) DO UPDATE SET data = excluded.data, secret = excluded.secret",
        )
        .bind(&id)
        .bind(slug)
        .bind(name)
        .bind(data.to_string())
        .bind(i32::from(secret || slug == "secret"))
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// A block by type slug and name.
    pub async fn block(&self, slug: &str, name: &str) -> Result<Option<Block>, StoreError> {
        let row = sqlx::query(
            "SELECT id, slug, name, data, secret FROM hoist_blocks WHERE slug = $1 AND name = $2",
        )
        .bind(slug)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| block_of(&r)).transpose()
    }

    /// A block by id.
    pub async fn block_by_id(&self, id: &str) -> Result<Option<Block>, StoreError> {
        let row =
            sqlx::query("SELECT id, slug, name, data, secret FROM hoist_blocks WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| block_of(&r)).transpose()
    }

    /// All blocks, by type and name.
    pub async fn list_blocks(&self) -> Result<Vec<Block>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, slug, name, data, secret FROM hoist_blocks ORDER BY slug, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(block_of).collect()
    }

    /// Remove a block; whether it existed.
    pub async fn remove_block(&self, slug: &str, name: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM hoist_blocks WHERE slug = $1 AND name = $2")
            .bind(slug)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }
}

/// A recorded event (e.g. `prefect.flow-run.pull-step.executed`).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Event id.
    pub id: String,
    /// When, RFC 3339 UTC.
    pub occurred: String,
    /// Event name.
    pub event: String,
    /// The resource it is about, e.g. `prefect.flow-run.<id>`.
    pub resource: String,
    /// Its payload. Step inputs in it are untemplated: no secret was resolved into them.
    pub payload: Value,
}

impl Store {
    /// Record an event.
    pub async fn record_event(
        &self,
        event: &str,
        resource: &str,
        payload: &Value,
    ) -> Result<Event, StoreError> {
        let e = Event {
            id: new_id(),
            occurred: now_rfc3339(),
            event: event.into(),
            resource: resource.into(),
            payload: payload.clone(),
        };
        sqlx::query("INSERT INTO hoist_events (id, occurred, event, resource, payload) VALUES ($1, $2, $3, $4, $5)")
            .bind(&e.id)
            .bind(&e.occurred)
            .bind(&e.event)
            .bind(&e.resource)
            .bind(e.payload.to_string())
            .execute(&self.pool)
            .await?;
        Ok(e)
    }

    /// Events about a resource, oldest first.
    pub async fn events(&self, resource: &str) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query("SELECT id, occurred, event, resource, payload FROM hoist_events WHERE resource = $1 ORDER BY occurred, id")
            .bind(resource)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    id: r.try_get(0)?,
                    occurred: r.try_get(1)?,
                    event: r.try_get(2)?,
                    resource: r.try_get(3)?,
                    payload: parse(&r.try_get::<String, _>(4)?, "event")?,
                })
            })
            .collect()
    }
}

use hoist_policy::time::now_rfc3339;

fn parse(text: &str, what: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt(what.to_string()))
}

fn block_of(r: &sqlx::any::AnyRow) -> Result<Block, StoreError> {
    let slug: String = r.try_get(1)?;
    let name: String = r.try_get(2)?;
    let data = parse(&r.try_get::<String, _>(3)?, &format!("block {slug}/{name}"))?;
    let secret: i64 = r
        .try_get::<i64, _>(4)
        .or_else(|_| r.try_get::<i32, _>(4).map(i64::from))?;
    Ok(Block {
        id: r.try_get(0)?,
        slug,
        name,
        data,
        secret: secret != 0,
    })
}

/// A random id in UUID v4 form.
fn new_id() -> String {
    let mut b = [0u8; 16];
    getrandom(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = hoist_policy::encoding::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        for (i, x) in buf.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ (std::process::id() as u8);
        }
    }
}

pub use hoist_policy::secrets::{MIN_SECRET_LEN, secret_strings};

/// The local store as the source of the blocks and variables templates name: what
/// `hoist block` / `hoist variable` set. Secret blocks' strings come back for masking.
impl hoist_project::template::Values for Store {
    type Error = StoreError;

    async fn blocks(
        &self,
        names: &std::collections::BTreeSet<(String, String)>,
        ids: &std::collections::BTreeSet<String>,
    ) -> Result<hoist_project::template::FoundBlocks, StoreError> {
        let mut found = hoist_project::template::FoundBlocks::default();
        let keep = |b: Block, found: &mut hoist_project::template::FoundBlocks| {
            if b.secret {
                hoist_policy::secrets::secret_strings(&b.data, &mut found.secrets);
            }
            b.data
        };
        for (slug, name) in names {
            if let Some(b) = self.block(slug, name).await? {
                let data = keep(b, &mut found);
                found
                    .blocks
                    .by_name
                    .insert((slug.clone(), name.clone()), data);
            }
        }
        for id in ids {
            if let Some(b) = self.block_by_id(id).await? {
                let data = keep(b, &mut found);
                found.blocks.by_id.insert(id.clone(), data);
            }
        }
        Ok(found)
    }

    async fn variables(
        &self,
        names: &std::collections::BTreeSet<String>,
    ) -> Result<BTreeMap<String, Value>, StoreError> {
        Store::variables(self, names).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_masked() {
        assert_eq!(
            masked("postgres://me:hunter2@db:5432/x"),
            "postgres://me:********@db:5432/x"
        );
        assert_eq!(masked("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}

/// Pull-step events recorded in the store (`hoist pull` with a flow-run id and no
/// Prefect server).
impl hoist_project::events::EventSink for Store {
    fn record<'a>(
        &'a self,
        name: &'a str,
        resource: &'a str,
        payload: &'a Value,
    ) -> hoist_project::events::Recorded<'a> {
        Box::pin(async move {
            self.record_event(name, resource, payload)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// The default store (`HOIST_DATABASE_URL`, else `$HOIST_HOME/hoist.db`), opened the
/// first time a template names a block or a variable: projects without any never
/// touch a database.
#[derive(Debug, Default)]
pub struct LocalStore {
    store: tokio::sync::OnceCell<Store>,
}

impl LocalStore {
    /// This store, already open.
    pub fn with(store: Store) -> Self {
        let cell = tokio::sync::OnceCell::new();
        let _ = cell.set(store);
        Self { store: cell }
    }

    async fn get(&self) -> Result<&Store, StoreError> {
        self.store.get_or_try_init(Store::open_default).await
    }
}

impl hoist_project::template::Values for LocalStore {
    type Error = StoreError;

    async fn blocks(
        &self,
        names: &std::collections::BTreeSet<(String, String)>,
        ids: &std::collections::BTreeSet<String>,
    ) -> Result<hoist_project::template::FoundBlocks, StoreError> {
        self.get().await?.blocks(names, ids).await
    }

    async fn variables(
        &self,
        names: &std::collections::BTreeSet<String>,
    ) -> Result<BTreeMap<String, Value>, StoreError> {
        hoist_project::template::Values::variables(self.get().await?, names).await
    }
}
