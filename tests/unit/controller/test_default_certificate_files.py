"""`portico serve --default-certificate-file/--default-certificate-key-file` (manifest mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.app import with_default_certificate
from controller.compiler import CompileResult
from controller.files import DEFAULT_CERTIFICATE_FILE_NAME, load_certificate_files
from controller.settings import Settings, SettingsError
from proxy.config import Snapshot, TLSCertificate
from tests.kube_factory import make_cert


def write_pair(tmp_path: Path, cert: bytes, key: bytes) -> tuple[Path, Path]:
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    return tmp_path / "tls.crt", tmp_path / "tls.key"


def test_valid_pair_loads(tmp_path: Path) -> None:
    cert, key = make_cert("default.example", key="ec")
    loaded = load_certificate_files(*write_pair(tmp_path, cert, key))
    assert isinstance(loaded, TLSCertificate)
    assert loaded.name == DEFAULT_CERTIFICATE_FILE_NAME
    assert loaded.hosts == ("default.example",)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("mismatch", "does not match"),
        ("expired", "expired"),
        ("garbage", "not a PEM certificate"),
        ("missing", "No such file"),
    ],
)
def test_bad_pair_names_the_reason(tmp_path: Path, case: str, expected: str) -> None:
    cert, key = make_cert("default.example", expired=case == "expired")
    if case == "mismatch":
        key = make_cert("other.example", key="ec", key_index=3)[1]
    if case == "garbage":
        cert = b"not a certificate"
    cert_file, key_file = write_pair(tmp_path, cert, key)
    if case == "missing":
        key_file = tmp_path / "absent.key"
    reason = load_certificate_files(cert_file, key_file)
    assert isinstance(reason, str)
    assert expected in reason and str(cert_file) in reason


async def test_every_snapshot_gets_the_default_certificate() -> None:
    certificate = TLSCertificate(DEFAULT_CERTIFICATE_FILE_NAME, "CERT", "KEY", ("d.example",))
    other = TLSCertificate("ns/a", "CERT", "KEY", ("a.example",))

    async def results() -> AsyncIterator[CompileResult]:
        for certs in ((), (other,)):
            yield CompileResult(Snapshot(certificates=certs), (), (), {})

    seen = [r.snapshot async for r in with_default_certificate(results(), certificate)]
    assert [s.default_certificate for s in seen] == [DEFAULT_CERTIFICATE_FILE_NAME] * 2
    assert [c.name for c in seen[1].certificates] == ["ns/a", DEFAULT_CERTIFICATE_FILE_NAME]


@pytest.mark.parametrize(
    "flags",
    [
        {"default_certificate_file": "/x.crt"},
        {
            "default_certificate_file": "/x.crt",
            "default_certificate_key_file": "/x.key",
            "default_certificate": "ns/secret",
        },
    ],
)
def test_flags_must_agree(flags: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_sources(flags, {})
