//! The OpenAPI document is built from the schema the server validates with, and is usable: its
//! request schema (with references resolved inside the document) judges every golden body as
//! the server does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::{json, Value};

#[test]
fn the_openapi_document_describes_every_status_and_validates_like_the_server() {
    let server = common::TestServer::start(|_| {});
    let doc = server.get("/v4/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    let post = &doc["paths"]["/v4/sip"]["post"];
    for status in ["200", "400", "401", "409", "413", "415", "429", "500", "503"] {
        assert!(post["responses"][status].is_object(), "status {status} is not described");
    }
    for h in ["RateLimit", "RateLimit-Policy"] {
        assert!(post["responses"]["200"]["headers"][h].is_object(), "200 lacks {h}");
        assert!(post["responses"]["429"]["headers"][h].is_object(), "429 lacks {h}");
    }
    assert!(post["responses"]["429"]["headers"]["Retry-After"].is_object());
    // Same properties as the schema file (not a copy that can drift).
    let file: Value = serde_json::from_slice(&std::fs::read(common::repo().join("schemas/sip-v4.schema.json")).unwrap()).unwrap();
    assert_eq!(doc["components"]["schemas"]["SipRequest"]["properties"].as_object().unwrap().keys().collect::<Vec<_>>(), file["properties"].as_object().unwrap().keys().collect::<Vec<_>>());
    // Resolve the request schema inside the document and judge every golden body with it.
    let mut root = doc.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!("#/components/schemas/SipRequest");
    let validator = jsonschema::options().with_draft(jsonschema::Draft::Draft202012).should_validate_formats(true).build(&root).unwrap();
    let set = server.app.rules.load();
    for dir in flowgate::golden::cases(&common::repo().join("tests/cases")) {
        let Ok(body) = serde_json::from_slice::<Value>(&std::fs::read(dir.join("request.json")).unwrap()) else { continue };
        assert_eq!(validator.is_valid(&body), set.schema.findings(&body).is_empty(), "{}", dir.display());
    }
}
