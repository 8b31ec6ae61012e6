"""The test PKI of remote SIM provisioning, as GSMA SGP.22 section 4.5 lays it out, made by the project itself.

A certificate issuer (CI, the self-signed root every party trusts) signs the eUICC manufacturer (EUM) and the
SM-DP+'s two certificates: DPauth (signs serverSigned1, SGP.22 5.6.1) and DPpb (binds the profile package:
smdpSigned2, InitialiseSecureChannel, SGP.22 5.6.3/5.5.1). The EUM signs the eUICC certificate, whose subject
serialNumber is the EID (SGP.22 4.5.2). All keys are ECDSA on NIST P-256. The extensions are those of SGP.22
4.5.2 that cost nothing here: subject and authority key identifiers (the CI's subject key identifier is the
"CI PKID" of euiccCiPKIdListForVerification/Signing), key usage, basic constraints for the two CAs, and the
certificate policies id-rspRole-* (2.23.146.1.2.1.x); the SM-DP+ certificates name the SM-DP+ by a registeredID
in subjectAltName. In this simulator DPauth is also the SM-DP+'s TLS server certificate (CERT.DP.TLS of section
4.5.2: id-rspRole-dp-tls, serverAuth, localhost and 127.0.0.1), so one file serves ES9+ over HTTPS.

The files are PEM in one directory (`ci.pem`, `ci.key`, `eum.*`, `euicc.*`, `dpauth.*`, `dppb.*`, and `pki.json`
written last); `ensure_pki` makes it once per user (or per $BIPSIM_PKI) and is safe when processes race: it builds
the directory under a temporary name and renames it into place. A card with another EID gets its own eUICC
certificate from the same EUM, in `euicc-<EID>/`. See docs/protocols.md, "eUICC and the cloud backup".
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import json
import os
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bipsim.uicc.euicc.crypto import CryptoError

__all__ = [
    "DEFAULT_EID",
    "ROLE_CI",
    "ROLE_DP_AUTH",
    "ROLE_DP_PB",
    "ROLE_DP_TLS",
    "ROLE_EUICC",
    "ROLE_EUM",
    "SMDP_OID",
    "Pki",
    "cert_der",
    "cert_eid",
    "cert_public_key",
    "cert_smdp_oid",
    "client_ssl_context",
    "default_pki_dir",
    "eid_check_digits_ok",
    "eid_with_check_digits",
    "ensure_pki",
    "generate_pki",
    "has_policy",
    "load_cert_der",
    "load_pki",
    "pkid",
    "server_ssl_context",
    "verify_chain",
    "verify_path",
]

# SGP.29's example EID (its check digits are right); the `euicc` card's default
DEFAULT_EID = "89049032123451234512345678901235"
# the SM-DP+'s OID in its certificates' subjectAltName registeredID; 2.999 is the ITU-T/ISO arc for examples
SMDP_OID = "2.999.10"
FORMAT = 1

# SGP.22 4.5.2: id-rspRole OBJECT IDENTIFIER ::= {2 23 146 1 2 1}
ROLE_CI = x509.ObjectIdentifier("2.23.146.1.2.1.0")
ROLE_EUICC = x509.ObjectIdentifier("2.23.146.1.2.1.1")
ROLE_EUM = x509.ObjectIdentifier("2.23.146.1.2.1.2")
ROLE_DP_TLS = x509.ObjectIdentifier("2.23.146.1.2.1.3")
ROLE_DP_AUTH = x509.ObjectIdentifier("2.23.146.1.2.1.4")
ROLE_DP_PB = x509.ObjectIdentifier("2.23.146.1.2.1.5")

NAMES = ("ci", "eum", "euicc", "dpauth", "dppb")
# long enough that a cached PKI never expires under a test run; the notBefore a day back absorbs clock skew
VALIDITY = dt.timedelta(days=365 * 30)


@dataclass(frozen=True)
class Pki:
    """The certificates and private keys of one test PKI, and where its files are."""

    directory: Path
    eid: str
    ci_cert: x509.Certificate
    ci_key: ec.EllipticCurvePrivateKey
    eum_cert: x509.Certificate
    eum_key: ec.EllipticCurvePrivateKey
    euicc_cert: x509.Certificate
    euicc_key: ec.EllipticCurvePrivateKey
    dpauth_cert: x509.Certificate
    dpauth_key: ec.EllipticCurvePrivateKey
    dppb_cert: x509.Certificate
    dppb_key: ec.EllipticCurvePrivateKey
    ci_pkid: bytes
    smdp_oid: str = SMDP_OID

    @property
    def ci_cert_file(self) -> Path:
        """The CI certificate (PEM): what a TLS client of the SM-DP+ trusts."""
        return self.directory / "ci.pem"

    @property
    def tls_cert_file(self) -> Path:
        """The SM-DP+'s TLS server certificate (PEM): DPauth."""
        return self.directory / "dpauth.pem"

    @property
    def tls_key_file(self) -> Path:
        """The private key of `tls_cert_file` (PEM, PKCS#8)."""
        return self.directory / "dpauth.key"


