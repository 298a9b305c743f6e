"""htpasswd hashes and Basic credentials, as nginx's auth_basic checks them (proxy/htpasswd.py,
proxy/basicauth.py): one row per hash scheme, with vectors made by Apache's `htpasswd` and
`openssl passwd` (not by the libraries under test), and the Authorization grammar of nginx's
ngx_http_auth_basic_user. The requests themselves: tests/integration/test_basic_auth.py.
"""

from __future__ import annotations

import base64

import pytest

from proxy.basicauth import VerificationCache, credentials
from proxy.htpasswd import known_scheme, parse_htpasswd, verify

# (scheme, hash, the password it was made from); nginx's ngx_crypt and libc crypt(3).
VECTORS = [
    # htpasswd -nbB -C 5 alice bcrypt-pass ($2y$, Apache's spelling of bcrypt)
    ("bcrypt-2y", "$2y$05$67mM4tGFNsMITb0yuI9it.3AHmLlvrtVltJXM8TcEeMqI/trm0boC", b"bcrypt-pass"),
    # The OpenBSD test vector ($2a$), password "U*U".
    ("bcrypt-2a", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", b"U*U"),
    # htpasswd -nbm bob apr1-pass
    ("apr1", "$apr1$cV7rta74$/wB6b37vKIZ6elCNQmJuT/", b"apr1-pass"),
    # htpasswd -nbs carol sha-pass
    ("sha1", "{SHA}xO2etOilyqtV8o1RvvnmkeBx7QI=", b"sha-pass"),
    # {SSHA}: base64(sha1(password + salt) + salt), salt 01020304
    ("ssha", "{SSHA}/+qnCnujFkn7eaSiyJIEnP9EqHcBAgME", b"ssha-pass"),
    # htpasswd -nbd dave despass
    ("des", "gYAMQGmiRxkKg", b"despass"),
    # openssl passwd -1 -salt saltsalt md5-pass
    ("md5-crypt", "$1$saltsalt$FKHgTyqFOookmXImT/Dsu/", b"md5-pass"),
    # openssl passwd -5 -salt saltsaltsalt sha256-pass
    ("sha256-crypt", "$5$saltsaltsalt$Exnn70bit/4St.PYyi2xRyjnvc8tQ6linANBSPlNhiB", b"sha256-pass"),
    # openssl passwd -6 -salt saltsaltsalt sha512-pass
    (
        "sha512-crypt",
        "$6$saltsaltsalt$wqg5bMrPvpImaJOdbifsXmuvAUkDHvbbNTiC/w8/n4Q.7of/vbuwj.5ItJpdhFW9LVU8gGYctNstWoEBvN03u/",
        b"sha512-pass",
    ),
    # nginx's own {PLAIN} scheme
    ("plain", "{PLAIN}plain-pass", b"plain-pass"),
]


@pytest.mark.parametrize(("scheme", "hashed", "password"), VECTORS, ids=[v[0] for v in VECTORS])
def test_each_scheme_matches_its_password_only(scheme: str, hashed: str, password: bytes) -> None:
    assert known_scheme(hashed)
    assert verify(password, hashed)
    assert not verify(password + b"x", hashed)
    assert not verify(b"", hashed)


# crypt(3) reads a C string: bytes after NUL do not count; DES reads 8 bytes; bcrypt 72.
EDGES = [
    ("des-8-bytes", "gYAMQGmiRxkKg", b"despass", True),
    ("nul-ends-the-password", "$apr1$cV7rta74$/wB6b37vKIZ6elCNQmJuT/", b"apr1-pass\0junk", True),
    ("plain-is-exact", "{PLAIN}plain-pass", b"plain-pass\0", False),
    # auth.go "invalid content": `foo:` has an empty hash, which nothing matches (401).
    ("empty-hash", "", b"", False),
    ("unknown-scheme", "$argon2id$v=19$m=65536,t=3,p=4$abc$def", b"x", False),
    ("malformed-bcrypt", "$2y$05$short", b"x", False),
    ("malformed-ssha", "{SSHA}AAAA", b"", False),
]


@pytest.mark.parametrize(("name", "hashed", "password", "ok"), EDGES, ids=[e[0] for e in EDGES])
def test_edges(name: str, hashed: str, password: bytes, ok: bool) -> None:
    assert verify(password, hashed) is ok


def test_bcrypt_reads_72_bytes() -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"a" * 72, bcrypt.gensalt(4)).decode()
    assert verify(b"a" * 80, hashed)


# htpasswd files as nginx reads them (ngx_http_auth_basic_handler's line parser).
FILES = [
    (b"foo:{PLAIN}a\n", [("foo", "{PLAIN}a")]),
    (b"foo:{PLAIN}a\r\nbar:{PLAIN}b", [("foo", "{PLAIN}a"), ("bar", "{PLAIN}b")]),
    (b"# comment\n\nfoo:{PLAIN}a:extra field\n", [("foo", "{PLAIN}a")]),
    (b"foo:{PLAIN}a\nfoo:{PLAIN}b\n", [("foo", "{PLAIN}a")]),  # the first line of a user wins
    (b"foo:\n", [("foo", "")]),  # auth.go "invalid content": a user that never matches
    (b"no colon\n:{PLAIN}a\n", []),
    (b"\xff:{PLAIN}a\n", []),  # not UTF-8
]


@pytest.mark.parametrize(("text", "entries"), FILES)
def test_parse_htpasswd(text: bytes, entries: list[tuple[str, str]]) -> None:
    assert parse_htpasswd(text) == entries


def _b64(text: bytes) -> bytes:
    return base64.b64encode(text)


# Authorization values (ngx_http_auth_basic_user): "Basic" any case, spaces, base64 of
# user:password (padding optional), the password after the first ":".
CREDENTIALS = [
    (b"Basic " + _b64(b"foo:bar"), (b"foo", b"bar")),
    (b"basic " + _b64(b"foo:bar"), (b"foo", b"bar")),
    (b"BASIC   " + _b64(b"foo:bar"), (b"foo", b"bar")),
    (b"Basic " + _b64(b"foo:b:a:r"), (b"foo", b"b:a:r")),
    (b"Basic " + _b64(b"foo:"), (b"foo", b"")),
    (b"Basic " + _b64(b"foo:ba").rstrip(b"="), (b"foo", b"ba")),
    (b"Basic " + _b64(b"foobar"), None),  # no ":"
    (b"Basic", None),
    (b"Basic ", None),
    (b"Basic !!!!", None),
    (b"Basic " + _b64(b"foo:bar")[:-3] + b"$", None),
    (b"Bearer " + _b64(b"foo:bar"), None),
    (b"Basicfoo", None),
]


@pytest.mark.parametrize(("value", "parsed"), CREDENTIALS)
def test_credentials(value: bytes, parsed: tuple[bytes, bytes] | None) -> None:
    assert credentials(value) == parsed


def test_cache_is_bounded_and_least_recently_used() -> None:
    cache = VerificationCache(max_entries=2)
    cache.put((b"a", b"1"), True)
    cache.put((b"a", b"2"), False)
    assert cache.get((b"a", b"1")) is True  # now the most recent
    cache.put((b"a", b"3"), True)
    assert cache.get((b"a", b"2")) is None
    assert cache.get((b"a", b"1")) is True
    assert cache.misses == 3
