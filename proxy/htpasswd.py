"""htpasswd files and password hashes: the one module that knows the hash libraries.

Basic authentication (ingress-nginx's auth-type basic) checks a password against the hash the
route's Secret holds for the user, as nginx's auth_basic does: its own schemes (`$apr1$`,
`{SHA}`, `{SSHA}`, `{PLAIN}`) and what the C library's crypt(3) takes in ingress-nginx's image
(bcrypt `$2a$` / `$2b$` / `$2y$`, MD5-crypt `$1$`, SHA-crypt `$5$` / `$6$`, traditional DES).
A hash of any other form never matches (nginx answers 401 too: crypt(3) fails on it).

The controller parses a Secret's text with `parse_htpasswd` (which users and hashes go into the
snapshot); a worker calls `verify` for a request's password, through the cache of
proxy/basicauth.py. bcrypt comes from `bcrypt`, the crypt(3) schemes from `passlib` (libpass,
pure Python and maintained; the stdlib's `crypt` module is deprecated and gone in 3.13).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

import bcrypt
from passlib.hash import apr_md5_crypt, des_crypt, md5_crypt, sha256_crypt, sha512_crypt

# crypt(3) reads the password as a C string, and bcrypt only its first 72 bytes.
_BCRYPT_MAX: Final = 72
_BCRYPT_PREFIXES: Final = (b"$2a$", b"$2b$", b"$2y$")
# Traditional DES crypt: a 2-character salt and 11 characters of hash from this alphabet.
_DES_ALPHABET: Final = frozenset(
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# The schemes verify() knows, by prefix (for the controller: which hashes can ever match).
SCHEME_PREFIXES: Final = (
    "$2a$",
    "$2b$",
    "$2y$",
    "$apr1$",
    "$1$",
    "$5$",
    "$6$",
    "{SHA}",
    "{SSHA}",
    "{PLAIN}",
)


def parse_htpasswd(text: bytes) -> list[tuple[str, str]]:
    """The (user, hash) entries of an htpasswd file, as nginx reads one: a line is
    `user:hash` (the hash ends at the next ":", so `user:hash:comment` works), "#" starts a
    comment line, CR LF and LF both end a line; the first line of a user wins. Lines that are
    not UTF-8, or whose user or hash holds control characters, are left out (they could never
    match a request nginx would accept)."""
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in text.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line or line.startswith(b"#") or b":" not in line:
            continue
        user_raw, _, rest = line.partition(b":")
        hashed_raw = rest.partition(b":")[0]
        try:
            user = user_raw.decode()
            hashed = hashed_raw.decode("ascii")
        except UnicodeDecodeError:
            continue
        if not user or not valid_user(user) or not valid_hash(hashed) or user in seen:
            continue
        seen.add(user)
        entries.append((user, hashed))
    return entries


def valid_user(user: str) -> bool:
    """A user name that can be sent in a Basic credential: no ":" and no control character."""
    return ":" not in user and all(ord(c) >= 0x20 and ord(c) != 0x7F for c in user)


def valid_hash(hashed: str) -> bool:
    """Visible ASCII without ":" ("" is allowed: it never matches, as nginx's 401)."""
    return all(0x21 <= ord(c) <= 0x7E and c != ":" for c in hashed)


def known_scheme(hashed: str) -> bool:
    """Whether `hashed` has a form verify() can ever match."""
    if hashed.startswith(SCHEME_PREFIXES):
        return True
    return len(hashed) == 13 and all(ord(c) in _DES_ALPHABET for c in hashed)


def verify(password: bytes, hashed: str) -> bool:
    """Whether `password` (the bytes the client sent) matches `hashed`; a malformed hash is a
    mismatch. Slow on purpose for bcrypt and SHA-crypt: callers cache (proxy/basicauth.py)."""
    try:
        return _verify(password, hashed)
    except (ValueError, TypeError):  # passlib's malformed-hash errors are ValueErrors
        return False


def _verify(password: bytes, hashed: str) -> bool:
    if hashed.startswith("{PLAIN}"):
        return hmac.compare_digest(password, hashed[7:].encode())
    if hashed.startswith("{SHA}"):
        digest = base64.b64encode(hashlib.sha1(password).digest()).decode()
        return hmac.compare_digest(digest, hashed[5:])
    if hashed.startswith("{SSHA}"):
        decoded = base64.b64decode(hashed[6:], validate=True)
        if len(decoded) <= 20:
            return False
        expected, salt = decoded[:20], decoded[20:]
        return hmac.compare_digest(hashlib.sha1(password + salt).digest(), expected)
    # crypt(3) and Apache's apr1 read a C string: the password ends at its first NUL byte.
    password = password.partition(b"\0")[0]
    encoded = hashed.encode("ascii")
    if encoded.startswith(_BCRYPT_PREFIXES):
        return bool(bcrypt.checkpw(password[:_BCRYPT_MAX], encoded))
    if hashed.startswith("$apr1$"):
        return bool(apr_md5_crypt.verify(password, hashed))
    if hashed.startswith("$1$"):
        return bool(md5_crypt.verify(password, hashed))
    if hashed.startswith("$5$"):
        return bool(sha256_crypt.verify(password, hashed))
    if hashed.startswith("$6$"):
        return bool(sha512_crypt.verify(password, hashed))
    if known_scheme(hashed):  # DES: only the first 8 bytes count, as crypt(3)
        return bool(des_crypt.verify(password[:8], hashed))
    return False
