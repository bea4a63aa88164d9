"""The OpenAPI 3.1 document of the admin API, served at /openapi.json and used by the tests
(schemathesis) to check that every answer matches it."""

from __future__ import annotations

from typing import Any

from admin_api.inputs import ACTOR_PATTERN, ISSUER_PATTERN, MAX_BATCH, SERIAL_PATTERN
from revoc.audit_trail import ACTIONS, MAX_LIMIT

_NULL = {"type": "null"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _NULL]}


def _string_or_null() -> dict[str, Any]:
    return {"type": ["string", "null"]}


_ERRORS = {
    "400": "the body is not JSON",
    "401": "no valid bearer token",
    "403": "the token's scope does not allow this call",
    "404": "no such issuer, certificate or path",
    "409": "refused: already revoked, not on hold, not issued by this CA, forbidden by the "
           "issuer's profile",
    "413": "the body is too large",
    "422": "a malformed or implausible value; `field` names it",
    "503": "the database is unavailable",
}


def _responses(ok: str, schema: dict[str, Any], errors: tuple[str, ...]) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": ok,
                                         "content": {"application/json": {"schema": schema}}}}
    for code in errors:
        responses[code] = {"description": _ERRORS[code],
                           "content": {"application/json": {"schema": _ref("Error")}}}
    return responses


