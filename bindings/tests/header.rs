//! The checked-in C header matches the C ABI (cbindgen). `SKYROUTE_BLESS=1` rewrites it.

#[test]
fn header_has_not_drifted() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new().with_crate(dir).with_config(config).generate().unwrap().write(&mut out);
    let generated = String::from_utf8(out).unwrap();
    let path = format!("{dir}/include/skyroute.h");
    if std::env::var_os("SKYROUTE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "{path} is out of date with src/c.rs: run SKYROUTE_BLESS=1 cargo test -p skyroute-ffi --test header"
    );
    for f in ["skyroute_node_start", "skyroute_free", "skyroute_tunnel_recv", "skyroute_last_error"] {
        assert!(generated.contains(f), "{f} is in the header");
    }
}
