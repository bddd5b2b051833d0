"""Outgoing HTTP over `wasi:http`: the request's `scheme://host:port` must be covered
by a `net` capability the step declares and the user grants.

The host implements `wasi:http/outgoing-handler` for every step (TLS included), but the
`hoist:step/step` world does not import it, so componentize-py generates its bindings
only when the component targets the SDK's world, which adds that import
(`sdk/python/wit/world.wit`, world `hoist:python-step/step`; see the README for the
command). Built against `hoist:step/step` alone, everything else in the SDK works and
these functions raise `Failed` saying how to build.

Python's `urllib`/`http.client` are no substitute inside the sandbox: they would use raw
sockets (`wasi:sockets`, which need `net:tcp://host:port` grants) and componentize-py's
CPython has no `ssl` module, so no https.
"""

from __future__ import annotations

# The codecs `Response.text` may need, imported now: a component's CPython can import
# only while it is built (see `hoist_sdk._wit`).
import encodings.ascii  # noqa: F401
import encodings.latin_1  # noqa: F401
import json as _json
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from . import _wit
from .errors import Denied, Failed, InvalidInput, NotFound

Headers = Union[Mapping[str, str], Sequence[Tuple[str, str]], None]

#: Bytes read from a response body at a time.
_CHUNK = 256 * 1024

_NO_HTTP = (
    "hoist_sdk.http needs wasi:http, which this component does not import: build it for "
    "the SDK's world, `componentize-py -d <hoist>/wit -d <hoist>/sdk/python/wit "
    "-w hoist:python-step/step componentize app ...` (see sdk/python/README.md)"
)


@dataclass
class Response:
    """A response, body read to the end."""

    #: HTTP status code.
    status: int
    #: The body.
    body: bytes
    #: Response headers in the order received, names lower-case.
    headers: List[Tuple[str, str]] = field(default_factory=list)
    #: The URL requested.
    url: str = ""

    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self.status < 400

    def header(self, name: str) -> Optional[str]:
        """The first header called `name` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def text(self, encoding: Optional[str] = None) -> str:
        """The body as text: `encoding`, else the `charset` of `content-type`, else
        UTF-8 (invalid bytes replaced)."""
        if encoding is None:
            ctype = self.header("content-type") or ""
            for part in ctype.split(";")[1:]:
                key, _, value = part.strip().partition("=")
                if key.lower() == "charset" and value:
                    encoding = value.strip('"')
        try:
            return self.body.decode(encoding or "utf-8", errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.body)

    def raise_for_status(self) -> "Response":
        """`Failed` if the status is 400 or more (with the start of the body as the
        hint), else the response itself."""
        if not self.ok:
            raise Failed(f"{self.url}: HTTP {self.status}", hint=self.text()[:500] or None)
        return self


def split_url(url: str) -> Tuple[str, str, str]:
    """`(scheme, authority, path?query)` of `scheme://authority/path?query`; the path
    is `/` when absent (the Rust SDK's `split_url`)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidInput(f"`{url}` is not an http(s) URL")
    cut = len(rest)
    for c in "/?":
        i = rest.find(c)
        if i != -1:
            cut = min(cut, i)
    authority, path = rest[:cut], rest[cut:]
    if not path:
        path = "/"
    elif path.startswith("?"):
        path = "/" + path
    return scheme, authority, path


def _bindings() -> Tuple[Any, Any]:
    """`(outgoing_handler, wasi:http types)` modules, whatever names they were given
    (the types module is the one the handler's bindings import)."""
    try:
        handler = _wit.module("outgoing_handler")
    except _wit.NotInComponent:
        raise Failed(_NO_HTTP) from None
    for value in vars(handler).values():
        if hasattr(value, "OutgoingRequest") and hasattr(value, "Fields"):
            return handler, value
    raise Failed(_NO_HTTP)


def _error(url: str, code: Any) -> Exception:
    """The SDK exception for a `wasi:http` `error-code` (as the Rust SDK maps them)."""
    case = type(code).__name__.split("_", 1)[-1]
    if case == "HttpRequestDenied":
        return Denied(f"the request to {url} was denied by the sandbox (see the log)")
    if case in ("DestinationNotFound", "DnsError"):
        return NotFound(f"{url}: host not found")
    if case == "ConnectionRefused":
        return Failed(f"{url}: connection refused")
    payload = getattr(code, "value", None)
    return Failed(f"{url}: {case}" + (f" ({payload})" if payload is not None else ""))


def _method(t: Any, method: str) -> Any:
    known = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
    m = method.upper()
    if m in known:
        return getattr(t, f"Method_{m.capitalize()}")()
    return t.Method_Other(value=method)


def send(
    method: str,
    url: str,
    headers: Headers = None,
    body: Union[bytes, str, None] = None,
    timeout: Optional[float] = None,
) -> Response:
    """Send `method url` with `headers` and `body` (str is sent as UTF-8, with its
    `content-length`) and read the whole response. `timeout` (seconds) bounds the
    connection and the wait for each part of the response.

    A status of 400 or more is a `Response` like any other (see `raise_for_status`);
    errors are for requests that could not be made: `Denied` (no `net` grant covers the
    URL), `NotFound` (unknown host), `Failed` (anything else), `InvalidInput` (not an
    http(s) URL, a bad header).
    """
    handler, t = _bindings()
    err = _wit.err_class()
    scheme, authority, path = split_url(url)
    if scheme not in ("http", "https"):
        raise InvalidInput(f"unsupported scheme `{scheme}` in `{url}` (http or https)")
    data = body.encode() if isinstance(body, str) else body
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])

    def bad(what: str) -> InvalidInput:
        return InvalidInput(f"`{url}`: invalid {what}")

    fields = t.Fields()
    for k, v in pairs:
        try:
            fields.append(str(k), str(v).encode())
        except err as e:
            raise bad(f"header `{k}` ({type(e.value).__name__.split('_', 1)[-1]})") from None
    if data is not None:
        try:
            fields.append("content-length", str(len(data)).encode())
        except err:
            raise bad("content-length") from None
    request = t.OutgoingRequest(fields)
    for setter, value, what in (
        (request.set_method, _method(t, method), "method"),
        (request.set_scheme, t.Scheme_Https() if scheme == "https" else t.Scheme_Http(), "scheme"),
        (request.set_authority, authority, "host"),
        (request.set_path_with_query, path, "path"),
    ):
        try:
            setter(value)
        except err:
            raise bad(what) from None
    options = None
    if timeout is not None:
        options = t.RequestOptions()
        ns = int(timeout * 1e9)
        for setter in (
            options.set_connect_timeout,
            options.set_first_byte_timeout,
            options.set_between_bytes_timeout,
        ):
            try:
                setter(ns)
            except err:
                pass  # the host does not support this one: its default applies
    outgoing = request.body()
    try:
        future = handler.handle(request, options)
    except err as e:
        raise _error(url, e.value) from None
    sent = _write_body(url, t, outgoing, data, err)
    try:
        t.OutgoingBody.finish(outgoing, None)
    except err as e:
        sent = sent or _error(url, e.value)
    with future.subscribe() as ready:
        ready.block()
    answer = future.get()
    future.__exit__(None, None, None)
    if answer is None or type(answer).__name__ != "Ok":
        raise sent or Failed(f"{url}: no response")
    if type(answer.value).__name__ != "Ok":
        # The body could not be sent: that is the better explanation.
        raise sent or _error(url, answer.value.value)
    response = answer.value.value
    status = response.status()
    # A server may answer an error before reading the whole body: show its answer.
    if sent is not None and status < 400:
        response.__exit__(None, None, None)
        raise sent
    with response.headers() as h:
        received = [(k.lower(), v.decode("utf-8", errors="replace")) for k, v in h.entries()]
    content = _read_body(url, t, response, err)
    response.__exit__(None, None, None)
    return Response(status=status, body=content, headers=received, url=url)


