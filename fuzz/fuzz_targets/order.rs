//! libFuzzer on the order API's request parsing, raw bodies through the real handler:
//! `cargo xtask fuzz order`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    netctl_shop::fuzz::order(data);
});
