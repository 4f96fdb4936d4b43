"""Typed models of Aerostic events, parsed straight from the raw body with pydantic-core."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

from .errors import InvalidPayload

__all__ = [
    "AnyEvent",
    "ContactCreated",
    "ContactCreatedData",
    "Event",
    "KnownEvent",
    "MessageDelivered",
    "MessageDeliveredData",
    "MessageError",
    "MessageFailed",
    "MessageFailedData",
    "MessageRead",
    "MessageReadData",
    "MessageReceived",
    "MessageReceivedData",
    "MessageSent",
    "MessageSentData",
    "UnknownEvent",
    "event_json_schema",
    "parse_event",
]


def _aware(value: datetime) -> datetime:
    """A timestamp without an offset is taken as UTC, so every datetime we hand out is aware."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


Timestamp = Annotated[datetime, AfterValidator(_aware)]


class _Model(BaseModel):
    # extra="allow": the sender adds fields; we keep them and give them back on dump.
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    @model_serializer(mode="wrap")
    def _as_sent(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """Dump only the fields the payload had, so a dump is the sender's shape, not ours."""
        data = handler(self)
        if isinstance(data, dict):
            for name, field in type(self).model_fields.items():
                if name not in self.model_fields_set:
                    data.pop(field.alias if info.by_alias and field.alias else name, None)
        return data


class MessageReceivedData(_Model):
    """A message a customer sent to the business."""

    id: str
    from_: str = Field(alias="from")
    type: str | None = None
    text: str | None = None
    wamid: str | None = None


class _OutgoingMessageData(_Model):
    id: str
    to: str
    status: str
    wamid: str | None = None


class MessageSentData(_OutgoingMessageData):
    """A message the business sent, accepted by WhatsApp."""


class MessageDeliveredData(_OutgoingMessageData):
    """A message the business sent, delivered to the recipient's device."""

    delivered_at: Timestamp | None = Field(default=None, alias="deliveredAt")


class MessageReadData(_OutgoingMessageData):
    """A message the business sent, read by the recipient."""

    read_at: Timestamp | None = Field(default=None, alias="readAt")


class MessageError(_Model):
    """Why a message could not be sent, e.g. ``code="INVALID_RECIPIENT"``."""

    code: str
    message: str | None = None


class MessageFailedData(_OutgoingMessageData):
    """A message the business sent that could not be delivered."""

    error: MessageError


class ContactCreatedData(_Model):
    """A contact added to the business's address book."""

    id: str
    phone: str
    name: str | None = None
    tags: list[str] = Field(default_factory=list)


class Event(_Model):
    """Fields common to every event: its type name, when it happened, and its data."""

    event: str
    timestamp: Timestamp
    data: Any


class MessageReceived(Event):
    event: Literal["message.received"]
    data: MessageReceivedData


class MessageSent(Event):
    event: Literal["message.sent"]
    data: MessageSentData


class MessageDelivered(Event):
    event: Literal["message.delivered"]
    data: MessageDeliveredData


class MessageRead(Event):
    event: Literal["message.read"]
    data: MessageReadData


class MessageFailed(Event):
    event: Literal["message.failed"]
    data: MessageFailedData


class ContactCreated(Event):
    event: Literal["contact.created"]
    data: ContactCreatedData


class UnknownEvent(Event):
    """An event type these models do not know yet: accepted, with ``data`` kept as a dict."""

    # No NUL: every store must be able to keep the type (PostgreSQL text refuses it).
    event: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
    data: dict[str, Any]


#: The documented events, told apart by ``event`` inside pydantic-core (no Python callback).
KnownEvent = Annotated[
    MessageReceived | MessageSent | MessageDelivered | MessageRead | MessageFailed | ContactCreated,
    Field(discriminator="event"),
]
#: Whatever ``parse_event`` returns.
AnyEvent = KnownEvent | UnknownEvent
_KNOWN: TypeAdapter[Event] = TypeAdapter(KnownEvent)
_UNKNOWN: TypeAdapter[UnknownEvent] = TypeAdapter(UnknownEvent)


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of a delivery's body, with no ``$ref``s: one of the known events, or an
    event of a type they do not name (accepted too: the sender adds types).

    Self-contained, so it can be embedded anywhere, such as an OpenAPI request body.
    """
    schema = TypeAdapter(KnownEvent).json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})
    schema.pop("discriminator", None)  # its mapping names the $defs inlined below

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    result: dict[str, Any] = inline(schema)
    known = [variant["properties"]["event"]["const"] for variant in result["oneOf"]]
    unknown = TypeAdapter(UnknownEvent).json_schema(by_alias=True)
    # Only the types no known model takes, so that exactly one variant matches any body.
    unknown["properties"]["event"]["not"] = {"enum": known}
    result["oneOf"].append(unknown)
    return result


def _describe(error: ValidationError) -> str:
    """Say what was wrong without echoing input: the body may hold phone numbers and texts."""
    problems = []
    for item in error.errors(include_url=False, include_input=False, include_context=False)[:5]:
        if item["type"] in ("union_tag_not_found", "union_tag_invalid"):
            problems.append("event: missing, or not a string")
            continue
        where = ".".join(str(part) for part in item["loc"]) or "body"
        what = item["type"]
        if what == "json_invalid":
            what = f"invalid JSON ({item['msg'].removeprefix('Invalid JSON: ')})"
        problems.append(f"{where}: {what}")
    return "; ".join(problems)


def parse_event(body: bytes | bytearray | memoryview | str) -> Event:
    """Parse and validate one event from the raw body; raise ``InvalidPayload`` if it is not one.

    Known types become their model, any other type an ``UnknownEvent``; fields the models
    do not declare are kept.
    """
    if isinstance(body, memoryview):
        body = body.tobytes()
    try:
        return _KNOWN.validate_json(body)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False, include_context=False)
        if len(problems) != 1 or problems[0]["type"] != "union_tag_invalid":
            raise InvalidPayload(f"invalid payload: {_describe(error)}") from None
    try:  # an event type we do not know: parsed again, the rare path
        return _UNKNOWN.validate_json(body)
    except ValidationError as error:
        raise InvalidPayload(f"invalid payload: {_describe(error)}") from None
