"""WAP Push over the air: the Service Indication in WBXML and the WSP Push PDU that carries it.

Follows WAP-167 (Service Indication: public identifier 0x05, the `si`/`indication`/`info`/`item` tag tokens, the
attribute start and value tokens, `created`/`si-expires` as OPAQUE dates per 8.2.2), WAP-192 (WBXML 1.3: header,
global tokens, code pages, mb_u_int32) and WAP-230 8.2.4 (the connectionless WSP Push PDU: TID, PDU type 0x06,
headers length as uintvar, content type, headers such as X-Wap-Application-Id) with the header encodings of WAP-230
8.4.2 and the assigned numbers of its appendix A. Encoders are exact; decoders are bounded and raise only the typed
errors below (WapPushError and its subclasses) on any malformed input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

# --- errors ----------------------------------------------------------------------------------------------------------


class WapPushError(ValueError):
    """A WSP Push PDU or a WBXML document that cannot be decoded (or a value that cannot be encoded); str() says why."""


class WbxmlError(WapPushError):
    """Malformed WBXML (WAP-192) or a Service Indication that breaks WAP-167."""


# --- WBXML (WAP-192) -------------------------------------------------------------------------------------------------

WBXML_VERSION_1_3 = 0x03
SI_PUBLIC_ID = 0x05  # "-//WAPFORUM//DTD SI 1.0//EN" (WAP-167 8.2, WAP-192 7.2.1)
CHARSET_UTF8 = 0x6A  # IANA MIBenum 106

SWITCH_PAGE = 0x00
END = 0x01
ENTITY = 0x02
STR_I = 0x03
LITERAL = 0x04
EXT_I_0, EXT_I_1, EXT_I_2 = 0x40, 0x41, 0x42
PI = 0x43
LITERAL_C = 0x44
EXT_T_0, EXT_T_1, EXT_T_2 = 0x80, 0x81, 0x82
STR_T = 0x83
LITERAL_A = 0x84
EXT_0, EXT_1, EXT_2 = 0xC0, 0xC1, 0xC2
OPAQUE = 0xC3
LITERAL_AC = 0xC4

TAG_HAS_ATTRIBUTES = 0x80
TAG_HAS_CONTENT = 0x40

# WAP-167 8.3.1: tag tokens, code page 0
SI_TAGS = {0x05: "si", 0x06: "indication", 0x07: "info", 0x08: "item"}
SI_TAG_TOKENS = {name: token for token, name in SI_TAGS.items()}

# WAP-167 8.3.2: attribute start tokens (name and, for some, the start of the value)
SI_ATTR_START: dict[int, tuple[str, str]] = {
    0x05: ("action", "signal-none"),
    0x06: ("action", "signal-low"),
    0x07: ("action", "signal-medium"),
    0x08: ("action", "signal-high"),
    0x09: ("action", "delete"),
    0x0A: ("created", ""),
    0x0B: ("href", ""),
    0x0C: ("href", "http://"),
    0x0D: ("href", "http://www."),
    0x0E: ("href", "https://"),
    0x0F: ("href", "https://www."),
    0x10: ("si-expires", ""),
    0x11: ("si-id", ""),
    0x12: ("class", ""),
}
# WAP-167 8.3.3: attribute value tokens
SI_ATTR_VALUES = {0x85: ".com/", 0x86: ".edu/", 0x87: ".net/", 0x88: ".org/"}

ACTIONS = ("signal-none", "signal-low", "signal-medium", "signal-high", "delete")
DATE_ATTRIBUTES = ("created", "si-expires")

MAX_DOCUMENT = 64 * 1024  # an SI over SMS is at most 255 parts of ~130 octets; anything far larger is not one
MAX_DEPTH = 16
MAX_STRING_TABLE = 16 * 1024


def encode_mb_u_int32(value: int) -> bytes:
    """WAP-192 5.1: 7 bits an octet, most significant first, the high bit set on all but the last."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise WapPushError(f"{value} does not fit a multi-byte uint32")
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


