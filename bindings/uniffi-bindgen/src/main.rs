//! `cargo run -p uniffi-bindgen -- generate --library <libskyroute_ffi.so> --language kotlin ...`
fn main() {
    uniffi::uniffi_bindgen_main()
}
