"""``sign`` and ``verify_signature``, held against HMAC vectors computed outside our code."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, cast

import pytest

from aerostic_webhooks import (
    InvalidSignature,
    MemoryStore,
    Receipt,
    WebhookReceiver,
    sign,
    verify_signature,
)
from aerostic_webhooks.signature import SigningKey
from aerostic_webhooks.testing import sample_body

KEY = "whsec_test"

# The exact bytes of sample_body("message.received") that were written to sample.bin and fed
# to openssl (checked against the helper below, so the vector cannot drift from the body).
SAMPLE_BYTES = (
    b'{"event": "message.received", "timestamp": "2026-01-30T15:45:00Z", "data": '
    b'{"id": "msg_abc123", "from": "+919876543210", "type": "text", '
    b'"text": "Hi, I need help with my order", "wamid": "wamid.ABGGFlC..."}}'
)
# $ python -c 'import sys; from aerostic_webhooks.testing import sample_body;
#     sys.stdout.buffer.write(sample_body("message.received"))' > sample.bin
# $ openssl dgst -sha256 -hmac 'whsec_test' sample.bin
SAMPLE_HMAC = "611b1bc0f0ec4075fe234a1826fed7526906bddb474679f15e39e9d453bf9071"

UTF8_BYTES = '{"text":"नमस्ते 👋🏽 दुनिया"}'.encode()
# $ printf '{"text":"नमस्ते 👋🏽 दुनिया"}' > utf8.bin     (UTF-8 terminal)
# $ xxd -p utf8.bin | tr -d '\n'
UTF8_HEX = (
    "7b2274657874223a22e0a4a8e0a4aee0a4b8e0a58de0a4a4e0a58720f09f918bf09f8fbd20"
    "e0a4a6e0a581e0a4a8e0a4bfe0a4afe0a4be227d"
)
# $ openssl dgst -sha256 -hmac 'whsec_test' utf8.bin
UTF8_HMAC = "b2576e4079f8156358f3a7e0c68e3363876cf4308d98e4ace5debd8eb554201b"

INVALID_UTF8_BYTES = b"\xff\xfe\x00abc"
# $ printf '\xff\xfe\x00abc' > invalid.bin                (xxd: fffe 0061 6263)
# $ openssl dgst -sha256 -hmac 'whsec_test' invalid.bin
INVALID_UTF8_HMAC = "7a0ac274ad997b672a2415550d0ef92b49bd2387ecdb2a4167726c101657ce0d"

# $ printf '' > empty.bin && openssl dgst -sha256 -hmac 'whsec_test' empty.bin
EMPTY_HMAC = "43c0f4d23c8e8841358fad4624b1a592799222b29f25bb59baea43cdcb522ed1"

NON_ASCII_KEY = "clé-секрет-🔑"
# $ printf 'clé-секрет-🔑' | xxd -p
NON_ASCII_KEY_HEX = "636cc3a92dd181d0b5d0bad180d0b5d1822df09f9491"
SMALL_BYTES = b'{"event":"message.received"}'
# $ printf '{"event":"message.received"}' > small.bin
# $ openssl dgst -sha256 -mac HMAC -macopt hexkey:636cc3a92dd181d0b5d0bad180d0b5d1822df09f9491 \
#     small.bin
NON_ASCII_KEY_SMALL_HMAC = "30989157a4ce017bd7f5a2c4d58d5a97b8175917de53ad5b8cca7f3584665a03"
# $ openssl dgst -sha256 -mac HMAC -macopt hexkey:636cc3a92dd181d0b5d0bad180d0b5d1822df09f9491 \
#     sample.bin
NON_ASCII_KEY_SAMPLE_HMAC = "8ca042607d7ab7b87a6870701935285bf664bae8ec759a9dfb64d6f85488c853"

BODY = SAMPLE_BYTES
GOOD = "sha256=" + SAMPLE_HMAC


# -- sign ----------------------------------------------------------------------------------------


def test_sample_body_is_the_bytes_given_to_openssl() -> None:
    assert sample_body("message.received") == SAMPLE_BYTES


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(SAMPLE_BYTES, SAMPLE_HMAC, id="documented-sample"),
        pytest.param(UTF8_BYTES, UTF8_HMAC, id="emoji-devanagari"),
        pytest.param(INVALID_UTF8_BYTES, INVALID_UTF8_HMAC, id="invalid-utf8"),
        pytest.param(b"", EMPTY_HMAC, id="empty"),
    ],
)
def test_sign_matches_openssl(body: bytes, expected: str) -> None:
    assert sign(body, KEY) == "sha256=" + expected
    assert sign(body, KEY.encode()) == "sha256=" + expected
    assert sign(bytearray(body), KEY) == "sha256=" + expected
    assert sign(memoryview(body), KEY) == "sha256=" + expected


def test_utf8_vector_body_is_what_openssl_saw() -> None:
    assert bytes.fromhex(UTF8_HEX) == UTF8_BYTES
    assert len(UTF8_BYTES) == 57


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(SMALL_BYTES, NON_ASCII_KEY_SMALL_HMAC, id="small"),
        pytest.param(SAMPLE_BYTES, NON_ASCII_KEY_SAMPLE_HMAC, id="documented-sample"),
    ],
)
def test_non_ascii_secret_is_utf8_encoded(body: bytes, expected: str) -> None:
    assert NON_ASCII_KEY.encode("utf-8") == bytes.fromhex(NON_ASCII_KEY_HEX)
    assert sign(body, NON_ASCII_KEY) == "sha256=" + expected
    assert sign(body, bytes.fromhex(NON_ASCII_KEY_HEX)) == "sha256=" + expected
    verify_signature(body, "sha256=" + expected, NON_ASCII_KEY)
    verify_signature(body, "sha256=" + expected, NON_ASCII_KEY.encode())


def test_sign_output_is_lowercase_hex() -> None:
    value = sign(UTF8_BYTES, KEY)
    digest = value.removeprefix("sha256=")
    assert value.startswith("sha256=")
    assert len(digest) == 64
    assert digest == digest.lower()
    assert set(digest) <= set("0123456789abcdef")


# -- verify_signature: accepted ------------------------------------------------------------------


def test_verify_accepts_the_right_signature() -> None:
    # The result looked at as a plain value: an acceptance returns None (not, say, True).
    assert cast(object, verify_signature(BODY, GOOD, KEY)) is None
    verify_signature(b"", "sha256=" + EMPTY_HMAC, KEY)
    verify_signature(INVALID_UTF8_BYTES, "sha256=" + INVALID_UTF8_HMAC, KEY)


@pytest.mark.parametrize(
    "secrets",
    [
        pytest.param([KEY, "whsec_old"], id="list-new-first"),
        pytest.param(["whsec_old", KEY], id="list-new-last"),
        pytest.param(("whsec_a", "whsec_b", KEY), id="tuple"),
        pytest.param([b"whsec_old", KEY.encode()], id="bytes"),
        pytest.param(["whsec_old", KEY.encode()], id="mixed"),
        pytest.param(KEY.encode(), id="one-bytes"),
        pytest.param(bytearray(KEY.encode()), id="one-bytearray"),
    ],
)
def test_verify_accepts_any_of_several_secrets(secrets: Any) -> None:
    verify_signature(BODY, GOOD, secrets)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"  {GOOD}  ", id="spaces"),
        pytest.param(f"\t{GOOD}\r\n", id="tab-crlf"),
        pytest.param(f"sha256={'0' * 64},{GOOD}", id="wrong-then-good"),
        pytest.param(f"{GOOD}, sha256={'f' * 64}", id="good-then-wrong"),
        pytest.param(f"garbage, {GOOD}", id="garbage-then-good"),
        pytest.param(f"{GOOD},sha256=zz", id="good-then-malformed"),
        pytest.param("sha256=" + SAMPLE_HMAC.upper(), id="upper-hex"),
        pytest.param("SHA256=" + SAMPLE_HMAC, id="upper-prefix"),
        pytest.param(GOOD.encode("ascii"), id="bytes"),
        pytest.param(f" sha256=nothex, {GOOD} ".encode("ascii"), id="bytes-list"),
    ],
)
def test_verify_accepts_header_variants(header: str | bytes) -> None:
    verify_signature(BODY, header, KEY)


# -- verify_signature: refused -------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param("sha1=" + SAMPLE_HMAC, id="sha1-prefix"),
        pytest.param("sha512=" + SAMPLE_HMAC, id="sha512-prefix"),
        pytest.param(SAMPLE_HMAC, id="no-prefix"),
        pytest.param("sha256=", id="prefix-only"),
        pytest.param("sha256 " + SAMPLE_HMAC, id="space-not-equals"),
        pytest.param("sha256=" + SAMPLE_HMAC[:63], id="63-hex"),
        pytest.param("sha256=" + SAMPLE_HMAC + "0", id="65-hex"),
        pytest.param("sha256=" + SAMPLE_HMAC * 2, id="128-hex"),
        pytest.param("sha256=" + SAMPLE_HMAC[:62] + "zz", id="non-hex"),
        pytest.param("sha256=" + SAMPLE_HMAC[:62] + "0x", id="0x"),
        pytest.param("sha256=" + SAMPLE_HMAC[:31] + " " + SAMPLE_HMAC[32:], id="odd-hex-space"),
        pytest.param("sha256=" + SAMPLE_HMAC[:63] + "=", id="odd-hex-padding"),
        pytest.param("sha256=" + "é" * 64, id="non-ascii-str"),
        pytest.param("sha256=" + SAMPLE_HMAC[:63] + "٣", id="arabic-digit"),
        pytest.param(b"sha256=" + b"\xff" * 64, id="non-ascii-bytes"),
        pytest.param(GOOD.encode("utf-16"), id="utf16-bytes"),
        pytest.param(",,,", id="only-commas"),
        pytest.param(f"{GOOD[:-1]}\x00", id="nul"),
        pytest.param(f"{GOOD},é", id="good-then-non-ascii"),  # a header is ASCII, or refused
    ],
)
def test_verify_refuses_malformed_headers(header: str | bytes | None) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, header, KEY)


def test_verify_refuses_header_of_wrong_type() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, 12345, KEY)  # type: ignore[arg-type]


def test_verify_refuses_signature_made_with_another_secret() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, sign(BODY, "whsec_other"), KEY)
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, sign(BODY, "whsec_other"), ["whsec_a", KEY])
    # A secret is not trimmed or case-folded: it is compared byte for byte.
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, sign(BODY, KEY + " "), KEY)
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, sign(BODY, KEY.upper()), KEY)


def test_verify_refuses_signature_of_another_body() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY + b" ", GOOD, KEY)
    with pytest.raises(InvalidSignature):
        verify_signature(b"", GOOD, KEY)
    with pytest.raises(InvalidSignature):
        verify_signature(sample_body("message.sent"), GOOD, KEY)


def test_invalid_signature_reason_does_not_echo_the_header() -> None:
    with pytest.raises(InvalidSignature) as caught:
        verify_signature(BODY, sign(BODY, "whsec_other"), KEY)
    assert sign(BODY, "whsec_other").removeprefix("sha256=") not in str(caught.value)
    assert KEY not in str(caught.value)
    assert caught.value.status_code == 401
    assert caught.value.public_message == "Invalid signature"


@pytest.mark.parametrize(
    "secrets",
    [
        pytest.param("", id="empty-str"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param([], id="empty-list"),
        pytest.param((), id="empty-tuple"),
        pytest.param([""], id="list-of-empty"),
        pytest.param([KEY, ""], id="one-empty-among-good"),
    ],
)
def test_verify_without_a_secret_is_a_configuration_error(secrets: Any) -> None:
    with pytest.raises(ValueError, match="AEROSTIC_WEBHOOK_SECRET"):
        verify_signature(BODY, GOOD, secrets)


# -- constant time -------------------------------------------------------------------------------


@pytest.fixture
def compare_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Every call ``signature.py`` makes to ``hmac.compare_digest``, still doing the real work."""
    calls: list[tuple[Any, Any]] = []
    real: Callable[[Any, Any], bool] = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