class _Reader:
    """Bounded cursor over bytes; every overrun is the given error class."""

    def __init__(self, data: bytes, error: type[WapPushError], what: str) -> None:
        self.data = data
        self.at = 0
        self.error = error
        self.what = what

    def left(self) -> int:
        return len(self.data) - self.at

    def byte(self, what: str) -> int:
        if self.at >= len(self.data):
            raise self.error(f"{self.what} ends before {what} (offset {self.at})")
        value = self.data[self.at]
        self.at += 1
        return value

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.at + count > len(self.data):
            raise self.error(f"{what} of {count} octets overruns the {self.what} at offset {self.at}")
        chunk = self.data[self.at : self.at + count]
        self.at += count
        return chunk

    def uintvar(self, what: str) -> int:
        """mb_u_int32 (WAP-192 5.1) / uintvar (WAP-230 8.1.2): at most 5 octets, at most 32 bits."""
        value = 0
        for _ in range(5):
            octet = self.byte(what)
            value = (value << 7) | (octet & 0x7F)
            if not octet & 0x80:
                if value > 0xFFFFFFFF:
                    raise self.error(f"{what} exceeds 32 bits")
                return value
        raise self.error(f"{what} runs past 5 octets")

    def cstring(self, what: str) -> bytes:
        end = self.data.find(b"\x00", self.at)
        if end < 0:
            raise self.error(f"{what} has no terminating NUL (offset {self.at})")
        chunk = self.data[self.at : end]
        self.at = end + 1
        return chunk


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WbxmlError(f"{what} is not UTF-8: {exc.reason} at {exc.start}") from None


def encode_si_date(when: datetime) -> bytes:
    """WAP-167 8.2.2: the date as the 14 digits YYYYMMDDhhmmss in UTC, two a octet (BCD), trailing 00 octets
    dropped."""
    if when.tzinfo is None:
        raise WbxmlError("an SI date must be timezone-aware (it is sent in UTC)")
    utc = when.astimezone(UTC)
    if not 0 <= utc.year <= 9999:
        raise WbxmlError(f"year {utc.year} does not fit an SI date")
    digits = f"{utc.year:04d}{utc.month:02d}{utc.day:02d}{utc.hour:02d}{utc.minute:02d}{utc.second:02d}"
    packed = bytes(int(digits[i : i + 2], 16) for i in range(0, 14, 2))
    return packed.rstrip(b"\x00") or packed[:1]


def decode_si_date(data: bytes, what: str = "date") -> datetime:
    """The inverse of encode_si_date: 1 to 7 BCD octets (missing ones are 00); WbxmlError on a bad digit or date."""
    if not 1 <= len(data) <= 7:
        raise WbxmlError(f"{what}: an SI date is 1 to 7 octets, not {len(data)}")
    digits = data.hex() + "00" * (7 - len(data))
    if not digits.isdigit():
        raise WbxmlError(f"{what}: {data.hex()} is not BCD digits")
    return _date_from_digits(digits, what)


def _date_from_digits(digits: str, what: str) -> datetime:
    try:
        return datetime(
            int(digits[0:4]),
            int(digits[4:6]),
            int(digits[6:8]),
            int(digits[8:10]),
            int(digits[10:12]),
            int(digits[12:14]),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise WbxmlError(f"{what}: {digits} is not a date ({exc})") from None


def _date_from_text(text: str, what: str) -> datetime:
    """WAP-167 5.2.1 writes dates as YYYY-MM-DDThh:mm:ssZ in the textual form."""
    digits = text.replace("-", "").replace(":", "").replace("T", "").removesuffix("Z")
    if len(digits) != 14 or not digits.isdigit():
        raise WbxmlError(f"{what}: {text!r} is not YYYY-MM-DDThh:mm:ssZ")
    return _date_from_digits(digits, what)


@dataclass
class Element:
    """A decoded WBXML element: tag name, attributes (values as text, or bytes when OPAQUE), children."""

    tag: str
    attributes: dict[str, str | bytes] = field(default_factory=dict)
    children: list[Element | str | bytes] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c for c in self.children if isinstance(c, str))


