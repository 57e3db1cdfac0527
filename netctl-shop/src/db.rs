//! PostgreSQL for the product and order services: a connection pool, waiting for the
//! database at start, and the shop's schema as numbered migrations, applied once under an
//! advisory lock (both services run them at start; whichever comes first does the work).

use std::time::Duration;

use anyhow::{Context, anyhow};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

/// The shop's schema, in order. Never edit an applied migration: add one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "products",
        "CREATE TABLE products (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            price NUMERIC(12, 2) NOT NULL CHECK (price >= 0),
            stock INTEGER NOT NULL CHECK (stock >= 0),
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        INSERT INTO products (id, name, price, stock) VALUES
            ('1', 'Laptop', 999.99, 50),
            ('2', 'Mouse', 29.99, 200),
            ('3', 'Keyboard', 79.99, 150);",
    ),
    (
        2,
        "orders",
        "CREATE TABLE orders (
            id BIGSERIAL PRIMARY KEY,
            customer_id TEXT NOT NULL,
            product_id TEXT NOT NULL REFERENCES products (id),
            quantity INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
            unit_price NUMERIC(12, 2) NOT NULL,
            total_price NUMERIC(14, 2) NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );",
    ),
    (
        3,
        "notify product changes",
        // Every change to a product, whoever makes it (a service or psql), is announced on
        // the channel `product_changed` so that caches drop it.
        "CREATE FUNCTION notify_product_changed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('product_changed', COALESCE(NEW.id, OLD.id));
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER products_changed AFTER INSERT OR UPDATE OR DELETE ON products
            FOR EACH ROW EXECUTE FUNCTION notify_product_changed();",
    ),
    (
        4,
        "order idempotency keys",
        // A client that retries an order with the same key gets the first one back.
        "ALTER TABLE orders ADD COLUMN idempotency_key TEXT UNIQUE;",
    ),
    (
        5,
        "order totals fit every valid order",
        // NUMERIC(14, 2) held totals under 10^12, but a valid order can cost more (the
        // highest price the product service accepts times 1000): the INSERT failed with a
        // numeric overflow, a 500. NUMERIC(16, 2) holds every valid order's total.
        "ALTER TABLE orders ALTER COLUMN total_price TYPE NUMERIC(16, 2);",
    ),
];

/// An arbitrary constant: the advisory lock that serializes migrations.
const MIGRATION_LOCK: i64 = 0x6e65_7463_746c; // "netctl"

/// Longest a statement may run; PostgreSQL cancels (and rolls back) it after that.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a request waits for a free connection (a burst of orders queues here).
pub const POOL_WAIT: Duration = Duration::from_secs(5);
/// Longest making a new connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Together, the most a request spends on the database: below the gateway's upstream
/// timeout (10 s), so the service always answers — 201 after a commit, or 503 without
/// one — before the gateway gives up on it.
pub const MAX_DATABASE_TIME: Duration = Duration::from_secs(9);

/// A pool of at most `size` connections to `url`; connections are made lazily.
pub fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let config: tokio_postgres::Config = url.parse().context("DATABASE_URL is not a valid URL")?;
    let mut config = config;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("netctl");
    config.options(format!(
        "-c statement_timeout={}",
        STATEMENT_TIMEOUT.as_millis()
    ));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .context("building the database pool")
}

/// Waits until the database answers and the schema is up to date (or `shutdown`).
pub async fn wait_and_migrate(pool: &Pool, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut warned = false;
    loop {
        match migrate(pool).await {
            Ok(applied) => {
                if applied > 0 {
                    tracing::info!(applied, "database schema migrated");
                }
                return Ok(());
            }
            Err(e) => {
                if !warned {
                    tracing::warn!("waiting for the database: {e:#}");
                    warned = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(anyhow!("stopped while waiting for the database")),
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Applies the migrations not applied yet; returns how many.
pub async fn migrate(pool: &Pool) -> anyhow::Result<usize> {
    let mut client = pool.get().await.context("connecting to the database")?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        tx.batch_execute(
            "CREATE TABLE schema_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
    }
    let done: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("migration {version} ({name})"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied += 1;
    }
    tx.commit().await?;
    Ok(applied)
}

/// How long `SELECT 1` takes, for `/health`.
pub async fn ping(pool: &Pool) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    let client = pool.get().await.context("no database connection")?;
    client.simple_query("SELECT 1").await?;
    Ok(started.elapsed())
}

/// Why a query failed: the database is unreachable (503) or refused it (500).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(String),
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::Unavailable(describe(&e))
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() || e.as_db_error().is_none() {
            DbError::Unavailable(describe(&e))
        } else {
            DbError::Query(describe(&e))
        }
    }
}

impl DbError {
    /// The answer for a request that failed on this: 503 or 500, logged.
    pub fn answer(&self) -> crate::http::Resp {
        use hyper::StatusCode;
        tracing::warn!("{self}");
        let status = match self {
            DbError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            DbError::Query(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        crate::http::error(status, self.to_string())
    }
}

/// The error of a pool or query for logs and answers (without the connection string).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use crate::{order::validate::MAX_QUANTITY, product::handlers::MAX_PRICE};

    /// Found by schemathesis (api_schema): an order of 737 of a product priced near the
    /// maximum overflowed `orders.total_price` and answered 500.
    #[test]
    fn the_total_of_the_largest_valid_order_fits_its_column() {
        let last = MIGRATIONS
            .iter()
            .rev()
            .find(|(_, _, sql)| sql.contains("total_price"))
            .map(|(_, _, sql)| *sql)
            .unwrap_or_default();
        assert!(
            last.contains("total_price TYPE NUMERIC(16, 2)"),
            "the latest type of orders.total_price: {last}"
        );
        // NUMERIC(16, 2): below 10^14.
        assert!(MAX_PRICE * MAX_QUANTITY as f64 <= 1e14 - 0.01);
    }
}
