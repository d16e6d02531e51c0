//! `streamjob verify-sequence`: the report on stdout (text or JSON) and the exit code (0 only for an
//! exact output).

use std::path::Path;
use std::process::Command;

fn verify(dir: &Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamjob"));
    cmd.args([
        "verify-sequence",
        "--keys",
        "2",
        "--events",
        "4",
        "--output",
    ])
    .arg(dir);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run streamjob");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn exact_output_exits_zero_and_damage_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("part-0000000001-0000"), "0,0,1\n1,0,1\n").unwrap();
    std::fs::write(dir.path().join("part-0000000002-0001"), "0,1,2\n1,1,2\n").unwrap();
    std::fs::write(dir.path().join(".inprogress-000001-0000-2"), "0,1,2\n").unwrap();
    let (code, text) = verify(dir.path(), false);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("lost 0, duplicated 0"), "{text}");

    // Lose 1,1 and duplicate 0,0.
    std::fs::write(dir.path().join("part-0000000002-0001"), "0,1,2\n0,0,1\n").unwrap();
    let (code, text) = verify(dir.path(), true);
    assert_eq!(code, 1, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON report");
    assert_eq!(report["expected"], 4);
    assert_eq!(report["committed"], 4);
    assert_eq!(report["lost"], 1);
    assert_eq!(report["duplicated"], 1);
    assert_eq!(report["out_of_order"], 0);
}
