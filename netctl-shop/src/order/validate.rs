//! What makes an order valid, before the database is asked anything.

use serde_json::Value;

use crate::{
    fields::{Fields, NOT_AN_OBJECT},
    http::FieldError,
};

pub const MIN_QUANTITY: i64 = 1;
pub const MAX_QUANTITY: i64 = 1000;

/// An order as a client asks for it; the price comes from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: String,
    pub product_id: String,
    pub quantity: i32,
}

/// The order in a JSON body, or every problem with it.
pub fn parse_order(value: &Value) -> Result<NewOrder, Vec<FieldError>> {
    let Some(mut f) = Fields::of(value) else {
        return Err(vec![FieldError::new("", NOT_AN_OBJECT)]);
    };
    let customer_id = f.string("customer_id", true, 100);
    let product_id = f.string("product_id", true, 64);
    let quantity = f.integer("quantity", true, MIN_QUANTITY, MAX_QUANTITY);
    f.reject_unknown(
        &["customer_id", "product_id", "quantity"],
        &[
            (
                "total_price",
                "is computed by the server from the catalog price; do not send it",
            ),
            ("unit_price", "comes from the catalog; do not send it"),
        ],
    );
    f.finish()?;
    match (customer_id, product_id, quantity) {
        (Some(customer_id), Some(product_id), Some(quantity)) => Ok(NewOrder {
            customer_id,
            product_id,
            quantity: quantity as i32,
        }),
        _ => Err(vec![FieldError::new("", "incomplete order")]),
    }
}

/// Order ids are positive integers.
pub fn parse_order_id(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(v: Value) -> Vec<String> {
        parse_order(&v)
            .unwrap_err()
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn a_good_order_parses() {
        let o =
            parse_order(&json!({"customer_id": "c1", "product_id": "2", "quantity": 3})).unwrap();
        assert_eq!(
            o,
            NewOrder {
                customer_id: "c1".into(),
                product_id: "2".into(),
                quantity: 3
            }
        );
    }

    #[test]
    fn every_problem_is_named() {
        assert_eq!(
            fields(json!({})),
            [
                "customer_id: is required",
                "product_id: is required",
                "quantity: is required"
            ]
        );
        let e = fields(json!({"customer_id": 7, "product_id": ["1"], "quantity": "2"}));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("customer_id: must be a string"), "{e:?}");
        assert!(e[1].starts_with("product_id: must be a string"), "{e:?}");
        assert!(
            e[2].starts_with("quantity: must be a whole number"),
            "{e:?}"
        );
        for q in [json!(0), json!(1001), json!(-1), json!(2.5), json!(true)] {
            let e = fields(json!({"customer_id": "c", "product_id": "1", "quantity": q}));
            assert_eq!(e.len(), 1, "{q}: {e:?}");
            assert!(e[0].starts_with("quantity: must be a whole number from 1 to 1000"));
        }
        let e = fields(json!({"customer_id": "", "product_id": "1", "quantity": 1}));
        assert_eq!(e, ["customer_id: must not be empty"]);
        let e =
            fields(json!({"customer_id": "c", "product_id": "1", "quantity": 1, "total_price": 1}));
        assert!(
            e[0].starts_with("total_price: is computed by the server"),
            "{e:?}"
        );
        let e =
            fields(json!({"customer_id": "c", "product_id": "1", "quantity": 1, "colour": "red"}));
        assert!(e[0].starts_with("colour: is not a known field"), "{e:?}");
        assert_eq!(fields(json!([1, 2])), [": the body must be a JSON object"]);
        let long = "x".repeat(101);
        let e = fields(json!({"customer_id": long, "product_id": "1", "quantity": 1}));
        assert_eq!(e, ["customer_id: must be at most 100 characters"]);
    }

    #[test]
    fn order_ids_are_positive_integers() {
        assert_eq!(parse_order_id("42"), Some(42));
        for bad in ["", "0", "-1", "abc", "1.5", "99999999999999999999", " 1"] {
            assert_eq!(parse_order_id(bad), None, "{bad:?}");
        }
    }
}
