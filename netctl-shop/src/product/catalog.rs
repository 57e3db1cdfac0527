//! The catalog in PostgreSQL: list, one product, and changes.

use deadpool_postgres::Pool;
use serde::Serialize;
use tokio_postgres::Row;

use crate::db::DbError;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub price: f64,
    pub stock: i32,
}

/// A change to a product; `None` keeps the field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub name: Option<String>,
    pub price: Option<f64>,
    pub stock: Option<i32>,
}

const COLUMNS: &str = "id, name, price::float8, stock";

fn product(row: &Row) -> Product {
    Product {
        id: row.get(0),
        name: row.get(1),
        price: row.get(2),
        stock: row.get(3),
    }
}

pub async fn list(pool: &Pool) -> Result<Vec<Product>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!("SELECT {COLUMNS} FROM products ORDER BY id"))
        .await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(product)
        .collect())
}

pub async fn get(pool: &Pool, id: &str) -> Result<Option<Product>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!("SELECT {COLUMNS} FROM products WHERE id = $1"))
        .await?;
    Ok(client.query_opt(&stmt, &[&id]).await?.as_ref().map(product))
}

/// Applies `change`; `None` when there is no such product. The database announces the
/// change on `product_changed` (see the migrations).
pub async fn update(pool: &Pool, id: &str, change: &Change) -> Result<Option<Product>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE products SET
                name = COALESCE($2, name),
                price = COALESCE($3::float8::numeric(12, 2), price),
                stock = COALESCE($4, stock),
                updated_at = now()
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .await?;
    let row = client
        .query_opt(&stmt, &[&id, &change.name, &change.price, &change.stock])
        .await?;
    Ok(row.as_ref().map(product))
}

/// Every product id, to drop all cached entries.
pub async fn ids(pool: &Pool) -> Result<Vec<String>, DbError> {
    let client = pool.get().await?;
    Ok(client
        .query("SELECT id FROM products", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