def test_comparison_uses_compare_digest_on_bytes(compare_calls: list[tuple[Any, Any]]) -> None:
    verify_signature(BODY, GOOD, KEY)
    assert compare_calls
    for a, b in compare_calls:
        assert isinstance(a, bytes)
        assert isinstance(b, bytes)
    assert (bytes.fromhex(SAMPLE_HMAC), bytes.fromhex(SAMPLE_HMAC)) in compare_calls

    compare_calls.clear()
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, sign(BODY, "whsec_other"), KEY)
    assert compare_calls, "a wrong signature must also be refused through compare_digest"


def test_comparison_does_not_stop_at_the_matching_secret(
    compare_calls: list[tuple[Any, Any]],
) -> None:
    """Which secret matched (first or last) must not change the work done."""
    verify_signature(BODY, GOOD, [KEY, "whsec_b", "whsec_c"])
    first = len(compare_calls)
    compare_calls.clear()
    verify_signature(BODY, GOOD, ["whsec_b", "whsec_c", KEY])
    assert first == len(compare_calls) == 3


def test_comparison_is_never_short_circuited_by_equality(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If compare_digest says no, nothing else may say yes."""
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, GOOD, KEY)


# -- receiver construction -----------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["", b"", [], [""], ["whsec_a", ""]])
def test_receiver_refuses_an_empty_secret(secret: Any) -> None:
    with pytest.raises(ValueError, match="AEROSTIC_WEBHOOK_SECRET"):
        WebhookReceiver(secret=secret, store=MemoryStore())


def test_receiver_without_secret_and_no_env_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AEROSTIC_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ValueError, match="AEROSTIC_WEBHOOK_SECRET"):
        WebhookReceiver(store=MemoryStore())


@pytest.mark.parametrize("value", ["", "   ", ",", " , ,"])
def test_receiver_without_secret_and_empty_env_fails(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("AEROSTIC_WEBHOOK_SECRET", value)
    with pytest.raises(ValueError, match="AEROSTIC_WEBHOOK_SECRET"):
        WebhookReceiver(store=MemoryStore())


def test_receiver_reads_comma_separated_secrets_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEROSTIC_WEBHOOK_SECRET", "a, b")
    body_a = sample_body("message.received", id="msg_from_a")
    body_b = sample_body("message.received", id="msg_from_b")
    with WebhookReceiver(store=MemoryStore()) as receiver:
        receipt_a = receiver.receive(body_a, {"X-Aerostic-Signature": sign(body_a, "a")})
        receipt_b = receiver.receive(body_b, {"X-Aerostic-Signature": sign(body_b, "b")})
        assert isinstance(receipt_a, Receipt)
        assert receipt_a.event_id == "message.received:msg_from_a"
        assert receipt_b.event_id == "message.received:msg_from_b"
        # The space after the comma is not part of the second secret...
        with pytest.raises(InvalidSignature):
            receiver.receive(body_b, {"X-Aerostic-Signature": sign(body_b, " b")})
        # ...and the whole variable is not one secret either.
        with pytest.raises(InvalidSignature):
            receiver.receive(body_a, {"X-Aerostic-Signature": sign(body_a, "a, b")})


def test_explicit_secret_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEROSTIC_WEBHOOK_SECRET", "from_env")
    body = sample_body("contact.created")
    with WebhookReceiver(secret=KEY, store=MemoryStore()) as receiver:
        receiver.receive(body, {"X-Aerostic-Signature": sign(body, KEY)})
        with pytest.raises(InvalidSignature):
            receiver.receive(body, {"X-Aerostic-Signature": sign(body, "from_env")})


def test_receiver_accepts_rotated_secrets() -> None:
    body = sample_body("message.sent")
    with WebhookReceiver(secret=["whsec_new", "whsec_old"], store=MemoryStore()) as receiver:
        receiver.receive(body, {"X-Aerostic-Signature": sign(body, "whsec_old")})
        receipt = receiver.receive(body, {"X-Aerostic-Signature": sign(body, "whsec_new")})
        assert receipt.duplicate


def test_secret_from_a_non_utf8_environment_keeps_its_bytes() -> None:
    # os.environ decodes undecodable bytes to lone surrogates; the key must be the raw bytes.
    raw = b"whsec_\xff\xfe"
    from_env = raw.decode("utf-8", "surrogateescape")
    body = b'{"event": "x"}'
    assert sign(body, from_env) == sign(body, raw)
    verify_signature(body, sign(body, raw), from_env)


def test_a_secret_that_is_not_text_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="text or bytes"):
        WebhookReceiver("\ud800", store=MemoryStore())
    with pytest.raises(ValueError, match="text or bytes"):
        WebhookReceiver([123], store=MemoryStore())  # type: ignore[list-item]


@pytest.mark.parametrize("key_length", [1, 17, 63, 64, 65, 200])
@pytest.mark.parametrize("body", [b"", b"x", sample_body("message.received"), b"\xff" * 5000])
def test_precomputed_signing_key_is_rfc2104_hmac(key_length: int, body: bytes) -> None:
    """The receiver's precomputed key gives exactly the standard library's HMAC."""
    secret = bytes(range(256))[:key_length] if key_length <= 256 else b""
    assert SigningKey(secret).digest(body) == hmac.digest(secret, body, "sha256")
