//! The committed header is what cbindgen makes of the crate now (`SHMPOOL_BLESS=1` rewrites it).

#[test]
fn the_committed_header_is_current() {
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen understands the crate")
        .write(&mut generated);
    let path = format!("{crate_dir}/include/shmpool.h");
    if std::env::var_os("SHMPOOL_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writable");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{path} is stale: run `SHMPOOL_BLESS=1 cargo test -p alloc-capi --test header` and commit it"
    );
}
