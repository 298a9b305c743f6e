"""Basic auth's Secret -> the BasicAuth policy step (users and htpasswd hashes).

ingress-nginx writes the Secret named by `auth-secret` into an htpasswd file nginx reads:
`auth-file` (the default) takes the `auth` key as the file; `auth-map` makes one line per key,
`key:value`. Here the same lines become a `config.BasicAuth` step with the users and hashes
(proxy/htpasswd.py parses them as nginx does). A Secret that is missing, or an auth-file Secret
without `auth`, cannot be read: the routes are locked (503), never served open, as
ingress-nginx denies such a location. A Secret that reads but holds no user whose hash Portico
can check gives a step under which every request is answered 401 (ingress-nginx's e2e "should
return status code 401 when authentication is configured with invalid content"), with a problem
saying so.
"""

from __future__ import annotations

from controller.objects import SECRET_DATA_KEYS, Secret
from proxy.config import BasicAuth
from proxy.htpasswd import known_scheme, parse_htpasswd, valid_hash, valid_user


def basic_auth_step(
    secret: Secret | None, ref: str, secret_type: str, realm: str
) -> tuple[BasicAuth | None, str | None]:
    """(the step, a warning) for the Secret `ref` ("namespace/name"), or (None, why the routes
    are locked)."""
    if secret is None:
        return None, f'secret "{ref}" not found'
    if secret_type == "auth-map":
        entries = sorted(
            (user, value.decode("ascii", "replace"))
            for user, value in secret.data.items()
            if user not in SECRET_DATA_KEYS and valid_user(user)
        )
        entries = [(u, h) for u, h in entries if valid_hash(h)]
    else:
        text = secret.data.get("auth")
        if text is None:
            return None, f'secret "{ref}" has no key "auth" (auth-secret-type auth-file)'
        entries = parse_htpasswd(text)
    usable = [(u, h) for u, h in entries if known_scheme(h)]
    warning = None
    if not usable:
        warning = (
            f'secret "{ref}" holds no user with a password hash Portico can check (bcrypt, '
            "apr1, MD5-, SHA- or DES-crypt, {SHA}, {SSHA}, {PLAIN}); every request is answered 401"
        )
    step = BasicAuth(realm, tuple(u for u, _ in usable), tuple(h for _, h in usable))
    return step, warning
