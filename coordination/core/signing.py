"""Signed decisions: a person's approval or rejection, signed by the dashboard, so an agent can
tell it from one that another agent wrote.

Agents must be able to write a session's approvals (that is how they ask), and anyone holding
their Redis credentials can therefore write a decision too, naming any supervisor. The
dashboard signs each decision it makes with an Ed25519 key derived from its ``SECRET_KEY``;
agents get only the public key (``COORDINATION_DECISION_KEY``, printed by ``manage.py
decision_key``) and check the signature before acting. The signature covers the namespace,
session, approval id, the request's event id (so it cannot be moved to another request), the
decision, who made it, the message and the edited arguments.

Asymmetric on purpose: with a shared HMAC key, every agent able to check a decision could also
make one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Any

from .errors import CoordinationError, InvalidApproval

DECISION_KEY_ENV = "COORDINATION_DECISION_KEY"


def decision_payload(
    namespace: str,
    session_id: str,
    approval_id: str,
    request_event_id: str | None,
    approved: bool,
    by: str,
    message: str | None,
    args: Any,
) -> bytes:
    """The exact bytes signed: canonical JSON of everything the decision says."""
    return json.dumps(
        [
            "coordination.decision.v1",
            namespace,
            session_id,
            approval_id,
            request_event_id,
            approved,
            by,
            message,
            args,
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")


class SigningUnavailable(CoordinationError, ImportError):
    """Signed decisions need the ``cryptography`` package (``pip install coordinator[signing]``)."""


def _ed25519():
    # Imported on first use, so an agent host that never checks decisions installs only redis
    # and hiredis (``pip install coordinator``); the dashboard and the agents extra bring it.
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningUnavailable(
            "signed decisions need the cryptography package: pip install coordinator[signing]"
        ) from None
    return ed25519, serialization, exceptions


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DecisionSigner:
    """Signs decisions (the dashboard's side)."""

    def __init__(self, seed: bytes) -> None:
        ed25519, self._serialization, _ = _ed25519()
        self._key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)

    @classmethod
    def from_secret(cls, secret: str, namespace: str) -> DecisionSigner:
        """The deployment's signer: one key per SECRET_KEY and namespace."""
        seed = hashlib.sha256(
            b"coordination.decisions\0" + namespace.encode() + b"\0" + secret.encode()
        ).digest()
        return cls(seed)

    @property
    def public_key(self) -> str:
        """What agents are given (``COORDINATION_DECISION_KEY``): base64url, 43 characters."""
        raw_format = self._serialization.Encoding.Raw, self._serialization.PublicFormat.Raw
        raw = self._key.public_key().public_bytes(*raw_format)
        return _b64(raw)

    def sign(self, payload: bytes) -> str:
        return _b64(self._key.sign(payload))


class DecisionVerifier:
    """Checks decisions (the agents' side), with the dashboard's public key."""

    def __init__(self, public_key: str) -> None:
        ed25519, _, exceptions = _ed25519()
        self._invalid_signature = exceptions.InvalidSignature
        try:
            raw = _unb64(public_key.strip())
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, binascii.Error, AttributeError):
            raise InvalidApproval(
                f"{public_key[:60]!r} is not a decision key (manage.py decision_key prints it)"
            ) from None

    @classmethod
    def from_env(cls) -> DecisionVerifier | None:
        """The verifier for ``COORDINATION_DECISION_KEY``, or None when it is not set."""
        value = os.environ.get(DECISION_KEY_ENV, "").strip()
        return cls(value) if value else None

    def verify(self, payload: bytes, signature: str | None) -> bool:
        if not isinstance(signature, str) or not signature:
            return False
        try:
            self._key.verify(_unb64(signature), payload)
        except (self._invalid_signature, ValueError, binascii.Error):
            return False
        return True
