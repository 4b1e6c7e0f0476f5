//! The model artifact: save → load scores the same bits with both models, the directory is
//! replaced atomically and only when it is an artifact, and every way an artifact can be
//! wrong (another feature schema, a tampered or missing file, weights of another shape, an
//! unknown format) is refused with an error naming the file.

mod support;

use std::path::Path;

use fraudgraph_models::artifact::{
    ARTIFACT_FORMAT_VERSION, Artifact, ArtifactError, GBDT_FILE, MANIFEST_FILE, WEIGHTS_FILE,
    read_manifest, save_artifact, score_gbdt, score_gnn,
};
use fraudgraph_sampler::batch::Batch;
use fraudgraph_sampler::features;
use tch::Device;

use support::{MAX_SEQUENCE, fixture, graph, manifest, model, sampler, save_tiny};

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> ArtifactError {
    Artifact::load(dir, Device::Cpu).expect_err("the artifact must be refused")
}

#[test]
fn save_then_load_scores_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let (_vs, net, gbdt) = save_tiny(&dir);
    for file in [MANIFEST_FILE, WEIGHTS_FILE, GBDT_FILE] {
        assert!(dir.join(file).is_file(), "{file} written");
    }

    let artifact = Artifact::load(&dir, Device::Cpu).unwrap();
    let m = &artifact.manifest;
    assert_eq!(m.format_version, ARTIFACT_FORMAT_VERSION);
    assert_eq!(m.feature_schema_hash, features::schema_hash());
    assert_eq!(m.net, support::tiny_net());
    assert_eq!(m.max_sequence, MAX_SEQUENCE);
    assert_eq!(m.training["seed"], 7);
    assert_eq!(m.files.len(), 2);
    assert!(m.files.values().all(|h| h.len() == 64));
    assert_eq!(artifact.sampler_config(), sampler());
    assert_eq!(artifact.graph_config(), graph());
    let mut saved = m.clone();
    saved.files.clear();
    assert_eq!(saved, manifest(), "the manifest round-trips");

    let subs = &fixture().train[..200];
    let mut batch = Batch::default();
    let before = score_gnn(&net, subs, MAX_SEQUENCE, &mut batch).unwrap();
    let after = score_gnn(&artifact.net, subs, MAX_SEQUENCE, &mut batch).unwrap();
    assert_eq!(before.len(), subs.len());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&before), bits(&after), "GNN scores bit for bit");
    assert!(
        before.windows(2).any(|w| w[0] != w[1]),
        "scores depend on the input"
    );

    let mut rows = Vec::new();
    let before = score_gbdt(&gbdt, subs, &mut rows).unwrap();
    let loaded = artifact.gbdt().unwrap();
    let after = score_gbdt(&loaded, subs, &mut rows).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&before), bits(&after), "GBDT scores bit for bit");
    assert!(
        score_gnn(&net, &[], MAX_SEQUENCE, &mut batch)
            .unwrap()
            .is_empty()
    );
    assert!(score_gbdt(&gbdt, &[], &mut rows).unwrap().is_empty());
}

#[test]
fn saving_again_replaces_the_artifact_and_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    // (Other tests draw from libtorch's global RNG concurrently: save the same model twice
    // rather than rebuilding it from a seed.)
    let (vs, _net, gbdt) = save_tiny(&dir);
    let first = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    std::fs::write(dir.join("stale.txt"), "from the old artifact").unwrap();
    save_artifact(&dir, &manifest(), &vs, &gbdt).unwrap();
    assert_eq!(
        std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
        first,
        "the same weights give the same bytes"
    );
    assert!(!dir.join("stale.txt").exists(), "the old directory is gone");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("model")]);
    Artifact::load(&dir, Device::Cpu).unwrap();
}

#[test]
fn a_directory_that_is_not_an_artifact_is_not_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "precious").unwrap();
    let (vs, _net) = model(1);
    let gbdt = fraudgraph_models::gbdt::Gbdt::from_model_text(fixture().gbdt_text.clone()).unwrap();
    let err = save_artifact(tmp.path(), &manifest(), &vs, &gbdt).unwrap_err();
    assert!(matches!(err, ArtifactError::NotAnArtifact { .. }), "{err}");
    assert!(tmp.path().join("notes.txt").exists());
}