_WRITE_ERRORS = ("400", "401", "403", "404", "409", "413", "422", "503")
_READ_ERRORS = ("401", "403", "404", "422", "503")


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def openapi_document(reasons: list[str]) -> dict[str, Any]:
    issuer = {"type": "string", "pattern": ISSUER_PATTERN, "description": "issuer name"}
    serial = {"type": "string", "pattern": SERIAL_PATTERN,
              "description": "serial in hex (0x and colons accepted)"}
    time = {"type": "string", "format": "date-time",
            "description": "ISO 8601; without a zone, UTC"}
    state = {
        "type": "object", "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["good", "revoked"]},
            "reason": _string_or_null(), "revoked_at": _string_or_null(),
            "invalidity_date": _string_or_null(),
        },
    }
    revocation = {
        "type": "object", "additionalProperties": False,
        "required": ["issuer", "serial", "reason"],
        "properties": {"issuer": issuer, "serial": serial,
                       "reason": {"type": "string", "enum": reasons},
                       "revoked_at": time, "invalidity_date": time},
    }
    change = {
        "type": "object", "required": ["issuer", "serial", "change_seq", "before", "after"],
        "properties": {"issuer": {"type": "string"}, "serial": {"type": "string"},
                       "change_seq": {"type": "integer"},
                       "before": _nullable(_ref("State")), "after": _nullable(_ref("State"))},
    }
    certificate = {
        "type": "object",
        "required": ["issuer", "serial", "status", "reason", "revoked_at", "invalidity_date",
                     "not_after", "hold_released", "change_seq", "changed_at", "crl_url",
                     "shard"],
        "properties": {
            "issuer": {"type": "string"}, "serial": {"type": "string"},
            "status": {"type": "string", "enum": ["good", "revoked"]},
            "reason": _string_or_null(), "revoked_at": _string_or_null(),
            "invalidity_date": _string_or_null(), "not_after": {"type": "string"},
            "hold_released": {"type": "boolean"}, "change_seq": {"type": "integer"},
            "changed_at": _string_or_null(), "crl_url": _string_or_null(),
            "shard": {"type": ["integer", "null"]},
        },
    }
    issuer_info = {
        "type": "object",
        "required": ["name", "id", "subject", "profile", "crl_shards", "crl_key", "ocsp"],
        "properties": {
            "name": {"type": "string"}, "id": {"type": "integer"}, "subject": {"type": "string"},
            "profile": {"type": "string", "enum": ["br", "private"]},
            "crl_shards": {"type": "integer"}, "crl_key": {"type": "boolean"},
            "ocsp": {"type": "string", "enum": ["ca", "delegated"]},
        },
    }
    audit_entry = {
        "type": "object",
        "required": ["id", "at", "actor", "source", "action", "issuer", "serial", "before",
                     "after", "details"],
        "properties": {
            "id": {"type": "integer"}, "at": {"type": "string"},
            "actor": {"type": "string", "description": "token name, or the OS user (CLI)"},
            "source": {"type": "string", "description": "client address, or \"cli\""},
            "action": {"type": "string", "enum": list(ACTIONS)},
            "issuer": _string_or_null(), "serial": _string_or_null(),
            "before": _nullable(_ref("State")), "after": _nullable(_ref("State")),
            "details": {"type": "object"},
        },
    }
    error = {
        "type": "object", "required": ["error", "field"],
        "properties": {"error": {"type": "string"}, "field": _string_or_null()},
    }
    limit = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}
    return {
        "openapi": "3.1.0",
        "info": {"title": "revoc admin API", "version": "1",
                 "description": "Revoke, release and record certificates; read their status, "
                 "the issuers, recent changes and the audit trail. Bearer tokens with scopes "
                 "read < revoke < admin (`revoc token create`)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": error, "State": state, "Revocation": revocation,
                        "Change": change, "Certificate": certificate, "Issuer": issuer_info,
                        "AuditEntry": audit_entry},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/openapi.json": {"get": {
                "summary": "this document", "security": [], "operationId": "openapi",
                "responses": {"200": {"description": "the OpenAPI document",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}}}},
            "/v1/revocations": {"post": {
                "summary": "revoke one certificate (scope revoke)", "operationId": "revoke",
                "requestBody": _body(_ref("Revocation")),
                "responses": _responses("revoked; `after` is its new state", _ref("Change"),
                                        _WRITE_ERRORS)}},
            "/v1/revocations/batch": {"post": {
                "summary": "revoke up to 1000 certificates in one transaction, all or none "
                           "(scope revoke)", "operationId": "revokeBatch",
                "requestBody": _body({
                    "type": "object", "additionalProperties": False,
                    "required": ["revocations"],
                    "properties": {"revocations": {"type": "array", "minItems": 1,
                                                   "maxItems": MAX_BATCH,
                                                   "items": _ref("Revocation")}}}),
                "responses": _responses("all revoked", {
                    "type": "object", "required": ["changes"],
                    "properties": {"changes": {"type": "array", "items": _ref("Change")}}},
                    _WRITE_ERRORS)}},
            "/v1/unholds": {"post": {
                "summary": "release a certificateHold (scope revoke)", "operationId": "unhold",
                "requestBody": _body({
                    "type": "object", "additionalProperties": False,
                    "required": ["issuer", "serial"],
                    "properties": {"issuer": issuer, "serial": serial}}),
                "responses": _responses("released", _ref("Change"), _WRITE_ERRORS)}},
            "/v1/certificates": {"post": {
                "summary": "record issued certificates as good, all or none (scope admin)",
                "operationId": "addCertificates",
                "requestBody": _body({
                    "type": "object", "additionalProperties": False,
                    "required": ["issuer", "certificates"],
                    "properties": {"issuer": issuer, "certificates": {
                        "type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                        "items": {"type": "string", "description": "one PEM certificate"}}}}),
                "responses": _responses("recorded (`added` false: known already)", {
                    "type": "object", "required": ["results"],
                    "properties": {"results": {"type": "array", "items": {
                        "type": "object", "required": ["serial", "added", "shard"],
                        "properties": {"serial": {"type": "string"},
                                       "added": {"type": "boolean"},
                                       "shard": {"type": ["integer", "null"]}}}}}},
                    _WRITE_ERRORS)}},
            "/v1/certificates/{issuer}/{serial}": {"get": {
                "summary": "a certificate's status, reason and times (scope read)",
                "operationId": "getCertificate",
                "parameters": [
                    {"name": "issuer", "in": "path", "required": True, "schema": issuer},
                    {"name": "serial", "in": "path", "required": True, "schema": serial}],
                "responses": _responses("the certificate", _ref("Certificate"),
                                        _READ_ERRORS)}},
            "/v1/issuers": {"get": {
                "summary": "registered issuers (scope read)", "operationId": "listIssuers",
                "responses": _responses("the issuers", {
                    "type": "object", "required": ["issuers"],
                    "properties": {"issuers": {"type": "array", "items": _ref("Issuer")}}},
                    _READ_ERRORS)}},
            "/v1/changes": {"get": {
                "summary": "certificates added or changed after change_seq `since`, oldest "
                           "first (scope read)", "operationId": "listChanges",
                "parameters": [
                    _query("since", {"type": "integer", "minimum": 0,
                                     "maximum": (1 << 63) - 1, "default": 0},
                           "the `next` of the previous page"),
                    _query("issuer", issuer, "only this issuer"),
                    _query("limit", limit, "at most this many")],
                "responses": _responses("changes, and the `since` of the next page", {
                    "type": "object", "required": ["changes", "next"],
                    "properties": {"changes": {"type": "array", "items": _ref("Certificate")},
                                   "next": {"type": "integer"}}}, _READ_ERRORS)}},
            "/v1/audit": {"get": {
                "summary": "the audit trail, newest first (scope read)",
                "operationId": "listAudit",
                "parameters": [
                    _query("issuer", issuer, "only changes of this issuer"),
                    _query("serial", serial, "only changes of this serial"),
                    _query("actor", {"type": "string", "pattern": ACTOR_PATTERN},
                           "only changes by this token name or OS user"),
                    _query("since", time, "only changes at or after this time"),
                    _query("before_id", {"type": "integer", "minimum": 1,
                                         "maximum": (1 << 63) - 1},
                           "the `next_before_id` of the previous page"),
                    _query("limit", limit, "at most this many")],
                "responses": _responses("entries, and the `before_id` of the next page", {
                    "type": "object", "required": ["entries", "next_before_id"],
                    "properties": {"entries": {"type": "array", "items": _ref("AuditEntry")},
                                   "next_before_id": {"type": ["integer", "null"]}}},
                    _READ_ERRORS)}},
        },
    }
