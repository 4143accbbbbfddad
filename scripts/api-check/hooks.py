"""Schemathesis hooks for scripts/api-check.sh.

A valid ``?wait=`` long-polls up to 60 s for an action no worker will settle here: keep
valid waits at one second so the run tests the API rather than the clock. Invalid waits
still go through unchanged (the negative tests).
"""

import re

import schemathesis

_VALID_WAIT = re.compile(r"^([0-5]?[0-9]|60)s?$")


@schemathesis.hook
def map_query(ctx, query):  # type: ignore[no-untyped-def]
    if query and isinstance(query.get("wait"), str) and _VALID_WAIT.match(query["wait"]):
        query["wait"] = "1"
    return query
