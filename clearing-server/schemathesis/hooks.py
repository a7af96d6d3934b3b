"""Schemathesis hooks: authenticate every generated request as docs/api/README.md says.

Terminal requests (/v1/terminals/...) are signed as a redeemd terminal; platform-API requests carry
the API key of the role their path is for (the member app's for /v1/member/..., an operator's
otherwise); /v1/enroll carries none.

Use: SCHEMATHESIS_HOOKS=hooks (with this directory on PYTHONPATH), REDEEMD_TERMINAL=T-1,
REDEEMD_KEY_FILE=path/to/T-1.key (hex secret, as written by `clearing-server admin enroll --key-file`),
REDEEMD_OPERATOR_KEY and REDEEMD_MEMBER_APP_KEY (API keys, `admin credential create`),
REDEEMD_CARD_HANDLE (a card granted to that member app, `admin card grant`).
The signature is computed from the final prepared request (method, path and query, body bytes), so
every case schemathesis generates is authenticated and the server's answers past authentication are
exercised.
"""
import hashlib
import hmac
import os
import struct
import time

import requests
import schemathesis
from schemathesis.core.parameters import ParameterLocation


HEADERS = (
    "X-Redeemd-Terminal",
    "X-Redeemd-Timestamp",
    "X-Redeemd-Nonce",
    "X-Redeemd-Content-SHA256",
    "X-Redeemd-Signature",
)


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t
        i += 1
    return okm[:length]


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw


class RedeemdAuth(requests.auth.AuthBase):
    def __init__(self, terminal: str, secret: bytes):
        self.terminal = terminal
        self.key = _hkdf_sha256(secret, b"redeemd/v1/terminal", f"redeemd/v1/request-sign/{terminal}".encode())

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        # A case without all five headers is a negative test of authentication: send it unsigned.
        if any(h not in r.headers for h in HEADERS):
            return r
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        ts = int(time.time() * 1000)
        nonce = os.urandom(16).hex()
        digest = hashlib.sha256(body).digest()
        canonical = (
            b"redeemd/request/v1" + _s(r.method.upper()) + _s(r.path_url) + _s(self.terminal)
            + struct.pack(">q", ts) + _s(nonce) + digest
        )
        r.headers["X-Redeemd-Terminal"] = self.terminal
        r.headers["X-Redeemd-Timestamp"] = str(ts)
        r.headers["X-Redeemd-Nonce"] = nonce
        r.headers["X-Redeemd-Content-SHA256"] = digest.hex()
        r.headers["X-Redeemd-Signature"] = hmac.new(self.key, canonical, hashlib.sha256).hexdigest()
        return r


_TERMINAL = os.environ.get("REDEEMD_TERMINAL", "T-1")
with open(os.environ["REDEEMD_KEY_FILE"]) as f:
    _AUTH = RedeemdAuth(_TERMINAL, bytes.fromhex(f.read().strip()))


class Bearer(requests.auth.AuthBase):
    def __init__(self, token: str):
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        # A case without the header is a negative test of authentication: send it without a key.
        if "Authorization" in r.headers:
            r.headers["Authorization"] = f"Bearer {self.token}"
        return r


_OPERATOR = Bearer(os.environ["REDEEMD_OPERATOR_KEY"])
_MEMBER_APP = Bearer(os.environ["REDEEMD_MEMBER_APP_KEY"])
_HANDLE = os.environ["REDEEMD_CARD_HANDLE"]
# The keys' ids (k_<16 hex>): the stateful phase follows links from listings, and must not revoke the
# keys the run itself uses, nor disable the terminal it signs as.
_OWN_KEYS = {"k_" + t.split("_")[1] for t in (_OPERATOR.token, _MEMBER_APP.token)}


def _negative_at(case, location) -> bool:
    return case.meta is not None and case.meta.is_negative_at(location)


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.path
    # A case made schema-invalid in its path or in its Authorization header is sent as generated:
    # replacing those parts with valid ones would make the server accept it.
    negative_path = _negative_at(case, ParameterLocation.PATH)
    if path.startswith("/v1/terminals/"):
        # Exercise the enrolled terminal: other ids only ever reach the authentication refusal.
        if case.path_parameters and "terminal_id" in case.path_parameters:
            case.path_parameters["terminal_id"] = _TERMINAL
        kwargs["auth"] = _AUTH
    elif _negative_at(case, ParameterLocation.HEADER):
        return
    elif path.startswith("/v1/member/"):
        # The card granted to the member app (others are 404, tested in clearing-server/tests/).
        if case.path_parameters and "handle" in case.path_parameters and not negative_path:
            case.path_parameters["handle"] = _HANDLE
        # The catalogue's offer, so that customizing reaches the card (then package_still_usable).
        body = case.body
        if path.endswith("/packages") and isinstance(body, dict) and isinstance(body.get("offer_id"), str) \
                and not _negative_at(case, ParameterLocation.BODY):
            body["offer_id"] = "WASH10"
        kwargs["auth"] = _MEMBER_APP
    elif path != "/v1/enroll":
        params = case.path_parameters or {}
        if params.get("credential_id") in _OWN_KEYS:
            params["credential_id"] = "k_0000000000000000"
        if path.endswith("/disable") and params.get("terminal_id") == _TERMINAL:
            params["terminal_id"] = "T-not-enrolled"
        if path.endswith("/retire") and params.get("offer_id") == "WASH10":
            params["offer_id"] = "NOT-WASH10"
        kwargs["auth"] = _OPERATOR
