//! Unit tests of the S3 sink's pure parts: key layout, part ranges, clean-up ownership, state
//! entries, URLs.

use super::output::{cleans_up, part_ranges};
use super::*;
use crate::state::{decode_entry, encode_entry};

#[test]
fn keys_match_the_file_sink_layout() {
    assert_eq!(object_key("out/run", 7, 3), "out/run/part-0000000007-0003");
    assert_eq!(object_key("", 7, 3), "part-0000000007-0003");
    assert_eq!(object_key("/out/", 12, 0), "out/part-0000000012-0000");
    assert_eq!(
        parse_object_key("out", "out/part-0000000007-0003"),
        Some((7, 3))
    );
    assert_eq!(parse_object_key("", "part-0000000007-0003"), Some((7, 3)));
    for other in [
        "out/part-x-0003",
        "out/part-0000000007",
        "out/part-0000000007-",
        "other/part-0000000007-0003",
        "out/.inprogress-1",
        "out/part-1-2-3",
    ] {
        assert_eq!(parse_object_key("out", other), None, "{other}");
    }
}

#[test]
fn parts_are_full_size_but_the_last() {
    let mib = 1 << 20;
    assert_eq!(part_ranges(0, 8 * mib), vec![]);
    assert_eq!(part_ranges(10, 8 * mib), vec![(1, 0..10)]);
    assert_eq!(
        part_ranges(20 * mib, 8 * mib),
        vec![
            (1, 0..8 * mib),
            (2, 8 * mib..16 * mib),
            (3, 16 * mib..20 * mib)
        ]
    );
    assert_eq!(
        part_ranges(16 * mib, 8 * mib),
        vec![(1, 0..8 * mib), (2, 8 * mib..16 * mib)]
    );
}

#[test]
fn each_key_is_cleaned_up_by_exactly_one_subtask() {
    for parallelism in 1..5 {
        for key_subtask in 0..8 {
            let owners = (0..parallelism)
                .filter(|&s| cleans_up(key_subtask, s, parallelism))
                .count();
            assert_eq!(
                owners, 1,
                "subtask {key_subtask} at parallelism {parallelism}"
            );
        }
    }
}

#[test]
fn pending_uploads_survive_the_list_state() {
    let pending = PendingUpload {
        checkpoint_id: 41,
        bucket: "results".into(),
        key: "out/part-0000000041-0001".into(),
        upload_id: "2f6b".into(),
        parts: vec![
            UploadedPart {
                number: 1,
                etag: "\"a1\"".into(),
            },
            UploadedPart {
                number: 2,
                etag: "\"b2\"".into(),
            },
        ],
        size: 9_000_000,
    };
    let bytes = encode_entry(&pending).unwrap();
    assert_eq!(decode_entry::<PendingUpload>(&bytes).unwrap(), pending);
}

#[test]
fn urls_and_credentials_are_checked() {
    let output = S3Output::parse("s3://results/runs/one/", S3Options::default()).unwrap();
    assert_eq!(output.url(), "s3://results/runs/one");
    assert_eq!(output.prefix(), "runs/one");
    let root = S3Output::parse("s3://results", S3Options::default()).unwrap();
    assert_eq!(root.url(), "s3://results");
    for bad in [
        "s3://",
        "s3://UP",
        "s3://results/a/../b",
        "/tmp/x",
        "http://x/y",
    ] {
        let err = S3Output::parse(bad, S3Options::default()).unwrap_err();
        assert!(
            matches!(err, S3SinkError::InvalidUrl { .. }),
            "{bad}: {err}"
        );
    }
    let half = S3Options {
        access_key_id: Some("key".into()),
        ..S3Options::default()
    };
    let err = S3Output::parse("s3://results/x", half).unwrap_err();
    assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
}
