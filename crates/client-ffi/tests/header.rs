//! include/floatlm.h is what cbindgen makes of src/ today: regenerates it and
//! fails when the checked-in copy differs (FLOATLM_BLESS=1 rewrites it).

use std::path::Path;

#[test]
fn the_checked_in_header_is_what_cbindgen_generates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses crates/client-ffi/src")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = dir.join("include/floatlm.h");
    if std::env::var_os("FLOATLM_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/floatlm.h");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "crates/client-ffi/include/floatlm.h is stale: regenerate it with \
         `FLOATLM_BLESS=1 cargo test -p floatlm-client-ffi --test header` and commit it"
    );
}
