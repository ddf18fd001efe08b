//! The OpenAPI document is built from the schema the server validates with, and is usable: its
//! request schema (with references resolved inside the document) judges every golden body as
//! the server does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

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
    assert_eq!(
        doc["components"]["schemas"]["SipRequest"]["properties"].as_object().unwrap().keys().collect::<Vec<_>>(),
        file["properties"].as_object().unwrap().keys().collect::<Vec<_>>()
    );
    // Resolve the request schema inside the document and judge every golden body with it.
    let mut root = doc.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!("#/components/schemas/SipRequest");
    let validator = jsonschema::options().with_draft(jsonschema::Draft::Draft202012).should_validate_formats(true).build(&root).unwrap();
    let set = server.app.rules.load();
    for dir in flowgate::rules::samples::cases(&common::repo().join("tests/cases")) {
        let Ok(body) = serde_json::from_slice::<Value>(&std::fs::read(dir.join("request.json")).unwrap()) else { continue };
        assert_eq!(validator.is_valid(&body), set.schema.findings(&body).is_empty(), "{}", dir.display());
    }
}

/// What a client generator and a reader expect: every operation has a unique operationId, the
/// status route declares its rate limit (429 with Retry-After and the RateLimit fields, the fields
/// on its 200), every GET route its HEAD, and 405 (with Allow) and X-Request-Id are described.
#[test]
fn every_operation_is_named_and_declares_the_headers_and_statuses_the_server_sends() {
    let server = common::TestServer::start(|_| {});
    let doc = server.get("/v4/openapi.json").json();
    let mut wrong = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    let resolve = |v: &Value| -> Value {
        match v["$ref"].as_str() {
            Some(r) => doc.pointer(r.trim_start_matches('#')).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            match op["operationId"].as_str() {
                Some(id) if ids.insert(id.to_string()) => {}
                other => wrong.push(format!("{what}: operationId {other:?} missing or repeated")),
            }
            let responses = op["responses"].as_object().unwrap();
            for (status, r) in responses {
                if resolve(&resolve(r)["headers"]["X-Request-Id"]).is_null() {
                    wrong.push(format!("{what} {status}: X-Request-Id not described"));
                }
            }
            let not_allowed = resolve(&op["responses"]["405"]);
            if resolve(&not_allowed["headers"]["Allow"]).is_null() {
                wrong.push(format!("{what}: no 405 with Allow"));
            }
        }
        if item.get("get").is_some() && item.get("head").is_none() {
            wrong.push(format!("{path}: GET without HEAD"));
        }
    }
    for path in ["/v4/sip", "/v4/sip/{request_id}", "/healthz", "/readyz", "/metrics", "/v4/openapi.json"] {
        if !doc["paths"][path].is_object() {
            wrong.push(format!("{path} is not described"));
        }
    }
    let get = &doc["paths"]["/v4/sip/{request_id}"]["get"]["responses"];
    for h in ["RateLimit", "RateLimit-Policy"] {
        if resolve(&get["200"]["headers"][h]).is_null() {
            wrong.push(format!("GET /v4/sip/{{request_id}} 200 lacks {h}"));
        }
    }
    for h in ["Retry-After", "RateLimit", "RateLimit-Policy"] {
        if resolve(&get["429"]["headers"][h]).is_null() {
            wrong.push(format!("GET /v4/sip/{{request_id}} 429 lacks {h}"));
        }
    }
    let post = &doc["paths"]["/v4/sip"]["post"]["responses"];
    if resolve(&post["401"]["headers"]["WWW-Authenticate"]).is_null() || resolve(&get["401"]["headers"]["WWW-Authenticate"]).is_null() {
        wrong.push("401 does not describe WWW-Authenticate".into());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
