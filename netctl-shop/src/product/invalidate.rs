//! Cache invalidation driven by the database: the products table announces every change
//! on the channel `product_changed` (a trigger, see the migrations), whoever makes it; each
//! product replica listens and drops the changed product and the list from Redis. After
//! (re)connecting, when announcements may have been missed, it drops every product key.

use std::time::Duration;

use futures::{StreamExt, stream};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::{
    cache::{Cache, LIST_KEY, product_key},
    catalog,
};

pub const CHANNEL: &str = "product_changed";

pub async fn listen(
    url: String,
    pool: deadpool_postgres::Pool,
    cache: Cache,
    shutdown: CancellationToken,
) {
    let mut warned = false;
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listen_once(&url, &pool, &cache) => r,
        };
        if let Err(e) = outcome
            && !warned
        {
            tracing::warn!("listening for product changes: {e:#} (retrying)");
            warned = true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn listen_once(
    url: &str,
    pool: &deadpool_postgres::Pool,
    cache: &Cache,
) -> anyhow::Result<()> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("listen connection: {e}");
                    break;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Whatever changed while nobody listened.
    let mut keys: Vec<String> = catalog::ids(pool)
        .await?
        .iter()
        .map(|id| product_key(id))
        .collect();
    keys.push(LIST_KEY.to_string());
    cache.invalidate(&keys).await;
    tracing::info!("listening for product changes");
    while let Some(id) = rx.recv().await {
        tracing::debug!(product = id, "product changed; dropping it from the cache");
        cache
            .invalidate(&[LIST_KEY.to_string(), product_key(&id)])
            .await;
    }
    driver.abort();
    anyhow::bail!("the connection closed")
}
