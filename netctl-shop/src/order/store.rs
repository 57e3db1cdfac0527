//! Orders in PostgreSQL. The total is computed by the database from the catalog price in
//! the same statement that stores the order; an order returned here is committed.

use deadpool_postgres::Pool;
use serde::Serialize;
use tokio_postgres::Row;

use super::validate::NewOrder;
use crate::db::DbError;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Order {
    pub id: i64,
    pub customer_id: String,
    pub product_id: String,
    pub quantity: i32,
    pub unit_price: f64,
    pub total_price: f64,
    pub created_at: String,
    pub status: &'static str,
}

const COLUMNS: &str = "id, customer_id, product_id, quantity, unit_price::float8, \
    total_price::float8, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

fn order(row: &Row) -> Order {
    Order {
        id: row.get(0),
        customer_id: row.get(1),
        product_id: row.get(2),
        quantity: row.get(3),
        unit_price: row.get(4),
        total_price: row.get(5),
        created_at: row.get(6),
        status: "created",
    }
}

/// What storing an order did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New(Order),
    /// The idempotency key was used before, for this same order: that order.
    Replayed(Order),
    /// The idempotency key was used before, for a different order.
    KeyReused,
    UnknownProduct,
}

/// Stores the order (once per idempotency key, when one is given).
pub async fn create(pool: &Pool, new: &NewOrder, key: Option<&str>) -> Result<Created, DbError> {
    let client = pool.get().await?;
    let sql = format!(
        "INSERT INTO orders (customer_id, product_id, quantity, unit_price, total_price, idempotency_key)
         SELECT $1, p.id, $3::integer, p.price, p.price * $3::integer, $4 FROM products p WHERE p.id = $2
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING {COLUMNS}"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let row = client
        .query_opt(
            &stmt,
            &[&new.customer_id, &new.product_id, &new.quantity, &key],
        )
        .await?;
    if let Some(row) = row {
        return Ok(Created::New(order(&row)));
    }
    let Some(key) = key else {
        return Ok(Created::UnknownProduct);
    };
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM orders WHERE idempotency_key = $1"
        ))
        .await?;
    Ok(
        match client.query_opt(&stmt, &[&key]).await?.as_ref().map(order) {
            Some(o)
                if o.customer_id == new.customer_id
                    && o.product_id == new.product_id
                    && o.quantity == new.quantity =>
            {
                Created::Replayed(o)
            }
            Some(_) => Created::KeyReused,
            None => Created::UnknownProduct,
        },
    )
}

pub async fn get(pool: &Pool, id: i64) -> Result<Option<Order>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
        .await?;
    let row = client.query_opt(&stmt, &[&id]).await?;
    Ok(row.as_ref().map(order))
}
