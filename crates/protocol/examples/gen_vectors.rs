//! Prints the protocol test vectors as JSON (tests/vectors/v1.json).
fn main() {
    println!(
        "{}",
        serde_json::to_string_pretty(&floatlm_protocol::vectors::compute()).unwrap()
    );
}