class _WbxmlDecoder:
    def __init__(self, data: bytes) -> None:
        if len(data) > MAX_DOCUMENT:
            raise WbxmlError(
                f"a WBXML document of {len(data)} octets is over the {MAX_DOCUMENT} this decoder takes"
            )
        self.r = _Reader(data, WbxmlError, "WBXML document")
        self.strtbl = b""
        self.tag_page = 0
        self.attr_page = 0

    def _table_string(self, index: int) -> str:
        if index >= len(self.strtbl):
            raise WbxmlError(f"string table index {index} is past its {len(self.strtbl)} octets")
        end = self.strtbl.find(b"\x00", index)
        if end < 0:
            raise WbxmlError(f"string table entry at {index} has no terminating NUL")
        return _text(self.strtbl[index:end], "a string table entry")

    def document(self) -> tuple[int, int, Element]:
        r = self.r
        version = r.byte("the version")
        public_id = r.uintvar("the public identifier")
        index: int | None = None
        if public_id == 0:
            index = r.uintvar("the public identifier's string table index")
        charset = r.uintvar("the charset")
        if charset not in (0, CHARSET_UTF8):
            raise WbxmlError(f"charset MIBenum {charset} is not supported (UTF-8, 106, is)")
        length = r.uintvar("the string table length")
        if length > MAX_STRING_TABLE:
            raise WbxmlError(
                f"a string table of {length} octets is over the {MAX_STRING_TABLE} this decoder takes"
            )
        self.strtbl = r.take(length, "the string table")
        if index is not None:
            if self._table_string(index) != "-//WAPFORUM//DTD SI 1.0//EN":
                raise WbxmlError("the document's public identifier is not the SI DTD's")
            public_id = SI_PUBLIC_ID
        if public_id != SI_PUBLIC_ID:
            raise WbxmlError(f"public identifier {public_id:#x} is not SI 1.0's ({SI_PUBLIC_ID:#x})")
        while True:  # processing instructions before the body are allowed (WAP-192 5.3); skip them
            token = self._peek_switch()
            if token != PI:
                break
            self.r.at += 1
            self._skip_pi()
        root = self._element(0)
        while r.left():  # and after it
            if self._peek_switch() != PI:
                raise WbxmlError(f"{r.left()} octets after the document's body")
            self.r.at += 1
            self._skip_pi()
        return version, public_id, root

    def _peek_switch(self) -> int:
        """The next token after any SWITCH_PAGE (which sets the tag page here, where a tag comes next)."""
        while True:
            token = self.r.byte("a token")
            if token == SWITCH_PAGE:
                self.tag_page = self.r.byte("the code page")
                continue
            self.r.at -= 1
            return token

    def _skip_pi(self) -> None:
        while True:
            token = self.r.byte("the processing instruction's end")
            if token == END:
                return
            if token < 0x80 and token not in (STR_I, ENTITY, EXT_I_0, EXT_I_1, EXT_I_2, LITERAL):
                continue  # the target's attribute start token; its value follows
            if token == LITERAL:
                self._table_string(self.r.uintvar("a literal target's index"))
                continue
            self._attribute_token(token, "pi")

    def _tag_name(self, token: int) -> str:
        ident = token & 0x3F
        if ident == LITERAL:
            return self._table_string(self.r.uintvar("a literal tag's index"))
        if self.tag_page != 0 or ident not in SI_TAGS:
            raise WbxmlError(f"tag token {token:#04x} (page {self.tag_page}) is not an SI tag")
        return SI_TAGS[ident]

    def _element(self, depth: int) -> Element:
        if depth >= MAX_DEPTH:
            raise WbxmlError(f"elements nested deeper than {MAX_DEPTH}")
        token = self._peek_switch()
        self.r.at += 1
        if (token & 0x3F) < 0x05 and (token & 0x3F) != LITERAL:
            raise WbxmlError(f"token {token:#04x} where an element was expected")
        element = Element(self._tag_name(token))
        if token & TAG_HAS_ATTRIBUTES:
            self._attributes(element)
        if token & TAG_HAS_CONTENT:
            self._content(element, depth)
        return element

    def _attributes(self, element: Element) -> None:
        name: str | None = None
        parts: list[str | bytes] = []

        def finish() -> None:
            if name is None:
                return
            if name in element.attributes:
                raise WbxmlError(f"attribute {name!r} given twice")
            if any(isinstance(p, bytes) for p in parts):
                if len(parts) != 1:
                    raise WbxmlError(f"attribute {name!r} mixes OPAQUE data with text")
                element.attributes[name] = parts[0]
            else:
                element.attributes[name] = "".join(p for p in parts if isinstance(p, str))

        while True:
            token = self.r.byte("the attribute list's END")
            if token == SWITCH_PAGE:
                self.attr_page = self.r.byte("the code page")
                continue
            if token == END:
                finish()
                return
            if token < 0x80 and token not in (STR_I, ENTITY, EXT_I_0, EXT_I_1, EXT_I_2, PI, LITERAL):
                finish()
                if self.attr_page != 0 or token not in SI_ATTR_START:
                    raise WbxmlError(
                        f"attribute start token {token:#04x} (page {self.attr_page}) is not SI's"
                    )
                name, prefix = SI_ATTR_START[token]
                parts = [prefix] if prefix else []
                continue
            if token == LITERAL:
                finish()
                name = self._table_string(self.r.uintvar("a literal attribute's index"))
                parts = []
                continue
            if name is None:
                raise WbxmlError(f"attribute value token {token:#04x} before any attribute start")
            parts.append(self._attribute_token(token, name))

    def _attribute_token(self, token: int, name: str) -> str | bytes:
        r = self.r
        if token == STR_I:
            return _text(r.cstring("an inline string"), f"attribute {name!r}")
        if token == STR_T:
            return self._table_string(r.uintvar("a string table index"))
        if token == ENTITY:
            code = r.uintvar("an entity")
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise WbxmlError(f"entity {code:#x} is not a character")
            return chr(code)
        if token == OPAQUE:
            return r.take(r.uintvar("an OPAQUE length"), "OPAQUE data")
        if token in (EXT_I_0, EXT_I_1, EXT_I_2, EXT_T_0, EXT_T_1, EXT_T_2, EXT_0, EXT_1, EXT_2):
            raise WbxmlError(f"extension token {token:#04x}: SI defines no extensions")
        if token >= 0x80 and self.attr_page == 0 and token in SI_ATTR_VALUES:
            return SI_ATTR_VALUES[token]
        raise WbxmlError(f"token {token:#04x} (page {self.attr_page}) is not an SI attribute value")

    def _content(self, element: Element, depth: int) -> None:
        r = self.r
        while True:
            token = r.byte(f"the END of <{element.tag}>")
            if token == SWITCH_PAGE:
                self.tag_page = r.byte("the code page")
                continue
            if token == END:
                return
            if token == STR_I:
                element.children.append(_text(r.cstring("an inline string"), f"<{element.tag}>'s text"))
            elif token == STR_T:
                element.children.append(self._table_string(r.uintvar("a string table index")))
            elif token == ENTITY:
                element.children.append(self._attribute_token(token, element.tag))
            elif token == OPAQUE:
                element.children.append(r.take(r.uintvar("an OPAQUE length"), "OPAQUE data"))
            elif token == PI:
                self._skip_pi()
            elif token in (EXT_I_0, EXT_I_1, EXT_I_2, EXT_T_0, EXT_T_1, EXT_T_2, EXT_0, EXT_1, EXT_2):
                raise WbxmlError(f"extension token {token:#04x}: SI defines no extensions")
            else:
                r.at -= 1
                element.children.append(self._element(depth + 1))


