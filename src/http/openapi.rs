//! The OpenAPI 3.1 document, built from the running schema (never a copy that can drift).

use serde_json::{json, Value};

use crate::rules::set::RuleSet;

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

/// A 401: the problem, and the scheme to authenticate with.
fn unauthorized() -> Value {
    let mut r = problem_response("No key, or an unknown key");
    r["headers"] = json!({ "WWW-Authenticate": { "description": "The scheme to use: Bearer (X-API-Key works as well)", "schema": { "type": "string" } } });
    r
}

/// OpenAPI 3.1 for the v4 API; the request body schema is the one the gateway validates with.
pub fn document(set: &RuleSet) -> Value {
    let mut doc = paths_and_components(set);
    conventions(&mut doc);
    doc
}

/// What every operation shares, added in one place so no operation can miss it: `X-Request-Id`
/// on every answer, a 405 with `Allow`, and a HEAD beside every GET (its answers without bodies).
fn conventions(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        if let Some(get) = item.get("get").cloned() {
            let mut head = get;
            if let Some(id) = head["operationId"].as_str().and_then(|id| id.strip_prefix("get")) {
                head["operationId"] = Value::String(format!("head{id}"));
            }
            if let Some(summary) = head["summary"].as_str() {
                head["summary"] = Value::String(format!("{summary} (headers only)"));
            }
            if let Some(responses) = head.get_mut("responses").and_then(Value::as_object_mut) {
                for r in responses.values_mut() {
                    if let Some(r) = r.as_object_mut() {
                        r.remove("content");
                    }
                }
            }
            item.insert("head".into(), head);
        }
        for op in item.values_mut() {
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            for r in responses.values_mut() {
                if r.get("$ref").is_none() {
                    r["headers"]["X-Request-Id"] = json!({ "$ref": "#/components/headers/X-Request-Id" });
                }
            }
            responses.insert("405".into(), json!({ "$ref": "#/components/responses/MethodNotAllowed" }));
        }
    }
}

fn paths_and_components(set: &RuleSet) -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "flowgate SIP API",
            "version": "4",
            "description": format!("Rule set {}", set.revision),
        },
        "components": components(request_schema(set)),
        "security": [ { "apiKey": [] }, { "bearer": [] } ],
        "paths": {
            "/v4/sip": { "post": submit_operation() },
            "/v4/sip/{request_id}": { "get": status_operation() },
            "/healthz": { "get": { "operationId": "getHealth", "summary": "Alive", "security": [], "responses": { "200": { "description": "alive" } } } },
            "/readyz": { "get": { "operationId": "getReadiness", "summary": "Rule set loaded and store writable", "security": [], "responses": { "200": { "description": "ready" }, "503": { "description": "not ready" } } } },
            "/metrics": { "get": { "operationId": "getMetrics", "summary": "Prometheus metrics", "security": [], "responses": { "200": { "description": "text exposition" } } } },
            "/v4/openapi.json": { "get": { "operationId": "getOpenApi", "summary": "This document", "security": [], "responses": { "200": { "description": "OpenAPI 3.1" } } } }
        }
    })
}

/// The body schema the gateway validates with, its local references rebased into the document.
fn request_schema(set: &RuleSet) -> Value {
    let mut body_schema = set.schema.document().clone();
    if let Some(o) = body_schema.as_object_mut() {
        o.remove("$schema");
        o.remove("$id");
    }
    // Local references now resolve against the OpenAPI document.
    rebase_refs(&mut body_schema, "#/$defs/", "#/components/schemas/SipRequest/$defs/");
    body_schema
}

