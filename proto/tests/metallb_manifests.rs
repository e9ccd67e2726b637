//! Drop-in compatibility: MetalLB's documented manifests read into FerroLB's types and validate
//! against the CRDs FerroLB ships, and the shipped CRDs are exactly the generated ones.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::path::{Path, PathBuf};

use ferrolb_proto::api::{IPAddressPool, Manifest, check_pools, crd, parse_documents};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metallb")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    (path.display().to_string(), text)
}

/// The `openAPIV3Schema` of the checked-in CRD for `kind`, as plain JSON.
fn shipped_schema(kind: &str) -> Value {
    let dir = repo_root().join("charts/ferrolb/crds");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let crd: Value = serde_yaml_ng::from_str(&text).unwrap();
        if crd.pointer("/spec/names/kind") == Some(&Value::from(kind)) {
            return crd
                .pointer("/spec/versions/0/schema/openAPIV3Schema")
                .unwrap()
                .clone();
        }
    }
    panic!("no CRD for {kind} in {}", dir.display());
}

/// Schema errors of every document of a fixture, against the shipped CRDs.
fn schema_errors(text: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = value["kind"].as_str().unwrap().to_owned();
        let validator = jsonschema::validator_for(&shipped_schema(&kind)).unwrap();
        for error in validator.iter_errors(&value) {
            errors.push(format!(
                "{kind} {}: {error} at {}",
                value["metadata"]["name"],
                error.instance_path()
            ));
        }
    }
    errors
}

#[test]
fn shipped_crds_are_the_generated_ones() {
    let dir = repo_root().join("charts/ferrolb/crds");
    let generated = crd::files().unwrap();
    let mut shipped: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    let mut names: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(
        shipped,
        names,
        "charts/ferrolb/crds holds other files; run `{}`",
        crd::REGENERATE
    );
    for (name, text) in generated {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(
            on_disk == text,
            "charts/ferrolb/crds/{name} is stale: run `{}`",
            crd::REGENERATE
        );
    }
}

#[test]
fn metallb_pools_read_validate_and_pass_the_pool_checks() {
    let (source, text) = fixture("ipaddresspools.yaml");
    assert_eq!(schema_errors(&text), Vec::<String>::new());
    let pools: Vec<IPAddressPool> = parse_documents(&source, &text)
        .into_iter()
        .map(|m| match m.unwrap() {
            Manifest::IPAddressPool(pool) => pool,
            other => panic!("not a pool: {other:?}"),
        })
        .collect();
    assert_eq!(pools.len(), 6);
    assert_eq!(check_pools(&pools), vec![]);

    let by_name = |n: &str| {
        pools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(n))
            .unwrap()
    };
    assert!(
        by_name("first-pool").spec.auto_assign,
        "autoAssign defaults to true"
    );
    assert!(!by_name("expensive").spec.auto_assign);
    assert!(by_name("cheap").spec.avoid_buggy_ips);
    let allocation = by_name("ippool-ns-service-alloc-sample")
        .spec
        .service_allocation
        .clone()
        .unwrap();
    assert_eq!(allocation.priority, Some(50));
    assert_eq!(allocation.namespaces, ["namespace-a", "namespace-b"]);
    assert_eq!(allocation.service_selectors.len(), 1);
}

#[test]
fn metallb_advertisements_read_and_validate() {
    let (source, text) = fixture("l2advertisements.yaml");
    assert_eq!(schema_errors(&text), Vec::<String>::new());
    let ads: Vec<_> = parse_documents(&source, &text)
        .into_iter()
        .map(|m| match m.unwrap() {
            Manifest::L2Advertisement(ad) => ad,
            other => panic!("not an L2Advertisement: {other:?}"),
        })
        .collect();
    assert_eq!(ads.len(), 5);
    assert_eq!(ads[0].spec, Default::default(), "no spec means everything");
    assert_eq!(ads[3].spec.node_selectors.len(), 2);
    assert_eq!(ads[4].spec.interfaces, ["eth0", "eth1"]);
}

#[test]
fn metallb_services_read() {
    let (source, text) = fixture("services.yaml");
    let services = parse_documents(&source, &text);
    assert_eq!(services.len(), 5);
    assert!(
        services
            .iter()
            .all(|s| matches!(s, Ok(Manifest::Service(_)))),
        "{services:?}"
    );
}

#[test]
fn the_schema_rejects_what_metallb_rejects() {
    // Proves the schema check above can fail: wrong types and missing required fields.
    let bad = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\n\
               spec:\n  addresses: 10.0.0.0/24\n  autoAssign: sometimes\n\
               ---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: b}\nspec: {}\n\
               ---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: c}\n\
               spec:\n  interfaces: eth0\n";
    let errors = schema_errors(bad);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"addresses\" is a required property")),
        "{errors:#?}"
    );
}
