"""A client certificate's subject as the header value sent upstream (RFC 4514 text)."""

from __future__ import annotations

from bunancer.core.tls import subject_text


def subject(*pairs: tuple[str, str]) -> dict[str, object]:
    """`getpeercert()`'s form: one relative name per attribute, in certificate order."""
    return {"subject": tuple(((name, value),) for name, value in pairs)}


def test_most_specific_first_with_short_names() -> None:
    text = subject_text(
        subject(("countryName", "NL"), ("organizationName", "Ex"), ("commonName", "a"))
    )
    assert text == b"CN=a,O=Ex,C=NL"


def test_what_could_break_a_header_or_the_string_is_escaped() -> None:
    text = subject_text(subject(("commonName", "x\r\nX-Admin: yes, +1; é")))
    assert text == b"CN=x\\0D\\0AX-Admin: yes\\2C \\2B1\\3B \\C3\\A9"
    assert all(32 <= byte < 127 for byte in text)


def test_no_certificate_no_subject() -> None:
    assert subject_text(None) == b""
    assert subject_text({}) == b""
