//! Every manifest under `manifests/examples/` validates against the generated CRD schema (the same
//! rules the API server enforces) and deserializes into the StreamJob type.

use std::path::Path;

fn crd_schema() -> serde_json::Value {
    let crd = serde_json::to_value(streamjob_api::v1alpha1::crd()).expect("crd as json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn examples() -> Vec<(String, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("manifests/examples exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read example");
            let value: serde_json::Value = serde_yaml::from_str(&text).expect("example is YAML");
            out.push((path.display().to_string(), value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn examples_validate_against_the_crd_schema() {
    let validator = jsonschema::validator_for(&crd_schema()).expect("CRD schema compiles");
    let examples = examples();
    assert!(
        examples.len() >= 2,
        "expected at least two examples, found {}",
        examples.len()
    );
    for (path, value) in examples {
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{path} does not validate: {errors:?}");
        let job: streamjob_api::v1alpha1::StreamJob =
            serde_json::from_value(value).expect("deserializes");
        assert!(
            job.spec.job.name.is_some() || !job.spec.job.entrypoint.is_empty(),
            "{path}: no job"
        );
    }
}

/// A change that makes a valid manifest invalid.
type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn schema_rejects_what_it_should() {
    let validator = jsonschema::validator_for(&crd_schema()).expect("CRD schema compiles");
    let (_, good) = examples().into_iter().next().expect("an example");
    assert!(validator.is_valid(&good));
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "parallelism 0",
            Box::new(|v| v["spec"]["parallelism"] = 0.into()),
        ),
        (
            "parallelism huge",
            Box::new(|v| v["spec"]["parallelism"] = 100000.into()),
        ),
        (
            "parallelism string",
            Box::new(|v| v["spec"]["parallelism"] = "two".into()),
        ),
        (
            "bad interval",
            Box::new(|v| v["spec"]["checkpoint"]["interval"] = "ten seconds".into()),
        ),
        (
            "bad mode",
            Box::new(|v| v["spec"]["checkpoint"]["mode"] = "twice".into()),
        ),
        (
            "bad upgrade mode",
            Box::new(|v| v["spec"]["upgradeMode"] = "yolo".into()),
        ),
        (
            "no job",
            Box::new(|v| {
                v["spec"].as_object_mut().unwrap().remove("job");
            }),
        ),
        (
            "bad job name",
            Box::new(|v| v["spec"]["job"]["name"] = "../../etc".into()),
        ),
        (
            "bad bucket",
            Box::new(|v| v["spec"]["storage"]["s3"] = serde_json::json!({"bucket": "UPPER_case"})),
        ),
        (
            "maxConcurrent 0",
            Box::new(|v| v["spec"]["checkpoint"]["maxConcurrent"] = 0.into()),
        ),
    ];
    for (name, mutate) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(
            !validator.is_valid(&bad),
            "schema accepted an invalid manifest: {name}"
        );
    }
}
