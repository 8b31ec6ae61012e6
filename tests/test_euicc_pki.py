"""The SGP.22 test PKI (uicc/euicc/pki.py): what the certificates carry (SGP.22 4.5.2), chain checks and their
refusals, first use that is safe when two makers race, per-EID eUICC certificates, and a TLS handshake between the
SM-DP+'s server context and an LPA's client context over memory BIOs."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bipsim.uicc.euicc import crypto, pki
from bipsim.uicc.euicc.crypto import CryptoError
from bipsim.uicc.euicc.pki import (
    DEFAULT_EID,
    Pki,
    cert_der,
    cert_eid,
    cert_public_key,
    cert_smdp_oid,
    client_ssl_context,
    default_pki_dir,
    eid_check_digits_ok,
    eid_with_check_digits,
    ensure_pki,
    generate_pki,
    has_policy,
    load_cert_der,
    load_pki,
    pkid,
    server_ssl_context,
    verify_chain,
    verify_path,
)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return generate_pki(tmp_path_factory.mktemp("pki") / "p")


def test_certificates_carry_what_sgp22_names(made: Pki) -> None:
    assert made.eid == DEFAULT_EID and eid_check_digits_ok(made.eid)
    assert cert_eid(made.euicc_cert) == DEFAULT_EID
    assert (
        made.ci_pkid
        == pkid(made.ci_cert)
        == x509.SubjectKeyIdentifier.from_public_key(made.ci_key.public_key()).digest
    )
    assert made.ci_cert.subject == made.ci_cert.issuer
    roles = {
        "ci_cert": pki.ROLE_CI,
        "eum_cert": pki.ROLE_EUM,
        "euicc_cert": pki.ROLE_EUICC,
        "dpauth_cert": pki.ROLE_DP_AUTH,
        "dppb_cert": pki.ROLE_DP_PB,
    }
    for attr, role in roles.items():
        cert: x509.Certificate = getattr(made, attr)
        assert has_policy(cert, role), attr
        assert isinstance(cert_public_key(cert).curve, ec.SECP256R1)
    assert has_policy(made.dpauth_cert, pki.ROLE_DP_TLS) and not has_policy(made.dppb_cert, pki.ROLE_DP_TLS)
    ku = made.euicc_cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert made.eum_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert cert_smdp_oid(made.dpauth_cert) == cert_smdp_oid(made.dppb_cert) == pki.SMDP_OID
    assert cert_smdp_oid(made.euicc_cert) is None
    san = made.dpauth_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    aki = made.euicc_cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == pkid(made.eum_cert)


def test_files_keys_private_and_load_gives_the_same(made: Pki) -> None:
    for name in pki.NAMES:
        mode = stat.S_IMODE((made.directory / f"{name}.key").stat().st_mode)
        assert mode == 0o600, name
    again = load_pki(made.directory)
    assert cert_der(again.ci_cert) == cert_der(made.ci_cert)
    assert cert_der(again.euicc_cert) == cert_der(made.euicc_cert)
    assert again.dppb_key.private_numbers() == made.dppb_key.private_numbers()
    assert load_cert_der(cert_der(made.dppb_cert)) == made.dppb_cert
    # the keys sign what the certificates verify
    sig = crypto.sign_plain(again.euicc_key, b"euiccSigned1")
    crypto.verify_plain(cert_public_key(made.euicc_cert), sig, b"euiccSigned1")


def test_chains_verify_and_wrong_ones_are_refused(made: Pki) -> None:
    verify_path([made.euicc_cert, made.eum_cert], made.ci_cert)
    verify_path([made.dpauth_cert], made.ci_cert)
    verify_chain(made.dppb_cert, made.ci_cert)
    with pytest.raises(CryptoError, match="issuer"):
        verify_chain(made.euicc_cert, made.ci_cert)  # skips the EUM
    key = ec.generate_private_key(ec.SECP256R1())
    issued_by_leaf = pki._issue(
        pki._name("x"), key, (made.dpauth_cert, made.dpauth_key), roles=[pki.ROLE_DP_PB]
    )
    with pytest.raises(CryptoError, match="not a CA"):
        verify_chain(issued_by_leaf, made.dpauth_cert)
    with pytest.raises(CryptoError, match="validity"):
        verify_chain(made.dppb_cert, made.ci_cert, now=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(CryptoError, match="empty"):
        verify_path([], made.ci_cert)
    other = generate_pki(made.directory.parent / "other")
    with pytest.raises(CryptoError):  # same names, another CI key: the key identifiers or signature differ
        verify_path([made.dpauth_cert], other.ci_cert)
    with pytest.raises(CryptoError, match="certificate"):
        load_cert_der(cert_der(made.ci_cert)[:-1])


def test_a_tampered_signature_is_refused(made: Pki) -> None:
    der = bytearray(cert_der(made.dppb_cert))
    der[-3] ^= 0x01  # inside the signature value at the end of the certificate
    with pytest.raises(CryptoError, match="signature"):
        verify_chain(load_cert_der(bytes(der)), made.ci_cert)


def test_a_certificate_with_a_malformed_extension_is_a_crypto_error(made: Pki) -> None:
    """cryptography parses extensions only when asked: a peer's malformed one must still be a CryptoError."""
    der = bytearray(cert_der(made.dppb_cert))
    at = der.find(b"\x04\x16\x04\x14" + pkid(made.dppb_cert))  # the subject key identifier's OCTET STRING
    der[at + 2] = 0x05  # now a NULL of 20 bytes: not DER
    broken = load_cert_der(bytes(der))
    with pytest.raises(CryptoError, match="certificate"):
        verify_chain(broken, made.ci_cert)
    with pytest.raises(CryptoError, match="extensions"):
        pkid(broken)
    assert not has_policy(broken, pki.ROLE_DP_PB)
    assert cert_smdp_oid(broken) is None


