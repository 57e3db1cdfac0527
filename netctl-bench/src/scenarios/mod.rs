//! One module per benchmark.

pub mod lb;
