"""Validates real answers of a gateway against docs/openapi.yaml (OpenAPI 3.1).

Usage: validate.py SPEC RECORDS ROUTES
  SPEC     docs/openapi.yaml
  RECORDS  JSON list of {"method","path","status","content_type","body"} as answered
  ROUTES   JSON list of the paths the control listener serves, read from its source

Fails (exit 1, one line per problem) when the spec is not valid OpenAPI 3.1, a served
route is missing from it (or it documents one that is not served), an answer's status or
content type is not documented for its operation, or a JSON body does not match its
schema. Validators: openapi-spec-validator and openapi-schema-validator (PyPI).
"""

import json
import sys

import yaml
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:pushgate:openapi"


def pointer(*parts):
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def main():
    spec_path, records_path, routes_path = sys.argv[1:4]
    with open(spec_path) as f:
        spec = yaml.safe_load(f)
    with open(records_path) as f:
        records = json.load(f)
    with open(routes_path) as f:
        routes = json.load(f)
    problems = []

    validate_spec(spec)

    documented = set(spec["paths"])
    for r in routes:
        if r not in documented:
            problems.append(f"served but not in the spec: {r}")
    for p in documented - set(routes):
        problems.append(f"in the spec but not served: {p}")

    registry = Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    exercised = set()
    for rec in records:
        where = f"{rec['method']} {rec['path']} -> {rec['status']}"
        item = spec["paths"].get(rec["path"])
        op = (item or {}).get(rec["method"].lower())
        if item is not None and op is None:
            # A method the path does not list: the spec's 405 response, whatever the path.
            op = {"responses": {"405": {"$ref": "#/components/responses/MethodNotAllowed"}}}
        if op is None:
            problems.append(f"{where}: no such operation in the spec")
            continue
        responses = op.get("responses", {})
        status = str(rec["status"])
        if status not in responses:
            problems.append(f"{where}: status not documented")
            continue
        exercised.add((rec["path"], rec["method"].lower(), status))
        base = ["paths", rec["path"], rec["method"].lower(), "responses", status]
        response = responses[status]
        if "$ref" in response:
            ref = response["$ref"]
            base = ref.lstrip("#/").split("/")
            response = spec
            for part in base:
                response = response[part]
        media = rec["content_type"].split(";")[0].strip()
        content = response.get("content", {})
        if media not in content:
            problems.append(f"{where}: content type {media!r} not documented ({list(content)})")
            continue
        schema_ptr = pointer(*base, "content", media, "schema")
        schema = {"$ref": f"{SPEC_URI}#/{schema_ptr}"}
        if media == "application/json":
            try:
                instance = json.loads(rec["body"])
            except ValueError as e:
                problems.append(f"{where}: body is not JSON ({e}): {rec['body'][:200]!r}")
                continue
        else:
            instance = rec["body"]
        validator = OAS31Validator(schema, registry=registry)
        for err in validator.iter_errors(instance):
            problems.append(f"{where}: {err.message} at {list(err.absolute_path)} in {str(instance)[:300]}")

        # A request that was carried out: its body against the operation's request body.
        request = rec.get("request")
        if rec["status"] == 200 and request and "requestBody" in op:
            req_media = (rec.get("request_type") or "application/json").split(";")[0].strip()
            req_content = op["requestBody"].get("content", {})
            if req_media not in req_content:
                problems.append(f"{where}: request content type {req_media!r} not documented")
                continue
            req_ptr = pointer("paths", rec["path"], rec["method"].lower(), "requestBody",
                              "content", req_media, "schema")
            req_validator = OAS31Validator({"$ref": f"{SPEC_URI}#/{req_ptr}"}, registry=registry)
            req_instance = json.loads(request) if req_media == "application/json" else request
            for err in req_validator.iter_errors(req_instance):
                problems.append(f"{where}: request {err.message} at {list(err.absolute_path)}")

    # Every documented path was answered 200 at least once.
    for p in documented:
        if not any(e[0] == p and e[2] == "200" for e in exercised):
            problems.append(f"{p}: no 200 answer was checked")

    for line in problems:
        print(line)
    print(f"{len(records)} answers checked against {spec_path}, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