def test_load_refuses_broken_directories(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match=r"pki\.json"):
        load_pki(tmp_path / "none")
    a = generate_pki(tmp_path / "a")
    b = generate_pki(tmp_path / "b")
    (a.directory / "dppb.key").write_bytes((b.directory / "dppb.key").read_bytes())
    with pytest.raises(CryptoError, match="does not belong"):
        load_pki(a.directory)
    (b.directory / "eum.pem").write_bytes((a.directory / "eum.pem").read_bytes())
    (b.directory / "eum.key").write_bytes((a.directory / "eum.key").read_bytes())
    with pytest.raises(CryptoError):  # b's eUICC certificate no longer chains to an EUM it knows
        load_pki(b.directory)
    (b.directory / "pki.json").write_text('{"format": 99, "eid": "1"}')
    with pytest.raises(CryptoError, match="format"):
        load_pki(b.directory)


def test_bad_eids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="check digits"):
        generate_pki(tmp_path / "x", eid=DEFAULT_EID[:-1] + "6")
    with pytest.raises(ValueError, match="30 digits"):
        eid_with_check_digits("8904")
    assert eid_with_check_digits(DEFAULT_EID[:30]) == DEFAULT_EID


def test_ensure_makes_once_then_loads(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "pki"
    first = ensure_pki(target)
    second = ensure_pki(target)
    assert cert_der(first.ci_cert) == cert_der(second.ci_cert)
    assert sorted(p.name for p in target.parent.iterdir()) == ["pki"]  # no temporary directory left


def test_ensure_into_an_existing_empty_directory(tmp_path: Path) -> None:
    made = ensure_pki(tmp_path)  # pytest's tmp_path exists and is empty: the rename replaces it
    assert (tmp_path / "pki.json").is_file() and made.directory == tmp_path


def test_ensure_refuses_a_directory_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CryptoError, match="no pki.json"):
        ensure_pki(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}-")] == []