# --- reading certificates --------------------------------------------------------------------------------------


def cert_der(cert: x509.Certificate) -> bytes:
    """The DER of a certificate (what SGP.22's Certificate fields carry)."""
    return cert.public_bytes(serialization.Encoding.DER)


def load_cert_der(data: bytes) -> x509.Certificate:
    """A certificate from its DER; CryptoError when the bytes are not one."""
    try:
        return x509.load_der_x509_certificate(data)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"certificate: {exc}") from None


def cert_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    """The certificate's P-256 public key; CryptoError for any other kind of key."""
    try:
        key = cert.public_key()
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"certificate public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CryptoError("certificate public key is not on NIST P-256")
    return key


def pkid(cert: x509.Certificate) -> bytes:
    """The certificate's subject key identifier (for the CI: its PKID in euiccCiPKIdList*); CryptoError when it
    has none."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        raise CryptoError("certificate has no subject key identifier") from None
    except ValueError as exc:  # cryptography parses extensions when first asked: a peer's may be malformed
        raise CryptoError(f"certificate extensions: {exc}") from None


def cert_eid(cert: x509.Certificate) -> str | None:
    """The EID in an eUICC certificate's subject serialNumber (SGP.22 4.5.2), None when absent."""
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    except ValueError:
        return None
    return str(attrs[0].value) if attrs else None