def decode_wbxml(data: bytes) -> tuple[int, int, Element]:
    """(WBXML version, public identifier, root element) of an SI document; WbxmlError on anything malformed."""
    return _WbxmlDecoder(data).document()


# --- the Service Indication (WAP-167) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceIndication:
    """The `indication` of an SI (WAP-167 5.2), with its text; `info` items are kept as (class, text) pairs."""

    href: str | None = None
    si_id: str | None = None
    created: datetime | None = None
    si_expires: datetime | None = None
    action: str = "signal-medium"
    text: str = ""
    class_: str | None = None
    items: tuple[tuple[str, str], ...] = ()


_HREF_PREFIXES = (  # longest first, so "http://www." wins over "http://"
    ("https://www.", 0x0F),
    ("http://www.", 0x0D),
    ("https://", 0x0E),
    ("http://", 0x0C),
)


def _inline(text: str) -> bytes:
    if "\x00" in text:
        raise WbxmlError("an SI string cannot hold a NUL character")
    return bytes((STR_I,)) + text.encode("utf-8") + b"\x00"


def _encode_href(href: str) -> bytes:
    """The href with its scheme prefix as the attribute start token and .com/ .edu/ .net/ .org/ as value tokens
    (WAP-167 8.3.2, 8.3.3)."""
    start, rest = 0x0B, href
    for prefix, token in _HREF_PREFIXES:
        if href.startswith(prefix):
            start, rest = token, href[len(prefix) :]
            break
    out = bytearray((start,))
    chunk = ""
    i = 0
    while i < len(rest):
        for value_token, value in SI_ATTR_VALUES.items():
            if rest.startswith(value, i):
                if chunk:
                    out += _inline(chunk)
                    chunk = ""
                out.append(value_token)
                i += len(value)
                break
        else:
            chunk += rest[i]
            i += 1
    if chunk:
        out += _inline(chunk)
    return bytes(out)


