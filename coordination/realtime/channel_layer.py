"""The channel layer, authenticated: only a dashboard process can put a message on a page.

Agents hold REDIS_URL, and Redis pub/sub has no notion of who published. With the stock
``RedisPubSubChannelLayer`` anyone who can reach Redis can PUBLISH a msgpack message to a
group's channel, and the consumers would forward the markup it carries to open pages (where
htmx swaps it in and fires requests with the viewer's CSRF header), or dispatch a forged
``websocket.disconnect``. So every message this layer sends is sealed with an HMAC-SHA256 tag
keyed from Django's ``SECRET_KEY`` (agents never have it) and the layer's prefix (the
deployment's namespace), over the message, the channel it was sent to and the time it was
sent. A receiver drops, with one rate-limited warning, anything that fails to verify: unsigned,
forged, altered, sealed by another deployment or namespace, re-published to another channel
or group, older than ``max_age``, or of a type no dashboard process sends (``websocket.*``).
The consumer keeps running, its socket stays open and the page is unchanged.

Why not channels_redis' own ``symmetric_encryption_keys`` (Fernet)? It needs ``cryptography``,
which the dashboard does not otherwise depend on; it cannot bind a message to the channel it
was published on, so a captured message could be replayed into another session's group; and
a token that fails to decrypt raises inside ``receive``, which ends the consumer (Channels'
dispatch loop does not survive it). Confidentiality is not the point (agents may read the feed
these messages are made from); authenticity is, and the standard library's HMAC gives it.

Messages still carry HTML (the relay renders a batch's timeline rows once for every open page):
that HTML is rendered by the dashboard's own escaping templates from data it read and
sanitised, and with this layer nothing else can reach a page, so it is as trusted as a page
rendered in a view.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

import msgpack
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.utils.crypto import salted_hmac

log = logging.getLogger(__name__)

WIRE_VERSION = b"\x01"
TAG_BYTES = 32  # SHA-256
MAX_AGE = 300.0  # seconds a sealed message stays valid (bounds replays; allows clock skew)
WARN_EVERY = 10.0  # at most one warning per this many seconds; the others are counted
# Types dashboard processes send: dotted lowercase names, never the ASGI server's own.
_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_SERVER_TYPES = ("websocket.", "http.", "lifespan.")


class Rejected(ValueError):
    """A channel-layer message that did not come, unaltered, from a dashboard process."""


def derive_key(secret: str | bytes, prefix: str) -> bytes:
    """The sealing key: one per SECRET_KEY and layer prefix, so another deployment (or another
    namespace on the same Redis) cannot produce a message this one accepts."""
    return salted_hmac(
        "coordination.realtime.channel_layer", prefix, secret=secret, algorithm="sha256"
    ).digest()


class RateLimitedWarning:
    """One warning line per ``every`` seconds; a flood is summarised, never logged line by line
    (whoever floods Redis must not flood the logs as well)."""

    def __init__(self, logger: logging.Logger, message: str, every: float = WARN_EVERY) -> None:
        self.logger = logger
        self.message = message
        self.every = every
        self._next_at = 0.0
        self._suppressed = 0

    def __call__(self, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return
        also = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
        self._suppressed = 0
        self._next_at = now + self.every
        self.logger.warning(self.message + "%s", *args, also)

    def reset(self) -> None:
        self._next_at = 0.0
        self._suppressed = 0


class AuthenticatedPubSubLayer(RedisPubSubChannelLayer):
    """``RedisPubSubChannelLayer`` whose messages are sealed on send and verified on receive.

    Sealing happens in ``send``/``group_send`` (they know the destination); verification in
    ``receive`` (it knows the receiving channel and its groups). ``serialize`` is refused so no
    path can publish an unsealed message, and ``deserialize`` hands the raw bytes back to
    ``receive`` unchanged.
    """

    def __init__(
        self,
        *args: Any,
        max_age: float = MAX_AGE,
        secret_keys: Iterable[str | bytes] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("symmetric_encryption_keys"):
            raise ValueError("AuthenticatedPubSubLayer seals messages itself; drop the keys")
        super().__init__(*args, **kwargs)
        prefix = kwargs.get("prefix", "asgi")
        secrets = (
            list(secret_keys)
            if secret_keys is not None
            else [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
        )
        if not secrets:
            raise ValueError("the channel layer needs a SECRET_KEY to seal its messages")
        # the first key seals; any of them opens (SECRET_KEY_FALLBACKS during a rotation)
        self._keys = [derive_key(s, prefix) for s in secrets]
        self.max_age = max_age
        self.rejected = 0
        self.warn = RateLimitedWarning(log, "channel layer: dropped a message for %s: %s")

    # -- wire format: version byte, HMAC tag, msgpack([sent_at, destination, message]) --

    def seal(self, destination: str, message: dict[str, Any]) -> bytes:
        payload = msgpack.packb([time.time(), destination, message], use_bin_type=True)
        tag = hmac.new(self._keys[0], WIRE_VERSION + payload, "sha256").digest()
        return WIRE_VERSION + tag + payload

    def open(self, raw: object, channel: str, groups: dict[str, set[str]]) -> dict[str, Any]:
        """The message inside ``raw`` if a dashboard process sealed it for ``channel`` (or for
        a group ``channel`` is in) within ``max_age``; ``Rejected`` otherwise."""
        if not isinstance(raw, bytes) or len(raw) <= 1 + TAG_BYTES:
            raise Rejected("not a sealed message")
        if raw[:1] != WIRE_VERSION:
            raise Rejected("not a sealed message (unknown format)")
        tag, payload = raw[1 : 1 + TAG_BYTES], raw[1 + TAG_BYTES :]
        signed = WIRE_VERSION + payload
        if not any(
            hmac.compare_digest(tag, hmac.new(key, signed, "sha256").digest()) for key in self._keys
        ):
            raise Rejected("bad signature (forged, altered, or sealed by another deployment)")
        try:
            sent_at, destination, message = msgpack.unpackb(payload, raw=False)
        except Exception as exc:  # a bug on the sending side, not an attack: still dropped
            raise Rejected(f"unreadable sealed payload ({type(exc).__name__})") from None
        if destination != channel and channel not in groups.get(destination, ()):
            raise Rejected("sealed for another channel (replayed)")
        age = time.time() - sent_at if isinstance(sent_at, (int, float)) else None
        if age is None or abs(age) > self.max_age:
            raise Rejected("too old, or from a clock too far off")
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str) or not _TYPE.match(kind) or kind.startswith(_SERVER_TYPES):
            raise Rejected("not a message type the dashboard sends")
        return message

    # -- the channel layer API --

    def serialize(self, message: dict[str, Any]) -> bytes:
        raise TypeError("messages are sealed by send() and group_send(), which know the channel")

    def deserialize(self, message: bytes) -> bytes:
        return message  # verified by receive(), which knows the receiving channel

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        layer = self._get_layer()
        await layer._get_shard(channel).publish(channel, self.seal(channel, message))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        layer = self._get_layer()
        name = layer._get_group_channel_name(group)
        await layer._get_shard(name).publish(name, self.seal(name, message))

    async def receive(self, channel: str) -> dict[str, Any]:
        layer = self._get_layer()
        while True:
            raw = await layer.receive(channel)  # the raw bytes (see deserialize)
            try:
                return self.open(raw, channel, layer.groups)
            except Rejected as exc:
                self.rejected += 1
                self.warn(channel, str(exc))
