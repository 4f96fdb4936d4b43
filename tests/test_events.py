"""``parse_event``: the documented samples, unknown types and fields, and what is refused."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from aerostic_webhooks import (
    ContactCreated,
    Event,
    InvalidPayload,
    MessageDelivered,
    MessageFailed,
    MessageRead,
    MessageReceived,
    MessageSent,
    UnknownEvent,
    parse_event,
)
from aerostic_webhooks.events import MessageDeliveredData, MessageReceivedData, event_json_schema
from aerostic_webhooks.testing import SAMPLE_PAYLOADS, sample_body

# The six samples copied by hand from the sender's documentation (aerostic-webhooks-docs.txt),
# formatting and all, independently of aerostic_webhooks.testing.
DOCS_SAMPLES: dict[str, str] = {
    "message.received": """{
  "event": "message.received",
  "timestamp": "2026-01-30T15:45:00Z",
  "data": {
    "id": "msg_abc123",
    "from": "+919876543210",
    "type": "text",
    "text": "Hi, I need help with my order",
    "wamid": "wamid.ABGGFlC..."
  }
}""",
    "message.sent": """{
  "event": "message.sent",
  "timestamp": "2026-01-30T15:45:05Z",
  "data": {
    "id": "msg_def456",
    "to": "+919876543210",
    "status": "sent",
    "wamid": "wamid.ABGGFlC..."
  }
}""",
    "message.delivered": """{
  "event": "message.delivered",
  "timestamp": "2026-01-30T15:45:10Z",
  "data": {
    "id": "msg_def456",
    "to": "+919876543210",
    "status": "delivered",
    "deliveredAt": "2026-01-30T15:45:10Z"
  }
}""",
    "message.read": """{
  "event": "message.read",
  "timestamp": "2026-01-30T15:46:00Z",
  "data": {
    "id": "msg_def456",
    "to": "+919876543210",
    "status": "read",
    "readAt": "2026-01-30T15:46:00Z"
  }
}""",
    "message.failed": """{
  "event": "message.failed",
  "timestamp": "2026-01-30T15:45:05Z",
  "data": {
    "id": "msg_ghi789",
    "to": "+919876543210",
    "status": "failed",
    "error": {
      "code": "INVALID_RECIPIENT",
      "message": "Phone number is not on WhatsApp"
    }
  }
}""",
    "contact.created": """{
  "event": "contact.created",
  "timestamp": "2026-01-30T15:45:00Z",
  "data": {
    "id": "contact_xyz",
    "phone": "+919876543210",
    "name": "John Doe",
    "tags": ["new", "website"]
  }
}""",
}

CLASSES: dict[str, type[Event]] = {
    "message.received": MessageReceived,
    "message.sent": MessageSent,
    "message.delivered": MessageDelivered,
    "message.read": MessageRead,
    "message.failed": MessageFailed,
    "contact.created": ContactCreated,
}
EVENT_TYPES = list(CLASSES)

PHONE = "+919876543210"
TEXT = "Hi, I need help with my order"


def utc(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)


def assert_utc(value: datetime) -> None:
    assert isinstance(value, datetime)
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def without(event_type: str, key: str) -> bytes:
    """The documented sample of ``event_type`` with ``key`` taken out of its data."""
    payload = copy.deepcopy(SAMPLE_PAYLOADS[event_type])
    del payload["data"][key]
    return body_of(payload)


# -- the documented samples ----------------------------------------------------------------------


def test_testing_samples_are_the_documented_ones() -> None:
    assert set(SAMPLE_PAYLOADS) == set(DOCS_SAMPLES)
    for event_type, text in DOCS_SAMPLES.items():
        assert SAMPLE_PAYLOADS[event_type] == json.loads(text), event_type


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_sample_parses_to_its_class(event_type: str) -> None:
    for body in (
        DOCS_SAMPLES[event_type].encode(),  # the docs' formatting, newlines and all
        body_of(SAMPLE_PAYLOADS[event_type]),
        sample_body(event_type),
        bytearray(sample_body(event_type)),
        memoryview(sample_body(event_type)),
        sample_body(event_type).decode(),
    ):
        event = parse_event(body)
        assert type(event) is CLASSES[event_type]
        assert isinstance(event, Event)
        assert event.event == event_type
        assert_utc(event.timestamp)


def test_message_received_fields() -> None:
    event = parse_event(DOCS_SAMPLES["message.received"].encode())
    assert isinstance(event, MessageReceived)
    assert event.timestamp == utc(2026, 1, 30, 15, 45)
    assert event.data.id == "msg_abc123"
    assert event.data.from_ == PHONE
    assert event.data.type == "text"
    assert event.data.text == TEXT
    assert event.data.wamid == "wamid.ABGGFlC..."


def test_message_sent_fields() -> None:
    event = parse_event(DOCS_SAMPLES["message.sent"].encode())
    assert isinstance(event, MessageSent)
    assert event.timestamp == utc(2026, 1, 30, 15, 45, 5)
    assert (event.data.id, event.data.to, event.data.status) == ("msg_def456", PHONE, "sent")
    assert event.data.wamid == "wamid.ABGGFlC..."


def test_message_delivered_fields() -> None:
    event = parse_event(DOCS_SAMPLES["message.delivered"].encode())
    assert isinstance(event, MessageDelivered)
    assert (event.data.id, event.data.to, event.data.status) == ("msg_def456", PHONE, "delivered")
    assert_utc(event.data.delivered_at)  # type: ignore[arg-type]
    assert event.data.delivered_at == utc(2026, 1, 30, 15, 45, 10)


def test_message_read_fields() -> None:
    event = parse_event(DOCS_SAMPLES["message.read"].encode())
    assert isinstance(event, MessageRead)
    assert event.data.status == "read"
    assert_utc(event.data.read_at)  # type: ignore[arg-type]
    assert event.data.read_at == utc(2026, 1, 30, 15, 46)
    assert event.timestamp == utc(2026, 1, 30, 15, 46)


def test_message_failed_fields() -> None:
    event = parse_event(DOCS_SAMPLES["message.failed"].encode())
    assert isinstance(event, MessageFailed)
    assert event.data.id == "msg_ghi789"
    assert event.data.status == "failed"
    assert event.data.error.code == "INVALID_RECIPIENT"
    assert event.data.error.message == "Phone number is not on WhatsApp"


def test_contact_created_fields() -> None:
    event = parse_event(DOCS_SAMPLES["contact.created"].encode())
    assert isinstance(event, ContactCreated)
    assert event.data.id == "contact_xyz"
    assert event.data.phone == PHONE
    assert event.data.name == "John Doe"
    assert event.data.tags == ["new", "website"]


# message.delivered, .read and .failed carry no wamid: the dump must not invent "wamid": null.
@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_dump_gives_the_documented_payload_back(event_type: str) -> None:
    event = parse_event(DOCS_SAMPLES[event_type].encode())
    assert event.model_dump(by_alias=True, mode="json") == json.loads(DOCS_SAMPLES[event_type])


def test_dump_does_not_invent_absent_optional_fields() -> None:
    payload = {
        "event": "message.received",
        "timestamp": "2026-01-30T15:45:00Z",
        "data": {"id": "msg_1", "from": PHONE},
    }
    assert parse_event(body_of(payload)).model_dump(by_alias=True, mode="json") == payload


@pytest.mark.parametrize(
    ("sent", "dumped"),
    [
        ("2026-01-30T15:45:10.5Z", "2026-01-30T15:45:10.500000Z"),
        ("2026-01-30T15:45:10", "2026-01-30T15:45:10Z"),  # no offset: taken as UTC
        ("2026-01-30T21:15:10+05:30", "2026-01-30T21:15:10+05:30"),
    ],
)
def test_dumped_timestamps_keep_their_instant_in_one_iso_form(sent: str, dumped: str) -> None:
    """What the README says of a dump: the same values, timestamps in one ISO 8601 form."""
    payload = json.loads(DOCS_SAMPLES["message.delivered"])
    payload["data"]["deliveredAt"] = sent
    event = parse_event(body_of(payload))
    assert event.model_dump(by_alias=True, mode="json")["data"]["deliveredAt"] == dumped


def test_dump_uses_wire_names_and_python_names_stay_snake_case() -> None:
    event = parse_event(DOCS_SAMPLES["message.received"].encode())
    assert "from" in event.model_dump(by_alias=True, mode="json")["data"]
    assert "from_" in event.model_dump()["data"]
    delivered = parse_event(DOCS_SAMPLES["message.delivered"].encode())
    assert "deliveredAt" in delivered.model_dump(by_alias=True, mode="json")["data"]


def test_python_dump_does_not_invent_absent_optional_fields() -> None:
    payload = json.loads(DOCS_SAMPLES["message.delivered"])
    del payload["data"]["deliveredAt"]
    data = parse_event(body_of(payload)).model_dump()["data"]
    assert "delivered_at" not in data and "deliveredAt" not in data


def test_models_can_be_built_by_python_name_too() -> None:
    """As users build events in their own tests; the wire names work as well."""
    assert MessageReceivedData(id="m1", from_=PHONE).from_ == PHONE
    assert MessageReceivedData.model_validate({"id": "m1", "from": PHONE}).from_ == PHONE
    at = datetime(2026, 1, 30, tzinfo=timezone.utc)
    delivered = MessageDeliveredData(id="m1", to=PHONE, status="delivered", delivered_at=at)
    assert delivered.delivered_at == at


def test_a_contact_without_tags_has_an_empty_list() -> None:
    payload = json.loads(DOCS_SAMPLES["contact.created"])
    del payload["data"]["tags"]
    event = parse_event(body_of(payload))
    assert isinstance(event, ContactCreated)
    assert event.data.tags == []


def test_an_unknown_event_type_of_200_characters_is_kept() -> None:
    body = body_of({"event": "x" * 200, "timestamp": "2026-01-30T15:45:00Z", "data": {}})
    assert parse_event(body).event == "x" * 200


def test_the_json_schema_uses_the_wire_names() -> None:
    schema = event_json_schema()
    by_type = {
        variant["properties"]["event"]["const"]: variant["properties"]["data"]["properties"]
        for variant in schema["oneOf"]
        if variant["title"] != "UnknownEvent"
    }
    assert sorted(by_type) == sorted(EVENT_TYPES)
    assert "from" in by_type["message.received"] and "from_" not in by_type["message.received"]
    assert "deliveredAt" in by_type["message.delivered"]
    assert "readAt" in by_type["message.read"]
    assert "$defs" not in json.dumps(schema) and "$ref" not in json.dumps(schema)


def test_the_json_schema_takes_exactly_what_parse_event_takes() -> None:
    """A gateway or test tool that checks bodies against the published schema must let
    through what the receiver accepts (new event types included) and refuse what it refuses;
    exactly one variant matches an accepted body."""
    jsonschema = pytest.importorskip("jsonschema", reason="the [test] extra installs jsonschema")
    schema = event_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    variants = [jsonschema.Draft202012Validator(variant) for variant in schema["oneOf"]]
    broken = copy.deepcopy(SAMPLE_PAYLOADS["message.received"])
    del broken["data"]["from"]
    cases = [
        *SAMPLE_PAYLOADS.values(),
        {"event": "order.shipped", "timestamp": "2026-01-30T15:45:00Z", "data": {"n": 1}},
        broken,
        {"event": "", "timestamp": "2026-01-30T15:45:00Z", "data": {}},
        {"event": "order.shipped", "timestamp": "2026-01-30T15:45:00Z", "data": []},
    ]
    for payload in cases:
        try:
            parse_event(body_of(payload))
            accepted = True
        except InvalidPayload:
            accepted = False
        matching = [v.schema["title"] for v in variants if v.is_valid(payload)]
        assert len(matching) == (1 if accepted else 0), (payload["event"], matching)


def test_timestamp_without_offset_is_taken_as_utc() -> None:
    payload = copy.deepcopy(SAMPLE_PAYLOADS["message.read"])
    payload["timestamp"] = "2026-01-30T15:46:00"
    payload["data"]["readAt"] = "2026-01-30T15:46:00"
    event = parse_event(body_of(payload))
    assert isinstance(event, MessageRead)
    assert event.timestamp == utc(2026, 1, 30, 15, 46)
    assert_utc(event.timestamp)
    assert_utc(event.data.read_at)  # type: ignore[arg-type]


def test_timestamp_with_offset_keeps_the_instant() -> None:
    payload = copy.deepcopy(SAMPLE_PAYLOADS["message.sent"])
    payload["timestamp"] = "2026-01-30T21:15:05+05:30"
    event = parse_event(body_of(payload))
    assert event.timestamp.tzinfo is not None
    assert event.timestamp == utc(2026, 1, 30, 15, 45, 5)


def test_events_are_immutable() -> None:
    event = parse_event(sample_body("message.received"))
    with pytest.raises(ValidationError, match="frozen"):
        event.event = "message.sent"  # type: ignore[misc]


# -- unknown types and fields --------------------------------------------------------------------


def test_unknown_event_type_is_kept_with_plain_dict_data() -> None:
    payload = {
        "event": "order.shipped",
        "timestamp": "2026-01-30T15:45:00Z",
        "data": {"id": "ord_1", "items": [{"sku": "A", "qty": 2}], "note": None, "paid": True},
    }
    event = parse_event(body_of(payload))
    assert type(event) is UnknownEvent
    assert event.event == "order.shipped"
    assert type(event.data) is dict
    assert event.data == payload["data"]
    assert_utc(event.timestamp)
    assert event.model_dump(by_alias=True, mode="json") == payload


def test_unknown_event_type_with_empty_data() -> None:
    payload = {"event": "message.reaction", "timestamp": "2026-01-30T15:45:00Z", "data": {}}
    event = parse_event(body_of(payload))
    assert type(event) is UnknownEvent
    assert event.data == {}


def test_unknown_fields_are_kept_at_every_level() -> None:
    payload = {
        "event": "message.failed",
        "timestamp": "2026-01-30T15:45:05Z",
        "webhook_id": "wh_1",
        "attempt": 2,
        "data": {
            "id": "msg_ghi789",
            "to": PHONE,
            "status": "failed",
            "wamid": "wamid.X",
            "conversation": {"id": "conv_1", "origin": "service"},
            "error": {
                "code": "INVALID_RECIPIENT",
                "message": "Phone number is not on WhatsApp",
                "retryable": False,
                "details": ["a", 1],
            },
        },
    }
    event = parse_event(body_of(payload))
    assert isinstance(event, MessageFailed)
    assert event.model_extra == {"webhook_id": "wh_1", "attempt": 2}
    assert event.data.model_extra == {"conversation": {"id": "conv_1", "origin": "service"}}
    assert event.data.error.model_extra == {"retryable": False, "details": ["a", 1]}
    assert event.model_dump(by_alias=True, mode="json") == payload


def test_unknown_fields_kept_on_received_message() -> None:
    payload = copy.deepcopy(SAMPLE_PAYLOADS["message.received"])
    payload["version"] = "2"
    payload["data"]["media"] = {"url": "https://example.invalid/x.jpg", "mime": "image/jpeg"}
    event = parse_event(body_of(payload))
    assert isinstance(event, MessageReceived)
    assert event.data.model_extra == {"media": payload["data"]["media"]}
    assert event.model_dump(by_alias=True, mode="json") == payload


# -- refused -------------------------------------------------------------------------------------

TS = '"timestamp": "2026-01-30T15:45:00Z"'

INVALID_BODIES: list[Any] = [
    pytest.param(b"{", id="truncated"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"   \n", id="whitespace"),
    pytest.param(sample_body("message.received")[:-1], id="sample-truncated"),
    pytest.param(sample_body("message.received") + b"x", id="trailing-garbage"),
    pytest.param(b"{'event': 'x'}", id="single-quotes"),
    pytest.param(
        b'{"event": "order.shipped", ' + TS.encode() + b', "data": {"t": "\xff\xfe"}}',
        id="invalid-utf8-in-string",
    ),
    pytest.param(
        b'{"event": "message.received", ' + TS.encode() + b', "data": {"id": "m", '
        b'"from": "+91\xc3", "text": "x"}}',
        id="truncated-utf8-in-known-field",
    ),
    pytest.param(b"\xff\xfe{}", id="invalid-utf8-outside-string"),
    pytest.param(b"[]", id="array"),
    pytest.param(b"[" + sample_body("message.received") + b"]", id="array-of-event"),
    pytest.param(b"42", id="number"),
    pytest.param(b'"message.received"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"true", id="bool"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b'{"timestamp": "2026-01-30T15:45:00Z", "data": {}}', id="no-event"),
    pytest.param(b'{"event": "order.shipped", "data": {}}', id="no-timestamp"),
    pytest.param(('{"event": "order.shipped", ' + TS + "}").encode(), id="no-data"),
    pytest.param(('{"event": "message.received", ' + TS + "}").encode(), id="known-no-data"),
    pytest.param(('{"event": 1, ' + TS + ', "data": {}}').encode(), id="event-number"),
    pytest.param(('{"event": null, ' + TS + ', "data": {}}').encode(), id="event-null"),
    pytest.param(
        ('{"event": ["message.received"], ' + TS + ', "data": {}}').encode(), id="event-list"
    ),
    pytest.param(('{"event": {}, ' + TS + ', "data": {}}').encode(), id="event-object"),
    pytest.param(('{"event": "", ' + TS + ', "data": {}}').encode(), id="event-empty"),
    pytest.param(('{"event": "order.shipped", ' + TS + ', "data": []}').encode(), id="data-list"),
    pytest.param(('{"event": "order.shipped", ' + TS + ', "data": null}').encode(), id="data-null"),
    pytest.param(
        ('{"event": "message.sent", ' + TS + ', "data": "msg_def456"}').encode(),
        id="known-data-string",
    ),
    pytest.param(
        b'{"event": "order.shipped", "timestamp": "yesterday", "data": {}}',
        id="unknown-timestamp-yesterday",
    ),
    pytest.param(
        body_of({**SAMPLE_PAYLOADS["message.received"], "timestamp": "yesterday"}),
        id="timestamp-yesterday",
    ),
    pytest.param(
        body_of({**SAMPLE_PAYLOADS["message.sent"], "timestamp": None}), id="timestamp-null"
    ),
    pytest.param(
        body_of(
            {
                **SAMPLE_PAYLOADS["message.delivered"],
                "data": {**SAMPLE_PAYLOADS["message.delivered"]["data"], "deliveredAt": "soon"},
            }
        ),
        id="delivered-at-invalid",
    ),
    pytest.param(
        body_of(
            {
                **SAMPLE_PAYLOADS["contact.created"],
                "data": {**SAMPLE_PAYLOADS["contact.created"]["data"], "tags": "new,website"},
            }
        ),
        id="tags-not-a-list",
    ),
    pytest.param(
        body_of(
            {
                **SAMPLE_PAYLOADS["contact.created"],
                "data": {**SAMPLE_PAYLOADS["contact.created"]["data"], "tags": ["new", 7]},
            }
        ),
        id="tag-not-a-string",
    ),
    pytest.param(
        without("message.received", "id"),
        id="missing-data-id",
    ),
    pytest.param(
        without("message.received", "from"),
        id="missing-data-from",
    ),
    pytest.param(
        body_of(
            {
                **SAMPLE_PAYLOADS["message.failed"],
                "data": {**SAMPLE_PAYLOADS["message.failed"]["data"], "error": {"message": "x"}},
            }
        ),
        id="error-without-code",
    ),
    pytest.param(
        body_of(
            {
                **SAMPLE_PAYLOADS["message.failed"],
                "data": {**SAMPLE_PAYLOADS["message.failed"]["data"], "error": "INVALID"},
            }
        ),
        id="error-not-an-object",
    ),
    pytest.param(
        body_of(
            {
                **SAMPLE_PAYLOADS["message.received"],
                "data": {**SAMPLE_PAYLOADS["message.received"]["data"], "from": 919876543210},
            }
        ),
        id="from-a-number",
    ),
    pytest.param(
        b'{"event": "order.shipped", '
        + TS.encode()
        + b', "data": {"deep": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}}",
        id="100k-nested-arrays",
    ),
    pytest.param(
        b'{"event": "order.shipped", '
        + TS.encode()
        + b', "data": {"deep": '
        + b'{"a":' * 100_000
        + b"1"
        + b"}" * 100_000
        + b"}}",
        id="100k-nested-objects",
    ),
    pytest.param(b"[" * 100_000, id="100k-unclosed-arrays"),
    pytest.param(
        without("message.failed", "error"),
        id="failed-without-error",
    ),
    pytest.param(
        body_of({"event": "x" * 201, "timestamp": "2026-01-30T15:45:00Z", "data": {}}),
        id="event-type-over-200-characters",  # longer than the Django model's column
    ),
]


@pytest.mark.parametrize("body", INVALID_BODIES)
def test_invalid_bodies_raise_invalid_payload(body: bytes) -> None:
    with pytest.raises(InvalidPayload) as caught:
        parse_event(body)
    assert caught.value.status_code == 400
    assert caught.value.public_message == "Invalid payload"


def test_parsing_does_not_use_json_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("json.loads must not be used: the body is parsed from bytes")

    monkeypatch.setattr(json, "loads", no_loads)
    event = parse_event(DOCS_SAMPLES["message.received"].encode())
    assert isinstance(event, MessageReceived)
    assert event.data.from_ == PHONE
    with pytest.raises(InvalidPayload):
        parse_event(b"{")


# -- the error message never carries message content ---------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(
            {
                "event": "message.received",
                "timestamp": "yesterday",
                "data": {"id": "msg_1", "from": PHONE, "type": "text", "text": TEXT},
            },
            id="bad-timestamp",
        ),
        pytest.param(
            {
                "event": "message.received",
                "timestamp": "2026-01-30T15:45:00Z",
                "data": {"from": PHONE, "type": ["text"], "text": TEXT},
            },
            id="missing-id-bad-type",
        ),
        pytest.param(
            {
                "event": "message.received",
                "timestamp": "2026-01-30T15:45:00Z",
                "data": {"id": 12, "from": PHONE, "text": TEXT},
            },
            id="id-not-a-string",
        ),
        pytest.param(
            {
                "event": "contact.created",
                "timestamp": "2026-01-30T15:45:00Z",
                "data": {"id": "c", "phone": PHONE, "name": TEXT, "tags": [TEXT, 1]},
            },
            id="tag-invalid",
        ),
        pytest.param(
            {
                "event": "message.failed",
                "timestamp": "2026-01-30T15:45:05Z",
                "data": {"id": "m", "to": PHONE, "status": "failed", "error": {"code": [TEXT]}},
            },
            id="error-code-invalid",
        ),
    ],
)
def test_invalid_payload_message_never_contains_input(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayload) as caught:
        parse_event(body_of(payload))
    error = caught.value
    for text in (str(error), repr(error), error.reason, str(error.args)):
        assert PHONE not in text
        assert "919876543210" not in text
        assert TEXT not in text
        assert "need help" not in text
    assert error.__cause__ is None