def encode_si(si: ServiceIndication) -> bytes:
    """The SI as a WBXML 1.3 document (public id 0x05, UTF-8, no string table)."""
    if si.action not in ACTIONS:
        raise WbxmlError(f"action {si.action!r} is not one of {', '.join(ACTIONS)}")
    attrs = bytearray()
    if si.href is not None:
        attrs += _encode_href(si.href)
    if si.si_id is not None:
        attrs += bytes((0x11,)) + _inline(si.si_id)
    if si.created is not None:
        date = encode_si_date(si.created)
        attrs += bytes((0x0A, OPAQUE)) + encode_mb_u_int32(len(date)) + date
    if si.si_expires is not None:
        date = encode_si_date(si.si_expires)
        attrs += bytes((0x10, OPAQUE)) + encode_mb_u_int32(len(date)) + date
    if si.action != "signal-medium":  # the DTD's default (WAP-167 5.2.1) need not be sent
        attrs.append(next(t for t, (n, v) in SI_ATTR_START.items() if n == "action" and v == si.action))
    if si.class_ is not None:
        attrs += bytes((0x12,)) + _inline(si.class_)
    indication = SI_TAG_TOKENS["indication"]
    body = bytearray()
    body.append(indication | (TAG_HAS_ATTRIBUTES if attrs else 0) | (TAG_HAS_CONTENT if si.text else 0))
    if attrs:
        body += attrs + bytes((END,))
    if si.text:
        body += _inline(si.text) + bytes((END,))
    if si.items:
        info = bytearray((SI_TAG_TOKENS["info"] | TAG_HAS_CONTENT,))
        for class_, text in si.items:
            info += bytes(
                (SI_TAG_TOKENS["item"] | TAG_HAS_ATTRIBUTES | (TAG_HAS_CONTENT if text else 0), 0x12)
            )
            info += _inline(class_) + bytes((END,))
            if text:
                info += _inline(text) + bytes((END,))
        body += info + bytes((END,))
    header = (
        bytes((WBXML_VERSION_1_3,))
        + encode_mb_u_int32(SI_PUBLIC_ID)
        + encode_mb_u_int32(CHARSET_UTF8)
        + b"\x00"
    )
    return header + bytes((SI_TAG_TOKENS["si"] | TAG_HAS_CONTENT,)) + bytes(body) + bytes((END,))


def _date_attribute(value: str | bytes, name: str) -> datetime:
    if isinstance(value, bytes):
        return decode_si_date(value, name)
    return _date_from_text(value, name)


def _string_attribute(element: Element, name: str) -> str | None:
    value = element.attributes.get(name)
    if isinstance(value, bytes):
        raise WbxmlError(f"attribute {name!r} of <{element.tag}> is OPAQUE, not text")
    return value