def _write_body(
    url: str, t: Any, outgoing: Any, data: Optional[bytes], err: Any
) -> Optional[Exception]:
    """Write `data` to the request body; the error, if sending failed. The stream is
    dropped before the body is finished (a child resource must go first)."""
    if not data:
        return None
    stream = outgoing.write()
    try:
        view = memoryview(data)
        while view:
            room = stream.check_write()
            if room == 0:
                with stream.subscribe() as ready:
                    ready.block()
                continue
            n = min(room, len(view))
            stream.write(bytes(view[:n]))
            view = view[n:]
        try:
            stream.blocking_flush()
        except err as e:
            # Once every byte of the declared length is sent the host may close the
            # stream before this flush: that is success, not an error.
            if type(e.value).__name__ != "StreamError_Closed":
                raise
        return None
    except err as e:
        return Failed(f"{url}: sending the body: {_stream_error(e.value)}")
    finally:
        stream.__exit__(None, None, None)


def _read_body(url: str, t: Any, response: Any, err: Any) -> bytes:
    """The whole response body; the stream, then the body are dropped before the
    response is."""
    incoming = response.consume()
    stream = incoming.stream()
    chunks = []
    try:
        while True:
            try:
                chunks.append(stream.blocking_read(_CHUNK))
            except err as e:
                if type(e.value).__name__ == "StreamError_Closed":
                    break
                raise Failed(f"{url}: {_stream_error(e.value)}") from None
    finally:
        stream.__exit__(None, None, None)
    trailers = t.IncomingBody.finish(incoming)
    trailers.__exit__(None, None, None)
    return b"".join(chunks)


def _stream_error(value: Any) -> str:
    inner = getattr(value, "value", None)
    if inner is not None and hasattr(inner, "to_debug_string"):
        text = inner.to_debug_string()
        inner.__exit__(None, None, None)
        return text
    return type(value).__name__.split("_", 1)[-1]


def get(url: str, headers: Headers = None, timeout: Optional[float] = None) -> Response:
    """`GET url`, body read to the end."""
    return send("GET", url, headers=headers, timeout=timeout)


def post(
    url: str,
    body: Union[bytes, str, None] = None,
    headers: Headers = None,
    timeout: Optional[float] = None,
) -> Response:
    """`POST url` with `body`."""
    return send("POST", url, headers=headers, body=body, timeout=timeout)
