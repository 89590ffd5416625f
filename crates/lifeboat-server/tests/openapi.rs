//! `docs/openapi.json` is the API the code serves: generated from the handlers and types,
//! committed, and checked here. After changing the API, regenerate it with
//! `UPDATE_OPENAPI=1 cargo test -p lifeboat-server --test openapi` and commit the result.

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = lifeboat_server::api::openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the API in the code; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p lifeboat-server --test openapi` and commit it"
    );
    // The document names every route the server serves.
    for route in ["/api/v1/hosts", "/api/v1/vms"] {
        assert!(
            generated.contains(route),
            "{route} missing from the document"
        );
    }
}