#[test]
fn weights_of_another_model_are_refused_on_save() {
    let tmp = tempfile::tempdir().unwrap();
    let (vs, _net) = model(1);
    let gbdt = fraudgraph_models::gbdt::Gbdt::from_model_text(fixture().gbdt_text.clone()).unwrap();
    let mut m = manifest();
    m.net.layers = 3;
    let err = save_artifact(&tmp.path().join("model"), &m, &vs, &gbdt).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("missing tensor(s): layer2."), "{msg}");
    assert!(!tmp.path().join("model").exists());
}

#[test]
fn another_feature_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    save_tiny(&dir);
    edit_manifest(&dir, |m| {
        m["feature_schema_hash"] = "0123456789abcdef".into()
    });
    let err = load_err(&dir);
    assert!(matches!(err, ArtifactError::SchemaMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("built for feature schema 0123456789abcdef"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "this build computes feature schema {}",
            features::schema_hash()
        )),
        "{msg}"
    );
    assert!(
        msg.contains("retrain") && msg.contains("matches the artifact"),
        "{msg}"
    );
    assert!(msg.contains(MANIFEST_FILE), "{msg}");
    // read_manifest refuses it too, without touching the model files.
    assert!(matches!(
        read_manifest(&dir),
        Err(ArtifactError::SchemaMismatch { .. })
    ));
}

#[test]
fn a_tampered_weights_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    save_tiny(&dir);
    let path = dir.join(WEIGHTS_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, ArtifactError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(WEIGHTS_FILE) && msg.contains("SHA-256"),
        "{msg}"
    );
}

#[test]
fn a_missing_gbdt_file_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    save_tiny(&dir);
    std::fs::remove_file(dir.join(GBDT_FILE)).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, ArtifactError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("missing gbdt.txt"), "{err}");

    std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
    assert!(load_err(&dir).to_string().contains("missing manifest.json"));
}

#[test]
fn weights_that_do_not_fit_the_config_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    save_tiny(&dir);
    // The manifest is not checksummed: a wrong config reaches the weight check.
    edit_manifest(&dir, |m| m["net"]["hidden"] = 32.into());
    let err = load_err(&dir);
    assert!(matches!(err, ArtifactError::Weights { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(WEIGHTS_FILE) && msg.contains("another shape"),
        "{msg}"
    );
}

#[test]
fn unknown_formats_and_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    save_tiny(&dir);
    edit_manifest(&dir, |m| m["format_version"] = 99.into());
    let err = load_err(&dir);
    assert!(matches!(err, ArtifactError::FormatVersion { .. }), "{err}");
    assert!(err.to_string().contains("format version 99"), "{err}");

    save_tiny(&dir);
    edit_manifest(&dir, |m| m["sampler"]["strategy"] = "random".into());
    let err = load_err(&dir);
    assert!(err.to_string().contains("`random`"), "{err}");

    save_tiny(&dir);
    std::fs::write(dir.join(GBDT_FILE), "not a model").unwrap();
    edit_manifest(&dir, |m| {
        m["files"][GBDT_FILE] = fraudgraph_sha256(b"not a model").into()
    });
    let err = load_err(&dir);
    assert!(matches!(err, ArtifactError::GbdtFile { .. }), "{err}");
    assert!(err.to_string().contains(GBDT_FILE), "{err}");

    // A checksummed file that is not safetensors at all.
    save_tiny(&dir);
    std::fs::write(dir.join(WEIGHTS_FILE), b"\x08\0\0\0\0\0\0\0{garbage").unwrap();
    edit_manifest(&dir, |m| {
        m["files"][WEIGHTS_FILE] = fraudgraph_sha256(b"\x08\0\0\0\0\0\0\0{garbage").into()
    });
    let err = load_err(&dir);
    assert!(matches!(err, ArtifactError::Weights { .. }), "{err}");
    assert!(err.to_string().contains("not a safetensors file"), "{err}");

    assert!(
        load_err(&tmp.path().join("nowhere"))
            .to_string()
            .contains("nowhere")
    );
}

/// SHA-256 hex, as the manifest stores it.
fn fraudgraph_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
