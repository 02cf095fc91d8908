//! License files (admin API input) and license definitions (vendor input).
#![no_main]
use floatlm::domain::license::{parse_definition, verify, VendorSigningKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // A fixed vendor key: parsing and signature checks run fully.
        let key = VendorSigningKey::parse("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap().public();
        let _ = verify(text, &[key]);
        let _ = parse_definition(text);
    }
});
