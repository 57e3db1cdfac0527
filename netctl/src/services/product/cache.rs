//! The product cache in Redis (cache-aside): answers come from Redis when it has them,
//! from PostgreSQL otherwise. A Redis that fails is skipped for a moment rather than
//! waited on every request: the service keeps answering (slower, from PostgreSQL) and
//! says so in `/health`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use redis::{AsyncCommands, aio::ConnectionManager};

/// How long one Redis operation may take before the cache is skipped.
const OP_TIMEOUT: Duration = Duration::from_millis(300);
/// After a failure, requests skip Redis this long (one request then tries again).
const BACKOFF: Duration = Duration::from_secs(1);

pub const LIST_KEY: &str = "netctl:products:all";

pub fn product_key(id: &str) -> String {
    format!("netctl:product:{id}")
}

/// What a cache lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(Bytes),
    Miss,
    /// Redis is failing: go to the database.
    Down,
}

impl Lookup {
    /// The `X-Cache` header for an answer after this lookup.
    pub fn header(&self) -> &'static str {
        match self {
            Lookup::Hit(_) => "HIT",
            Lookup::Miss => "MISS",
            Lookup::Down => "BYPASS",
        }
    }
}

#[derive(Clone)]
pub struct Cache {
    conn: ConnectionManager,
    ttl_secs: u64,
    started: Instant,
    /// Monotonic ms until which Redis is skipped.
    skip_until_ms: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Cache {
    /// Connects lazily: creating the cache never waits for Redis.
    pub fn new(url: &str, ttl_secs: u64) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            ttl_secs,
            started: Instant::now(),
            skip_until_ms: Arc::new(AtomicU64::new(0)),
            last_error: Arc::new(Mutex::new(None)),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn skipping(&self) -> bool {
        self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, what: &str, e: String) {
        let first = self.skip_until_ms.load(Ordering::Relaxed) == 0 || self.last_error().is_none();
        self.skip_until_ms.store(
            self.now_ms() + BACKOFF.as_millis() as u64,
            Ordering::Relaxed,
        );
        if first {
            tracing::warn!("redis {what}: {e}; answering from PostgreSQL until it is back");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn succeeded(&self) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.take().is_some() {
            tracing::info!("redis is back; caching again");
        }
        self.skip_until_ms.store(0, Ordering::Relaxed);
    }

    /// The last Redis error while it is failing.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn run<T>(
        &self,
        what: &str,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => {
                if self.skip_until_ms.load(Ordering::Relaxed) != 0 {
                    self.succeeded();
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(what, e.to_string());
                None
            }
            Err(_) => {
                self.failed(what, format!("no answer within {OP_TIMEOUT:?}"));
                None
            }
        }
    }

    pub async fn get(&self, key: &str) -> Lookup {
        if self.skipping() {
            return Lookup::Down;
        }
        let mut conn = self.conn.clone();
        match self.run("GET", conn.get::<_, Option<Vec<u8>>>(key)).await {
            Some(Some(v)) => Lookup::Hit(Bytes::from(v)),
            Some(None) => Lookup::Miss,
            None => Lookup::Down,
        }
    }

    /// Stores `value` with the TTL, in the background (the answer does not wait).
    pub fn put(&self, key: String, value: Bytes) {
        if self.skipping() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut conn = this.conn.clone();
            this.run(
                "SET",
                conn.set_ex::<_, _, ()>(&key, value.as_ref(), this.ttl_secs),
            )
            .await;
        });
    }

    /// Drops keys (after a change). Tried even while skipping: a stale entry must not
    /// outlive a Redis hiccup by more than its TTL.
    pub async fn invalidate(&self, keys: &[String]) -> bool {
        let mut conn = self.conn.clone();
        self.run("DEL", conn.del::<_, ()>(keys)).await.is_some()
    }

    /// PING with its latency, for `/health`.
    pub async fn ping(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        match self.run("PING", cmd.query_async::<String>(&mut conn)).await {
            Some(_) => Ok(started.elapsed()),
            None => Err(self.last_error().unwrap_or_else(|| "failed".into())),
        }
    }
}
