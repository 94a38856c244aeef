"""What the fuzzer must know beyond the OpenAPI document (tests/contract.sh).

GET /sms has rules that span parameters, which an OpenAPI document cannot
state (each parameter's description says them): with `cursor`, no `offset`,
`orderBy` only `id`, and `sortOrder` the cursor's own direction. Only
combinations documented as valid are generated; the server answers the
others with a 400 naming the parameter (tests/api).

An `Idempotency-Key` reused for a different request is a 422 by design; a
valid key the fuzzer generates is made unique, so that two unrelated cases
never share one by chance.
"""

import uuid

import schemathesis
from schemathesis import GenerationMode


def _text(value):
    return value if isinstance(value, str) else None


def _is(case, method, path):
    return case.operation.method.upper() == method and case.operation.path == path


@schemathesis.hook
def filter_case(ctx, case):
    query = case.query
    if not _is(case, "GET", "/sms") or not isinstance(query, dict) or "cursor" not in query:
        return True
    if "offset" in query:
        return False
    if query.get("orderBy") not in (None, "id"):
        return False
    cursor, sort = _text(query["cursor"]), _text(query.get("sortOrder"))
    if cursor and sort:
        return (cursor[0] == "d") == (sort.lower() == "desc")
    return True


@schemathesis.hook
def map_case(ctx, case):
    headers = case.headers or {}
    key = _text(headers.get("Idempotency-Key"))
    positive = case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE
    if _is(case, "POST", "/sms") and key and positive:
        headers["Idempotency-Key"] = f"{key[:160]}-{uuid.uuid4().hex}"
        case.headers = headers
    return case