def test_two_makers_racing_end_with_one_pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first maker is overtaken while it generates: another ensure_pki publishes first. The first must drop
    its own PKI and return the winner's."""
    target = tmp_path / "pki"
    real_generate = pki.generate_pki
    winner: list[Pki] = []

    def overtaken(directory: Path, *, eid: str = DEFAULT_EID) -> Pki:
        if not winner:
            monkeypatch.setattr(pki, "generate_pki", real_generate)
            winner.append(ensure_pki(target))  # the other process, finishing first
        return real_generate(directory, eid=eid)

    monkeypatch.setattr(pki, "generate_pki", overtaken)
    loser = ensure_pki(target)
    assert winner and cert_der(loser.ci_cert) == cert_der(winner[0].ci_cert)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pki"]


def test_ensure_with_another_eid_issues_its_euicc_certificate_once(tmp_path: Path) -> None:
    base = ensure_pki(tmp_path / "p")
    eid = eid_with_check_digits("890490321234512345123456789013")
    card = ensure_pki(tmp_path / "p", eid=eid)
    assert card.eid == eid and cert_eid(card.euicc_cert) == eid
    assert cert_der(card.ci_cert) == cert_der(base.ci_cert) and card.euicc_cert != base.euicc_cert
    verify_path([card.euicc_cert, card.eum_cert], card.ci_cert)
    assert ensure_pki(tmp_path / "p", eid=eid).euicc_cert == card.euicc_cert
    assert load_pki(tmp_path / "p").eid == DEFAULT_EID
    with pytest.raises(ValueError):
        ensure_pki(tmp_path / "p", eid="1" * 32)


def test_default_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BIPSIM_PKI", str(tmp_path / "mine"))
    assert default_pki_dir() == tmp_path / "mine"
    monkeypatch.delenv("BIPSIM_PKI")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_pki_dir() == tmp_path / "xdg" / "bipsim" / "pki"


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> ssl.SSLObject:
    """A TLS handshake over memory BIOs (no sockets); returns the client's side, or raises ssl.SSLError."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return c
    raise AssertionError("handshake did not finish")


def test_tls_server_context_is_trusted_by_the_ci_only(made: Pki, tmp_path: Path) -> None:
    server = server_ssl_context(made)
    for host in ("localhost", "127.0.0.1"):
        c = _handshake(server, client_ssl_context(made), host)
        peer = x509.load_der_x509_certificate(c.getpeercert(binary_form=True) or b"")
        assert peer == made.dpauth_cert
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client_ssl_context(made), "smdp.example.com")
    stranger = generate_pki(tmp_path / "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client_ssl_context(stranger), "localhost")


@pytest.mark.needs("openssl")
def test_openssl_verifies_the_chains_strictly(made: Pki, tmp_path: Path) -> None:
    """An independent X.509 path validation (OpenSSL's, with RFC 5280's strict checks) accepts each chain, the
    DPauth certificate as a TLS server for localhost and 127.0.0.1, and refuses a chain to the wrong anchor."""
    import subprocess

    d = made.directory

    def verify(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["openssl", "verify", "-x509_strict", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    ci = str(d / "ci.pem")
    for args in (
        ["-CAfile", ci, "-untrusted", str(d / "eum.pem"), str(d / "euicc.pem")],
        ["-CAfile", ci, "-purpose", "sslserver", "-verify_hostname", "localhost", str(d / "dpauth.pem")],
        ["-CAfile", ci, "-purpose", "sslserver", "-verify_ip", "127.0.0.1", str(d / "dpauth.pem")],
        ["-CAfile", ci, str(d / "dppb.pem")],
    ):
        done = verify(*args)
        assert done.returncode == 0 and ": OK" in done.stdout, (args, done.stdout, done.stderr)
    wrong = verify("-CAfile", str(d / "eum.pem"), str(d / "dppb.pem"))
    assert wrong.returncode != 0
    other = generate_pki(tmp_path / "other")
    assert verify("-CAfile", str(other.ci_cert_file), str(d / "dppb.pem")).returncode != 0
