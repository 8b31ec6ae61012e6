"""eUICC cryptography costs (uicc/euicc/crypto.py, pki.py, bpp_build.py), measured in one run:

- SCP03t unwrap of 1020-byte '86' segments (what the eUICC does per STORE DATA of a profile) against the floor of
  the same AES-CBC decryption and AES-CMAC done directly with the `cryptography` library, as a ratio;
- binding a 30 kB profile (build_bpp: ECKA, KDF, smdpSign, SCP03t) and making a test PKI against loading it
  (what every process after the first pays in ensure_pki), as a ratio.

Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.cmac import CMAC  # noqa: E402

from bipsim.uicc.euicc import asn1  # noqa: E402
from bipsim.uicc.euicc.bpp_build import build_bpp  # noqa: E402
from bipsim.uicc.euicc.crypto import Scp03t, SessionKeys, generate_otk, point_bytes  # noqa: E402
from bipsim.uicc.euicc.pki import ensure_pki, generate_pki  # noqa: E402

KEYS = SessionKeys(s_enc=bytes(range(16)), s_mac=bytes(range(16, 32)), initial_mcv=bytes(range(32, 48)))
ROUNDS = 5


def best(run: Callable[[], int], rounds: int = ROUNDS) -> float:
    """Seconds per item, the best of `rounds` timed runs (each returns how many items it did)."""
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        count = run()
        out.append((time.perf_counter() - start) / count)
    return min(out)


def main() -> None:
    data = bytes(range(256)) * 120  # 30 720 bytes: 31 segments
    segments = Scp03t(KEYS).wrap_segments(0x86, data)

    def unwrap_ours() -> int:
        card = Scp03t(KEYS)
        for s in segments:
            card.unwrap(s)
        return len(segments)

    def unwrap_floor() -> int:
        chain = KEYS.initial_mcv
        for counter, s in enumerate(segments, start=1):
            header, body, mac = s[:4], s[4:-8], s[-8:]
            cmac = CMAC(algorithms.AES(KEYS.s_mac))
            cmac.update(chain + header + body)
            chain = cmac.finalize()
            assert chain[:8] == mac
            ecb = Cipher(algorithms.AES(KEYS.s_enc), modes.ECB()).encryptor()
            icv = ecb.update(counter.to_bytes(16, "big")) + ecb.finalize()
            dec = Cipher(algorithms.AES(KEYS.s_enc), modes.CBC(icv)).decryptor()
            dec.update(body) + dec.finalize()
        return len(segments)

    ours, floor = best(unwrap_ours), best(unwrap_floor)

    asn1.rsp()  # compiled once per process, not part of a binding
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        counter = iter(range(10_000))
        generate = best(lambda: (generate_pki(root / f"g{next(counter)}"), 1)[1])
        ensure_pki(root / "e")
        load = best(lambda: (ensure_pki(root / "e"), 1)[1])
        pki = ensure_pki(root / "e")
        euicc_otpk = point_bytes(generate_otk().public_key())
        metadata = {"iccid": bytes(10), "serviceProviderName": "bench", "profileName": "bench"}

        def bind() -> int:
            build_bpp(
                pki=pki,
                transaction_id=bytes(16),
                euicc_otpk=euicc_otpk,
                eid=pki.eid,
                metadata=metadata,
                upp=data,
            )
            return 1

        binding = best(bind)

    print(
        json.dumps(
            {
                "scp03t_unwrap_us_per_segment": round(ours * 1e6, 1),
                "floor_us_per_segment": round(floor * 1e6, 1),
                "unwrap_over_floor": round(ours / floor, 2),
                "unwrap_mb_per_s": round(1007 / ours / 1e6, 2),
                "build_bpp_30k_ms": round(binding * 1e3, 2),
                "pki_generate_ms": round(generate * 1e3, 2),
                "pki_load_ms": round(load * 1e3, 2),
                "generate_over_load": round(generate / load, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
