"""Schemathesis hooks for scripts/schemathesis.sh.

The fuzzer authenticates as one ADMIN (TXDX_FUZZ_USER_ID). Schemathesis
reads that user's id out of the bearer token and out of GET /api/users and
uses it as a path parameter, so left alone it changes the ADMIN's password
or role, or deletes it, a few seconds into the run: the token then answers
401 to everything and the rest of the run tests nothing. Requests that
would change or delete that one account are pointed at a fresh id instead
(a documented 404); every other request, including GET of the account and
changes to every other user, goes out as generated.
"""

import os
import uuid

import schemathesis

OWN_USER_ID = os.environ.get("TXDX_FUZZ_USER_ID", "")


@schemathesis.hook
def before_call(context, case, kwargs):
    if (
        OWN_USER_ID
        and case.method.upper() in ("PUT", "DELETE")
        and case.path == "/api/users/{id}"
        and str((case.path_parameters or {}).get("id", "")).lower() == OWN_USER_ID
    ):
        case.path_parameters = {**case.path_parameters, "id": str(uuid.uuid4())}
