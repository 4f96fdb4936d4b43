"""Properties over arbitrary input: ``receive`` only ever raises ``WebhookError``, and signatures
verify exactly the bytes they were made for."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from aerostic_webhooks import (
    Event,
    InvalidPayload,
    InvalidSignature,
    MemoryStore,
    Receipt,
    WebhookError,
    WebhookReceiver,
    sign,
    verify_signature,
)
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_payload

SECRET = "secret"
HEADER = "X-Aerostic-Signature"
HEX = "0123456789abcdef"

# The autouse conftest fixture is function scoped but only sets an environment variable, so
# sharing it across examples is harmless.
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET, store=MemoryStore()) as webhooks:
        yield webhooks


# -- strategies ----------------------------------------------------------------------------------

header_names = st.one_of(
    st.text(max_size=30),
    st.sampled_from([HEADER, HEADER.lower(), HEADER.upper(), "x-Aerostic-SIGNATURE"]),
    st.sampled_from(["Content-Type", "content-length", "User-Agent", ""]),
)
header_text_values = st.one_of(
    st.text(max_size=120),
    st.builds(lambda s: "sha256=" + s, st.text(alphabet=HEX + "ABCDEFxz é", max_size=70)),
    st.builds(lambda b: "sha256=" + b.hex(), st.binary(min_size=32, max_size=32)),
)


def text_headers(value: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """A dict of text to text, or a list of pairs, as frameworks hand headers over."""
    pairs = st.lists(st.tuples(header_names, value), max_size=6)
    return st.one_of(
        st.dictionaries(header_names, value, max_size=6),
        pairs,
        pairs.map(tuple),
    )


def bytes_headers(value: st.SearchStrategy[bytes]) -> st.SearchStrategy[Any]:
    names = header_names.map(lambda n: n.encode("utf-8"))
    pairs = st.lists(st.tuples(names, value), max_size=6)
    return st.one_of(st.dictionaries(names, value, max_size=6), pairs)


unsigned_headers = st.one_of(
    text_headers(header_text_values),
    bytes_headers(st.one_of(st.binary(max_size=80), header_text_values.map(str.encode))),
)

bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.sampled_from(list(SAMPLE_PAYLOADS.values())).map(lambda p: json.dumps(p).encode()),
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    """Something shaped roughly like an event, often wrong somewhere."""
    event_type = draw(
        st.one_of(st.sampled_from([*SAMPLE_PAYLOADS, "order.shipped"]), json_values, st.text())
    )
    timestamp = draw(
        st.one_of(
            st.sampled_from(["2026-01-30T15:45:00Z", "2026-01-30T15:45:00", "yesterday"]),
            json_values,
        )
    )
    data = draw(
        st.one_of(st.sampled_from([p["data"] for p in SAMPLE_PAYLOADS.values()]), json_values)
    )
    envelope = {"event": event_type, "timestamp": timestamp, "data": data}
    drop = draw(st.sets(st.sampled_from(list(envelope)), max_size=1))
    envelope = {k: v for k, v in envelope.items() if k not in drop}
    return draw(st.one_of(st.just(envelope), json_values))


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """A documented sample with its data fields varied, serialised like a sender might."""
    event_type = draw(st.sampled_from(list(SAMPLE_PAYLOADS)))
    data_id = draw(st.text(min_size=1, max_size=60))
    overrides: dict[str, Any] = {"id": data_id}
    text_fields = {
        "message.received": ["from", "text", "wamid", "type"],
        "message.sent": ["to", "status", "wamid"],
        "message.delivered": ["to", "status"],
        "message.read": ["to", "status"],
        "message.failed": ["to", "status"],
        "contact.created": ["phone", "name"],
    }[event_type]
    for field in draw(st.sets(st.sampled_from(text_fields))):
        overrides[field] = draw(st.text(max_size=40))
    if draw(st.booleans()):
        # A field the models do not know (prefixed, so it never collides with a known one).
        overrides["x_" + draw(st.text(max_size=10))] = draw(json_values)
    payload = sample_payload(event_type, **overrides)
    if draw(st.booleans()):
        payload["x_top"] = draw(json_values)
    body = json.dumps(
        payload,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 2])),
    ).encode()
    return event_type, data_id, body


def signed_headers(body: bytes, shape: str, extra_signatures: list[str]) -> Any:
    value = ", ".join([*extra_signatures, sign(body, SECRET)])
    if shape == "dict":
        return {HEADER: value, "Content-Type": "application/json"}
    if shape == "lower":
        return {"content-type": "application/json", HEADER.lower(): value}
    if shape == "bytes":
        return {b"x-aerostic-signature": value.encode(), b"content-type": b"application/json"}
    return [("Content-Type", "application/json"), ("X-AEROSTIC-SIGNATURE", value)]


shapes = st.sampled_from(["dict", "lower", "bytes", "pairs"])
other_signatures = st.lists(
    st.one_of(
        st.builds(lambda b: "sha256=" + b.hex(), st.binary(min_size=32, max_size=32)),
        st.text(alphabet="sha256=" + HEX + " ", max_size=20),
    ),
    max_size=2,
).map(lambda values: [v.replace(",", "") for v in values])


# -- receive -------------------------------------------------------------------------------------


@FAST
@given(body=bodies, headers=unsigned_headers)
def test_receive_without_the_signature_raises_invalid_signature(
    receiver: WebhookReceiver, body: bytes, headers: Any
) -> None:
    with pytest.raises(InvalidSignature) as caught:
        receiver.receive(body, headers)
    assert caught.value.status_code == 401


@FAST
@given(body=bodies, headers=unsigned_headers, shape=shapes, data=st.data())
def test_receive_raises_only_webhook_errors(
    receiver: WebhookReceiver, body: bytes, headers: Any, shape: str, data: st.DataObject
) -> None:
    """Arbitrary bytes and header maps, sometimes with the right signature added."""
    if data.draw(st.booleans(), label="signed"):
        value = sign(body, SECRET)
        if isinstance(headers, dict):
            bytes_keys = any(isinstance(k, bytes) for k in headers)
            headers = {
                **headers,
                **({HEADER.encode(): value.encode()} if bytes_keys else {HEADER: value}),
            }
        elif isinstance(headers, (list, tuple)) and data.draw(st.booleans(), label="append"):
            headers = [*headers, (HEADER, value)]
        else:
            headers = signed_headers(body, shape, [])
    outcome: Receipt | WebhookError
    try:
        outcome = receiver.receive(body, headers)
    except WebhookError as error:  # anything else escapes and fails the test
        outcome = error
    event(type(outcome).__name__)
    if isinstance(outcome, WebhookError):
        assert 400 <= outcome.status_code < 600
        assert outcome.public_message
    else:
        assert isinstance(outcome, Receipt)
        assert isinstance(outcome.event, Event)


@FAST
@given(payload=envelopes(), shape=shapes)
def test_signed_envelopes_are_received_or_invalid_payload(
    receiver: WebhookReceiver, payload: Any, shape: str
) -> None:
    """Once the signature is right, the only possible refusal is the payload itself."""
    body = json.dumps(payload).encode()
    try:
        receipt = receiver.receive(body, signed_headers(body, shape, []))
    except InvalidPayload:
        event("InvalidPayload")
    else:
        event("Receipt")
        assert isinstance(receipt.event, Event)
        assert receipt.event.event == payload["event"]


@FAST
@given(body=st.binary(max_size=300), shape=shapes)
def test_signed_arbitrary_bytes_are_received_or_invalid_payload(
    receiver: WebhookReceiver, body: bytes, shape: str
) -> None:
    try:
        receipt = receiver.receive(body, signed_headers(body, shape, []))
    except InvalidPayload:
        return
    assert isinstance(receipt.event, Event)


@FAST
@given(case=valid_events(), shape=shapes, extra=other_signatures)
@example(  # an id holding NUL, which PostgreSQL could not key: always tried, not by chance
    case=(
        "message.received",
        "\x00",
        json.dumps(sample_payload("message.received", id="\x00")).encode(),
    ),
    shape="dict",
    extra=[],
)
def test_signed_valid_events_are_received(
    receiver: WebhookReceiver, case: tuple[str, str, bytes], shape: str, extra: list[str]
) -> None:
    event_type, data_id, body = case
    receipt = receiver.receive(body, signed_headers(body, shape, extra))
    assert isinstance(receipt, Receipt)
    assert receipt.event.event == event_type
    assert receipt.event.data.id == data_id
    # The default identity, or the body's digest for an id no store could key (NUL).
    expected = f"{event_type}:{data_id}"
    if "\x00" in data_id:
        expected = "sha256:" + hashlib.sha256(body).hexdigest()
    assert receipt.event_id == expected
    # The sender retries: the same delivery again is acknowledged as a duplicate.
    again = receiver.receive(body, signed_headers(body, shape, []))
    assert again.duplicate
    assert again.event_id == receipt.event_id


# -- sign / verify -------------------------------------------------------------------------------

secrets = st.one_of(st.text(min_size=1, max_size=40), st.binary(min_size=1, max_size=80))


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=2000), secret=secrets, decoys=st.lists(secrets, max_size=3))
def test_sign_then_verify_round_trips(body: bytes, secret: str | bytes, decoys: list[Any]) -> None:
    signature = sign(body, secret)
    assert signature.startswith("sha256=")
    assert len(signature) == 7 + 64
    verify_signature(body, signature, secret)
    verify_signature(body, signature.encode("ascii"), secret)
    verify_signature(body, f" {signature.upper().replace('SHA256=', 'sha256=')} ", secret)
    verify_signature(body, signature, [*decoys, secret])
    verify_signature(body, signature, (secret, *decoys))
    if isinstance(secret, str):
        assert sign(body, secret.encode("utf-8")) == signature
        verify_signature(body, signature, secret.encode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(min_size=1, max_size=500),
    secret=secrets,
    data=st.data(),
)
def test_flipping_a_body_byte_breaks_the_signature(
    body: bytes, secret: str | bytes, data: st.DataObject
) -> None:
    signature = sign(body, secret)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = bytearray(body)
    tampered[index] ^= mask
    with pytest.raises(InvalidSignature):
        verify_signature(bytes(tampered), signature, secret)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=500), secret=secrets, data=st.data())
def test_changing_a_signature_hex_digit_breaks_it(
    body: bytes, secret: str | bytes, data: st.DataObject
) -> None:
    signature = sign(body, secret)
    position = data.draw(st.integers(len("sha256="), len(signature) - 1), label="position")
    old = signature[position]
    new = data.draw(st.sampled_from([c for c in HEX if c != old]), label="new")
    tampered = signature[:position] + new + signature[position + 1 :]
    with pytest.raises(InvalidSignature):
        verify_signature(body, tampered, secret)
    with pytest.raises(InvalidSignature):
        verify_signature(body, tampered.upper().replace("SHA256=", "sha256="), secret)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), secret=secrets, other=secrets)
def test_a_different_secret_never_verifies(
    body: bytes, secret: str | bytes, other: str | bytes
) -> None:
    def key(value: str | bytes) -> bytes:
        return value.encode() if isinstance(value, str) else value

    if key(secret) == key(other):
        return
    with pytest.raises(InvalidSignature):
        verify_signature(body, sign(body, other), secret)
