"""Schemathesis hooks: sign every generated request as a redeemd terminal (docs/api/README.md).

Use: SCHEMATHESIS_HOOKS=hooks (with this directory on PYTHONPATH), REDEEMD_TERMINAL=T-1,
REDEEMD_KEY_FILE=path/to/T-1.key (hex secret, as written by `clearing-server admin enroll --key-file`).
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


@schemathesis.hook
def before_call(context, case, kwargs):
    # Exercise the enrolled terminal: other ids only ever reach the authentication refusal.
    if case.path_parameters and "terminal_id" in case.path_parameters:
        case.path_parameters["terminal_id"] = _TERMINAL
    kwargs["auth"] = _AUTH
