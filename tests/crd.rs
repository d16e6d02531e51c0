//! The checked-in CRD (`crds/streamjob.yaml`) must be exactly what `streamjob crd` prints.

use std::process::Command;

#[test]
fn checked_in_crd_matches_generated() {
    let output = Command::new(env!("CARGO_BIN_EXE_streamjob"))
        .arg("crd")
        .output()
        .expect("run streamjob crd");
    assert!(
        output.status.success(),
        "streamjob crd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).expect("utf-8 CRD");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/streamjob.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "crds/streamjob.yaml is stale: regenerate it with `cargo run -q -- crd > crds/streamjob.yaml`"
    );
}