/// The shared header, response, security schemes and schemas.
fn components(body_schema: Value) -> Value {
    json!({
        "headers": {
            "X-Request-Id": { "description": "The server's id for this request, as its logs name it (a client's own X-Request-Id is logged beside it, never echoed)", "schema": { "type": "string" } }
        },
        "responses": {
            "MethodNotAllowed": {
                "description": "The route does not take this method",
                "headers": {
                    "Allow": { "description": "The methods the route takes", "schema": { "type": "string" } },
                    "X-Request-Id": { "$ref": "#/components/headers/X-Request-Id" }
                },
                "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
            }
        },
        "securitySchemes": {
            "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
            "bearer": { "type": "http", "scheme": "bearer" }
        },
        "schemas": {
            "SipRequest": body_schema,
            "Finding": {
                "type": "object",
                "required": ["pointer", "rule", "message"],
                "properties": {
                    "pointer": { "type": "string", "description": "JSON Pointer to the field at fault" },
                    "rule": { "type": "string", "description": "Schema keyword or rule id" },
                    "message": { "type": "string" }
                }
            },
            "Accepted": {
                "type": "object",
                "required": ["status", "message", "request_id", "scenario", "flows", "ruleset"],
                "properties": {
                    "status": { "const": "accepted" },
                    "message": { "type": "string" },
                    "request_id": { "type": "string" },
                    "scenario": { "type": "string" },
                    "scenario_name": { "type": "string" },
                    "flows": { "type": "array", "items": { "type": "object", "properties": {
                        "flow": { "type": "string" }, "to": { "type": "string" }, "file_id": { "type": "string" }, "object": { "type": "string" } } } },
                    "warnings": { "type": "array", "items": { "$ref": "#/components/schemas/Finding" } },
                    "ruleset": { "type": "string" }
                }
            },
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status"],
                "properties": {
                    "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                    "detail": { "type": "string" }, "instance": { "type": "string" }, "request_id": { "type": "string" },
                    "errors": { "type": "array", "items": { "$ref": "#/components/schemas/Finding" } }
                }
            }
        }
    })
}

/// A response with the IETF RateLimit fields (on every answer counted against a key's quota)
/// and the headers `more`.
fn limited(mut response: Value, more: Value) -> Value {
    let mut headers = json!({
        "RateLimit": { "description": "What is left of this key's quota (IETF RateLimit fields)", "schema": { "type": "string" } },
        "RateLimit-Policy": { "description": "This key's quota: burst and window", "schema": { "type": "string" } }
    });
    if let (Some(headers), Value::Object(more)) = (headers.as_object_mut(), more) {
        headers.extend(more);
    }
    response["headers"] = headers;
    response
}

/// A 429, with when to retry and the rate limit fields.
fn rate_limited() -> Value {
    limited(
        json!({ "description": "Rate limited", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } }),
        json!({ "Retry-After": { "schema": { "type": "integer" } } }),
    )
}

/// `POST /v4/sip`.
fn submit_operation() -> Value {
    json!({
        "operationId": "submitSipJob",
        "summary": "Report one SIP job; answers with the scenario and the flows queued",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/SipRequest" } } } },
        "responses": {
            "200": limited(
                json!({ "description": "Accepted and stored durably", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Accepted" } } } }),
                json!({ "Idempotent-Replayed": { "description": "true when this is the first answer again", "schema": { "type": "string" } } }),
            ),
            "400": problem_response("The body is not JSON, not an object, fails the schema or a rule (every problem is listed), or it ended early or was badly chunked"),
            "401": unauthorized(),
            "408": problem_response("The body was not received in time"),
            "409": problem_response("A different body was already accepted for this job_id"),
            "413": problem_response("The body is too large"),
            "415": problem_response("The body is not application/json"),
            "429": rate_limited(),
            "500": problem_response("A rule failed at run time (named); nothing was accepted"),
            "503": problem_response("The store cannot take the request, or the memory for bodies in flight is taken (busy, with Retry-After; the body was not read); nothing was accepted")
        }
    })
}

/// `GET /v4/sip/{request_id}`.
fn status_operation() -> Value {
    json!({
        "operationId": "getSipRequest",
        "summary": "Status of an accepted request: its answer, flow deliveries and incoming flows (counted against the calling key's rate limit)",
        "parameters": [ { "name": "request_id", "in": "path", "required": true, "schema": { "type": "string" } } ],
        "responses": {
            "200": limited(
                json!({ "description": "The request's status", "content": { "application/json": { "schema": { "type": "object" } } } }),
                json!({}),
            ),
            "401": unauthorized(),
            "404": problem_response("No request with this id for this client"),
            "429": rate_limited(),
            "503": problem_response("The store could not be read")
        }
    })
}

fn rebase_refs(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                match child {
                    Value::String(s) if k == "$ref" && s.starts_with(from) => *s = format!("{to}{}", &s[from.len()..]),
                    other => rebase_refs(other, from, to),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rebase_refs(x, from, to)),
        _ => {}
    }
}