def decode_si(data: bytes) -> ServiceIndication:
    """The SI a WBXML document holds; WbxmlError when it is malformed or not an SI (WAP-167 5.2's structure)."""
    _, _, root = decode_wbxml(data)
    if root.tag != "si":
        raise WbxmlError(f"the root element is <{root.tag}>, not <si>")
    elements = [c for c in root.children if isinstance(c, Element)]
    if not elements or elements[0].tag != "indication":
        raise WbxmlError("<si> holds no <indication> first")
    if len(elements) > 2 or (len(elements) == 2 and elements[1].tag != "info"):
        raise WbxmlError("<si> holds more than an <indication> and an <info>")
    indication = elements[0]
    if any(isinstance(c, Element | bytes) for c in indication.children):
        raise WbxmlError("<indication> holds something other than text")
    unknown = set(indication.attributes) - {"href", "si-id", "created", "si-expires", "action", "class"}
    if unknown:
        raise WbxmlError(f"<indication> has attributes SI does not define: {', '.join(sorted(unknown))}")
    action = _string_attribute(indication, "action") or "signal-medium"
    if action not in ACTIONS:
        raise WbxmlError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    created = indication.attributes.get("created")
    expires = indication.attributes.get("si-expires")
    items: list[tuple[str, str]] = []
    if len(elements) == 2:
        for item in elements[1].children:
            if not isinstance(item, Element) or item.tag != "item":
                raise WbxmlError("<info> holds something other than <item> elements")
            class_ = _string_attribute(item, "class")
            if class_ is None:
                raise WbxmlError("an <item> without its class")
            items.append((class_, item.text()))
    return ServiceIndication(
        href=_string_attribute(indication, "href"),
        si_id=_string_attribute(indication, "si-id"),
        created=None if created is None else _date_attribute(created, "created"),
        si_expires=None if expires is None else _date_attribute(expires, "si-expires"),
        action=action,
        text=indication.text(),
        class_=_string_attribute(indication, "class"),
        items=tuple(items),
    )


# --- the WSP Push PDU (WAP-230 8.2.4) --------------------------------------------------------------------------------

PDU_PUSH = 0x06
PDU_CONFIRMED_PUSH = 0x07
CONTENT_TYPE_SIC = 0x2E  # application/vnd.wap.sic (WAP-230 appendix A, table 40)
CONTENT_TYPE_SI = 0x2D  # text/vnd.wap.si
HEADER_X_WAP_APPLICATION_ID = 0x2F  # WAP-230 appendix A, table 39
APP_ID_WML_UA = 0x02  # x-wap-application:wml.ua (WINA push application ids)

WELL_KNOWN_CONTENT_TYPES = {
    0x2D: "text/vnd.wap.si",
    0x2E: "application/vnd.wap.sic",
    0x2F: "text/vnd.wap.sl",
    0x30: "application/vnd.wap.slc",
    0x31: "text/vnd.wap.co",
    0x32: "application/vnd.wap.coc",
    0x44: "application/vnd.wap.mms-message",
}
WELL_KNOWN_APP_IDS = {
    0x00: "x-wap-application:*",
    0x01: "x-wap-application:push.sia",
    0x02: "x-wap-application:wml.ua",
    0x03: "x-wap-application:wta.ua",
    0x04: "x-wap-application:mms.ua",
}


@dataclass(frozen=True)
class PushPdu:
    """A decoded connectionless WSP Push PDU: TID, PDU type, content type (as text), the application id when the
    X-Wap-Application-Id header names one, the raw headers and the body."""

    tid: int
    pdu_type: int
    content_type: str
    application_id: str | None
    headers: bytes
    body: bytes


def encode_push_pdu(
    body: bytes,
    *,
    tid: int = 0x01,
    content_type: int = CONTENT_TYPE_SIC,
    application_id: int | None = APP_ID_WML_UA,
) -> bytes:
    """TID, PDU type Push, HeadersLen (uintvar, over content type and headers), content type as a well-known
    short-integer, X-Wap-Application-Id as short-integers, then the body (WAP-230 8.2.4.1, 8.4.2.24)."""
    if not 0 <= tid <= 0xFF or not 0 <= content_type <= 0x7F:
        raise WapPushError("the TID is one octet and a well-known content type is below 0x80")
    headers = bytes((0x80 | content_type,))
    if application_id is not None:
        if not 0 <= application_id <= 0x7F:
            raise WapPushError("a well-known application id is below 0x80")
        headers += bytes((0x80 | HEADER_X_WAP_APPLICATION_ID, 0x80 | application_id))
    return bytes((tid, PDU_PUSH)) + encode_mb_u_int32(len(headers)) + headers + body


