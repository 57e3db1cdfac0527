//! libFuzzer on the topology parser and validator: `cargo xtask fuzz topology`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    netctl::topology::fuzz::check(data);
});
