//! One module per benchmark.

pub mod http;
pub mod lb;