def cert_smdp_oid(cert: x509.Certificate) -> str | None:
    """The SM-DP+ OID (subjectAltName registeredID) of an SM-DP+ certificate, None when absent or unreadable."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    ids = san.get_values_for_type(x509.RegisteredID)
    return ids[0].dotted_string if ids else None


def has_policy(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    """Whether the certificate policies name `oid` (an id-rspRole-* role); False when they are absent or
    unreadable."""
    try:
        policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return any(p.policy_identifier == oid for p in policies)


def verify_chain(cert: x509.Certificate, issuer: x509.Certificate, *, now: dt.datetime | None = None) -> None:
    """Checks that `issuer` issued `cert`: names, the issuer being a CA allowed to sign certificates, the
    authority/subject key identifiers, the signature, and both validity periods. CryptoError says what failed,
    also for a certificate whose names or extensions do not parse."""
    try:
        _verify_chain(cert, issuer, now or dt.datetime.now(dt.UTC))
    except CryptoError:
        raise
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(f"certificate: {exc}") from None


def _verify_chain(cert: x509.Certificate, issuer: x509.Certificate, when: dt.datetime) -> None:
    if cert.issuer != issuer.subject:
        raise CryptoError(
            f"certificate issuer {cert.issuer.rfc4514_string()} is not {issuer.subject.rfc4514_string()}"
        )
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CryptoError("issuer is not a CA (no basic constraints)") from None
    if not bc.ca:
        raise CryptoError("issuer is not a CA")
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise CryptoError("issuer's key usage does not allow signing certificates")
    except x509.ExtensionNotFound:
        pass
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    if aki is not None and aki != pkid(issuer):
        raise CryptoError("authority key identifier does not match the issuer's subject key identifier")
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CryptoError(f"certificate signature does not verify: {exc or type(exc).__name__}") from None
    for c in (cert, issuer):
        if not c.not_valid_before_utc <= when <= c.not_valid_after_utc:
            raise CryptoError(f"certificate {c.subject.rfc4514_string()} is outside its validity period")


def verify_path(
    certs: Sequence[x509.Certificate], ci: x509.Certificate, *, now: dt.datetime | None = None
) -> None:
    """Checks a path from a leaf to the CI: certs[0] is the leaf, each next one its issuer, the CI issues the
    last (eUICC, EUM -> CI; DPauth -> CI). CryptoError says which link failed."""
    if not certs:
        raise CryptoError("empty certificate path")
    chain = [*certs, ci]
    for child, parent in zip(chain, chain[1:], strict=False):
        verify_chain(child, parent, now=now)


# --- making one -----------------------------------------------------------------------------------------------


def eid_check_digits_ok(eid: str) -> bool:
    """Whether an EID is 32 decimal digits whose last two are its check digits (SGP.29: the number mod 97 is 1)."""
    return len(eid) == 32 and eid.isdigit() and int(eid) % 97 == 1


def eid_with_check_digits(first30: str) -> str:
    """The EID of 30 leading digits with its two SGP.29 check digits appended (ISO 7064 mod 97-10)."""
    if len(first30) != 30 or not first30.isdigit():
        raise ValueError(f"EID prefix {first30!r}: not 30 digits")
    return f"{first30}{98 - int(first30 + '00') % 97:02d}"


def _name(cn: str, *, serial: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bipsim test PKI"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ]
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def _key_usage(*, sign: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    roles: Sequence[x509.ObjectIdentifier],
    ca_path_length: int | None | bool = False,
    san: Sequence[x509.GeneralName] = (),
    server_auth: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    issuer_name = subject if issuer is None else issuer[0].subject
    signing_key = key if issuer is None else issuer[1]
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(
                key_identifier=ski.digest if issuer is None else pkid(issuer[0]),
                authority_cert_issuer=None,
                authority_cert_serial_number=None,
            ),
            critical=False,
        )
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(r, None) for r in roles]), critical=True
        )
    )
    is_ca = ca_path_length is not False
    if is_ca:
        path_length = None if ca_path_length is None or ca_path_length is True else int(ca_path_length)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
        builder = builder.add_extension(_key_usage(cert_sign=True), critical=True)
    else:
        builder = builder.add_extension(_key_usage(sign=True), critical=True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if server_auth:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA256())


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _save(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    _write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(directory / f"{name}.key", pem, secret=True)


def _check_eid(eid: str) -> None:
    if not eid_check_digits_ok(eid):
        raise ValueError(f"EID {eid!r}: not 32 digits with SGP.29 check digits (the number mod 97 must be 1)")


def _issue_euicc(
    eid: str, eum: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(_name("bipsim test eUICC", serial=eid), key, eum, roles=[ROLE_EUICC])
    return cert, key


def generate_pki(directory: Path, *, eid: str = DEFAULT_EID) -> Pki:
    """Makes a new PKI in `directory` (created when missing; files of an older one are overwritten) and returns
    it. ValueError for an EID that is not 32 digits with its check digits."""
    _check_eid(eid)
    directory.mkdir(parents=True, exist_ok=True)
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in NAMES if name != "euicc"}
    ci = _issue(_name("bipsim test CI"), keys["ci"], None, roles=[ROLE_CI], ca_path_length=None)
    eum = _issue(_name("bipsim test EUM"), keys["eum"], (ci, keys["ci"]), roles=[ROLE_EUM], ca_path_length=0)
    euicc, euicc_key = _issue_euicc(eid, (eum, keys["eum"]))
    smdp_id = x509.RegisteredID(x509.ObjectIdentifier(SMDP_OID))
    dpauth = _issue(
        _name("bipsim SM-DP+ auth"),
        keys["dpauth"],
        (ci, keys["ci"]),
        roles=[ROLE_DP_AUTH, ROLE_DP_TLS],
        san=[smdp_id, x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        server_auth=True,
    )
    dppb = _issue(
        _name("bipsim SM-DP+ pb"), keys["dppb"], (ci, keys["ci"]), roles=[ROLE_DP_PB], san=[smdp_id]
    )
    certs = {"ci": ci, "eum": eum, "euicc": euicc, "dpauth": dpauth, "dppb": dppb}
    keys["euicc"] = euicc_key
    for name in NAMES:
        _save(directory, name, certs[name], keys[name])
    # written last: a directory with pki.json is complete
    _write(directory / "pki.json", json.dumps({"format": FORMAT, "eid": eid, "smdp_oid": SMDP_OID}).encode())
    return _make(directory, eid, certs, keys)


def _make(
    directory: Path, eid: str, certs: dict[str, x509.Certificate], keys: dict[str, ec.EllipticCurvePrivateKey]
) -> Pki:
    return Pki(
        directory=directory,
        eid=eid,
        ci_cert=certs["ci"],
        ci_key=keys["ci"],
        eum_cert=certs["eum"],
        eum_key=keys["eum"],
        euicc_cert=certs["euicc"],
        euicc_key=keys["euicc"],
        dpauth_cert=certs["dpauth"],
        dpauth_key=keys["dpauth"],
        dppb_cert=certs["dppb"],
        dppb_key=keys["dppb"],
        ci_pkid=pkid(certs["ci"]),
    )


def _read_pair(directory: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / f"{name}.key").read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CryptoError(f"PKI {directory}: {name}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CryptoError(f"PKI {directory}: {name}.key is not a P-256 key")
    if cert_public_key(cert).public_numbers() != key.public_key().public_numbers():
        raise CryptoError(f"PKI {directory}: {name}.key does not belong to {name}.pem")
    return cert, key


def load_pki(directory: Path, *, eid: str | None = None) -> Pki:
    """The PKI in `directory`, its chains checked; with `eid`, the eUICC certificate of that EID (the main one or
    `euicc-<EID>/`). CryptoError when the directory does not hold a complete, consistent PKI."""
    try:
        meta = json.loads((directory / "pki.json").read_text())
        main_eid = str(meta["eid"])
        if meta.get("format") != FORMAT:
            raise CryptoError(f"PKI {directory}: format {meta.get('format')!r}, this bipsim reads {FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, CryptoError):
            raise
        raise CryptoError(f"PKI {directory}: no readable pki.json ({exc})") from None
    pairs = {name: _read_pair(directory, name) for name in NAMES}
    want = eid or main_eid
    if want != main_eid:
        pairs["euicc"] = _read_pair(directory / f"euicc-{want}", "euicc")
    certs = {name: pair[0] for name, pair in pairs.items()}
    keys = {name: pair[1] for name, pair in pairs.items()}
    if cert_eid(certs["euicc"]) != want:
        raise CryptoError(f"PKI {directory}: the eUICC certificate is not for EID {want}")
    verify_path([certs["euicc"], certs["eum"]], certs["ci"])
    verify_path([certs["dpauth"]], certs["ci"])
    verify_path([certs["dppb"]], certs["ci"])
    return _make(directory, want, certs, keys)


def default_pki_dir() -> Path:
    """Where `ensure_pki` keeps the per-user PKI: $BIPSIM_PKI, else $XDG_CACHE_HOME/bipsim/pki, else
    ~/.cache/bipsim/pki."""
    env = os.environ.get("BIPSIM_PKI")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bipsim" / "pki"


def _publish(tmp: Path, target: Path) -> None:
    """Renames the finished `tmp` directory to `target`; when another process was first, drops ours."""
    try:
        os.rename(tmp, target)  # atomic; replaces an empty directory, fails on a full one
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise CryptoError(f"PKI {target}: {exc}") from None


def ensure_pki(directory: Path | None = None, *, eid: str | None = None) -> Pki:
    """The PKI in `directory` (default `default_pki_dir()`), made on first use. Two processes that race both end
    with the same PKI: each builds under a temporary name beside it and renames it into place; the loser drops its
    own and loads the winner's. With `eid` other than the PKI's own, that EID's eUICC certificate is issued by the
    same EUM on first use (in `euicc-<EID>/`, the same way)."""
    target = directory if directory is not None else default_pki_dir()
    if not (target / "pki.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        generate_pki(tmp, eid=eid or DEFAULT_EID)
        _publish(tmp, target)
        if not (target / "pki.json").is_file():
            raise CryptoError(
                f"PKI {target}: a directory with other files and no pki.json; name a new or empty one"
            )
    pki = load_pki(target)
    if eid is None or eid == pki.eid:
        return pki
    _check_eid(eid)
    sub = target / f"euicc-{eid}"
    if not (sub / "euicc.key").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".euicc-{eid}-", dir=target))
        _save(tmp, "euicc", *_issue_euicc(eid, (pki.eum_cert, pki.eum_key)))
        _publish(tmp, sub)
    return load_pki(target, eid=eid)


# --- TLS for ES9+ ---------------------------------------------------------------------------------------------


def server_ssl_context(pki: Pki) -> ssl.SSLContext:
    """A TLS server context with the SM-DP+'s certificate (DPauth, which also serves as CERT.DP.TLS here)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.tls_cert_file, pki.tls_key_file)
    return ctx


def client_ssl_context(pki: Pki) -> ssl.SSLContext:
    """A TLS client context that trusts only the CI and checks the server's name (as the LPA does, SGP.22 2.6)."""
    ctx = ssl.create_default_context(cafile=str(pki.ci_cert_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
