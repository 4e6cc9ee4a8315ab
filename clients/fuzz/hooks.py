"""Schemathesis hooks for tests/e2e/openapi_fuzz.rs.

Every webhook URL the fuzzer sends points at the test's receiver on
127.0.0.1 (COURIER_RECEIVER_URL): courier would otherwise deliver test sends
and events to whatever host the fuzzer made up. A URL is either rewritten to
the receiver's host and port, keeping its path and query, or, when it cannot
be read with certainty, replaced by one that courier refuses ("not a url"),
so a request the fuzzer meant to be invalid stays invalid.
"""

import os
from urllib.parse import urlsplit

import schemathesis

RECEIVER = urlsplit(os.environ["COURIER_RECEIVER_URL"])
assert RECEIVER.hostname == "127.0.0.1", RECEIVER


def local(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a url"
    if parts.scheme not in ("http", "https"):
        # Refused by courier whatever the host: nothing is sent anywhere.
        return url
    path = parts.path if parts.path.startswith("/") else "/" + parts.path
    query = f"?{parts.query}" if parts.query else ""
    # Right after the port comes "/": no parser reads a host past it.
    return f"{parts.scheme}://{RECEIVER.netloc}{path}{query}"


@schemathesis.hook
def before_call(context, case, kwargs):
    if isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
        case.body["url"] = local(case.body["url"])
