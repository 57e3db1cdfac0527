//! The product cache in Redis (cache-aside): answers come from Redis when it has them,
//! from PostgreSQL otherwise. A Redis that fails is skipped for a moment rather than
//! waited on every request: the service keeps answering (slower, from PostgreSQL) and
//! says so in `/health`.
//!
//! A fill must not bring back what a change just dropped: a reader that missed, read the
//! old row and stores it after the writer's invalidation would keep the stale value for a
//! whole TTL. Every invalidation therefore bumps a generation counter (atomically with the
//! deletes), a miss remembers the generation it saw, and a fill stores only while the
//! generation is still that one (a server-side script: check and set in one step). After
//! Redis failed and comes back, invalidations may have been lost meanwhile: every product
//! entry is dropped then.

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
/// Bumped by every invalidation; fills that began before it are not stored.
pub const GENERATION_KEY: &str = "netctl:products:generation";
/// Every product entry (the list is `LIST_KEY`).
const PRODUCT_PATTERN: &str = "netctl:product:*";

/// Stores ARGV[1] at KEYS[1] for ARGV[3] seconds, only while KEYS[2] (the generation)
/// is still ARGV[2].
const FILL_SCRIPT: &str = r"
if (redis.call('GET', KEYS[2]) or '0') == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
";

/// Bumps the generation (KEYS[1]) and drops the list (KEYS[2]) and every product.
const FLUSH_SCRIPT: &str = r"
redis.call('INCR', KEYS[1])
redis.call('DEL', KEYS[2])
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end
return 1
";

pub fn product_key(id: &str) -> String {
    format!("netctl:product:{id}")
}

/// What a cache lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(Bytes),
    /// Not cached; the generation seen, which a fill must still find.
    Miss(Generation),
    /// Redis is failing: go to the database.
    Down,
}

impl Lookup {
    /// The `X-Cache` header for an answer after this lookup.
    pub fn header(&self) -> &'static str {
        match self {
            Lookup::Hit(_) => "HIT",
            Lookup::Miss(_) => "MISS",
            Lookup::Down => "BYPASS",
        }
    }
}

/// The cache's generation when a lookup missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(String);

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
        let recovered = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        self.skip_until_ms.store(0, Ordering::Relaxed);
        if recovered {
            // Changes made while Redis was unreachable could not drop their entries.
            tracing::info!("redis is back; dropping every cached product, then caching again");
            let this = self.clone();
            tokio::spawn(async move { this.flush().await });
        }
    }

    /// Drops every product entry and bumps the generation.
    pub async fn flush(&self) -> bool {
        let mut conn = self.conn.clone();
        let mut call = redis::cmd("EVAL");
        call.arg(FLUSH_SCRIPT)
            .arg(2)
            .arg(GENERATION_KEY)
            .arg(LIST_KEY)
            .arg(PRODUCT_PATTERN);
        self.run("flush", call.query_async::<i64>(&mut conn))
            .await
            .is_some()
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
        let found = self
            .run(
                "GET",
                conn.mget::<_, (Option<Vec<u8>>, Option<String>)>(&[key, GENERATION_KEY]),
            )
            .await;
        match found {
            Some((Some(v), _)) => Lookup::Hit(Bytes::from(v)),
            Some((None, generation)) => {
                Lookup::Miss(Generation(generation.unwrap_or_else(|| "0".into())))
            }
            None => Lookup::Down,
        }
    }

    /// Stores `value` with the TTL unless something was invalidated since the miss that
    /// saw `generation`; in the background (the answer does not wait). The stored or not.
    pub fn put(
        &self,
        key: String,
        value: Bytes,
        generation: Generation,
    ) -> Option<tokio::task::JoinHandle<bool>> {
        if self.skipping() {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut conn = this.conn.clone();
            // EVAL (the script is a few lines): the check and the set in one step.
            let mut call = redis::cmd("EVAL");
            call.arg(FILL_SCRIPT)
                .arg(2)
                .arg(&key)
                .arg(GENERATION_KEY)
                .arg(value.as_ref())
                .arg(&generation.0)
                .arg(this.ttl_secs);
            this.run("SET", call.query_async::<i64>(&mut conn)).await == Some(1)
        }))
    }

    /// Drops keys (after a change) and bumps the generation, in one transaction. Tried
    /// even while skipping: a stale entry must not outlive a Redis hiccup by more than
    /// its TTL.
    pub async fn invalidate(&self, keys: &[String]) -> bool {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .incr(GENERATION_KEY, 1)
            .ignore()
            .del(keys)
            .ignore();
        self.run("DEL", pipe.query_async::<()>(&mut conn))
            .await
            .is_some()
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
