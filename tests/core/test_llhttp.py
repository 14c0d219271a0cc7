"""What the proxy relies on from llhttp (through httptools) beyond plain parsing.

The request path infers HTTP/1.1 from llhttp's keep-alive answer when the request has no
Connection or Proxy-Connection header, instead of calling get_http_version()
(plan.is_http11). That holds only while llhttp accepts no other versions than these and
keeps none of them but 1.1 alive by default: an httptools upgrade that changes either
fails here.
"""

from __future__ import annotations

import httptools
import pytest

ACCEPTED = {b"0.9": False, b"1.0": False, b"1.1": True, b"2.0": False}


class Recorder:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive: bool | None = None
        self.version = ""

    def on_headers_complete(self) -> None:
        # Asked here, as the proxy does: after the message, llhttp has reset its flags.
        self.keep_alive = self.parser.should_keep_alive()
        self.version = self.parser.get_http_version()


def parse(version: bytes, headers: bytes = b"") -> Recorder:
    recorder = Recorder()
    recorder.parser.feed_data(b"GET / HTTP/%s\r\nHost: a\r\n%s\r\n" % (version, headers))
    return recorder


@pytest.mark.parametrize(("version", "keep_alive"), ACCEPTED.items())
def test_only_http11_keeps_alive_without_a_connection_header(
    version: bytes, keep_alive: bool
) -> None:
    recorder = parse(version)
    assert recorder.version == version.decode()
    assert recorder.keep_alive is keep_alive


@pytest.mark.parametrize("version", [b"0.0", b"0.1", b"1.2", b"1.9", b"2.1", b"3.0", b"9.9"])
def test_other_versions_are_rejected(version: bytes) -> None:
    with pytest.raises(httptools.HttpParserError):
        parse(version)


@pytest.mark.parametrize("name", [b"Connection", b"Proxy-Connection"])
def test_a_connection_header_makes_keep_alive_say_nothing_of_the_version(name: bytes) -> None:
    assert parse(b"1.0", name + b": keep-alive\r\n").keep_alive is True
    assert parse(b"1.1", name + b": close\r\n").keep_alive is False