def _text_string(r: _Reader, what: str) -> str:
    raw = r.cstring(what)
    if raw[:1] == b"\x7f":  # quote: a text that would start with a byte >= 0x80 (WAP-230 8.4.2.1)
        raw = raw[1:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WapPushError(f"{what} is not UTF-8") from None


def _value(r: _Reader, what: str) -> tuple[int | None, bytes, bool]:
    """One WSP value (WAP-230 8.4.1.2): (short-integer, b"", False), or (None, the octets a length gives, False),
    or (None, a text's octets, True)."""
    first = r.byte(what)
    if first >= 0x80:
        return first & 0x7F, b"", False
    if first <= 30:
        return None, r.take(first, what), False
    if first == 31:
        return None, r.take(r.uintvar(f"{what}'s length"), what), False
    r.at -= 1
    return None, r.cstring(what), True


def _content_type(r: _Reader) -> str:
    first = r.byte("the content type")
    if first >= 0x80:
        code = first & 0x7F
        return WELL_KNOWN_CONTENT_TYPES.get(code, f"0x{code:02x}")
    if first >= 32:
        r.at -= 1
        return _text_string(r, "the content type")
    length = r.uintvar("the content type's length") if first == 31 else first
    general = _Reader(r.take(length, "the content type"), WapPushError, "content type")
    media = general.byte("the media type")
    if media >= 0x80:
        return WELL_KNOWN_CONTENT_TYPES.get(
            media & 0x7F, f"0x{media & 0x7F:02x}"
        )  # parameters follow; not needed
    if media < 32:  # Integer-value: a long integer media type
        value = int.from_bytes(general.take(media, "the media type"), "big")
        return WELL_KNOWN_CONTENT_TYPES.get(value, f"0x{value:02x}")
    general.at -= 1
    return _text_string(general, "the media type")


def decode_push_pdu(data: bytes) -> PushPdu:
    """A connectionless WSP Push or ConfirmedPush PDU; WapPushError for anything else or malformed."""
    if len(data) > MAX_DOCUMENT:
        raise WapPushError(f"a push PDU of {len(data)} octets is over the {MAX_DOCUMENT} this decoder takes")
    r = _Reader(data, WapPushError, "WSP PDU")
    tid = r.byte("the TID")
    pdu_type = r.byte("the PDU type")
    if pdu_type not in (PDU_PUSH, PDU_CONFIRMED_PUSH):
        raise WapPushError(f"PDU type {pdu_type:#04x} is not Push (0x06) or ConfirmedPush (0x07)")
    headers_len = r.uintvar("the headers length")
    block = r.take(headers_len, "the headers")
    h = _Reader(block, WapPushError, "push headers")
    content_type = _content_type(h)
    headers = block[h.at :]
    application_id: str | None = None
    while h.left():
        name = h.byte("a header name")
        if name == 0x7F:  # shift-delimiter and a page number
            h.byte("the code page")
            continue
        if 0x01 <= name <= 0x1F:  # short-cut shift to a page
            continue
        if name >= 0x80:
            code, raw, is_text = _value(h, "a header value")
            if name & 0x7F == HEADER_X_WAP_APPLICATION_ID:
                if not is_text:  # a short or long integer (WAP-230 8.4.2.54: Uri-value | App-assigned-code)
                    number = code if code is not None else int.from_bytes(raw[:4], "big")
                    application_id = WELL_KNOWN_APP_IDS.get(number, f"x-wap-application:0x{number:x}")
                else:
                    try:
                        application_id = raw.decode("ascii")
                    except UnicodeDecodeError:
                        raise WapPushError("X-Wap-Application-Id is not ASCII") from None
            continue
        if name < 0x20:
            raise WapPushError(f"octet {name:#04x} cannot start a header")
        h.at -= 1
        field_name = _text_string(h, "a header name")
        field_value = _text_string(h, "a header value")
        if field_name.lower() == "x-wap-application-id":
            application_id = field_value
    return PushPdu(tid, pdu_type, content_type, application_id, headers, data[r.at :])
