//! libFuzzer on the registry API's request parsing, raw bodies through the real handler:
//! `cargo xtask fuzz registry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    netctl_shop::fuzz::registry(data);
});
