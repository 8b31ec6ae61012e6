"""OTA server throughput and card TLS handshake cost, over loopback, in one process.

1. Admin sessions per second: 50 concurrent in-process cards (ota/loadgen.py: SimCard + GP registry + OTA agent)
   run the built-in campaign (RFM update, 1.5 kB RAM load, install, GET STATUS) against one OtaServer (sslpsk3 +
   ssl under trio). Ours: the cards' TLS is our sans-IO client (uicc/tls_psk_client.py). Baseline: the same cards
   with the TLS done by OpenSSL (the stdlib ssl module with sslpsk3 as the PSK client, trio.SSLStream), the agent
   speaking plain HTTP over it.
2. Handshake time: TLS_PSK_WITH_AES_128_CBC_SHA256 handshakes against the same server, one at a time, with our
   client and with OpenSSL's (stdlib ssl + sslpsk3).

Prints one JSON line with both figures, their baselines and ratios (ours / OpenSSL; above 1 is better for
sessions/s, below 1 is better for handshake ms).
"""

from __future__ import annotations

import json
import ssl
import statistics
import time

import trio

from bipsim.ota.admin import AdminServer
from bipsim.ota.campaign import Campaign
from bipsim.ota.loadgen import LoadCard, make_card, run_card
from bipsim.ota.server import CIPHERS, OtaServer, PskContext
from bipsim.uicc.tls_psk_client import TlsPskClient

CARDS = 50
SESSIONS = 200
HANDSHAKES = 200
IDENTITY = "bench-card"
PSK = bytes(range(16))


def openssl_client_context() -> ssl.SSLContext:
    context = PskContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.set_psk_client_callback(lambda hint: (IDENTITY, PSK))
    return context


async def run_card_openssl(load: LoadCard, port: int, context: ssl.SSLContext) -> None:
    """One admin session with OpenSSL doing the TLS (the agent in plain-HTTP mode inside it)."""
    agent = load.agent
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_side=False)
    async with stream:
        await stream.send_all(agent.connection_made())
        while not agent.done:
            data = await stream.receive_some(4096)
            if not data:
                break
            out = agent.data_received(bytes(data))
            if out:
                await stream.send_all(out)
        # leaving the block sends close_notify and closes TCP, as the card's terminal does after CLOSE CHANNEL


async def sessions_per_second(openssl: bool) -> float:
    admin = AdminServer(Campaign.load())
    server = OtaServer(admin, keys={IDENTITY: PSK})
    context = openssl_client_context()
    limiter = trio.CapacityLimiter(CARDS)
    finished = 0

    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)

        async def one(number: int) -> None:
            nonlocal finished
            async with limiter:
                card = make_card(f"89882110{number:011d}", identity=IDENTITY, psk=PSK, tls=not openssl)
                if openssl:
                    await run_card_openssl(card, port, context)
                else:
                    await run_card(card, "127.0.0.1", port)
                if card.agent.log.finished:
                    finished += 1

        start = time.perf_counter()
        async with trio.open_nursery() as cards:
            for number in range(SESSIONS):
                cards.start_soon(one, number)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    if finished != SESSIONS:
        raise SystemExit(f"only {finished} of {SESSIONS} sessions completed")
    return SESSIONS / elapsed


async def handshake_ms(openssl: bool) -> float:
    admin = AdminServer(Campaign.load())
    server = OtaServer(admin, keys={IDENTITY: PSK})
    context = openssl_client_context()
    times = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        for _ in range(HANDSHAKES):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            start = time.perf_counter()
            if openssl:
                tls = trio.SSLStream(tcp, context, server_side=False)
                await tls.do_handshake()
            else:
                client = TlsPskClient(IDENTITY.encode(), PSK, suites=(0x00AE,))
                await tcp.send_all(client.start())
                while not client.connected:
                    client.receive(await tcp.receive_some(4096))
                    out = client.data_to_send()
                    if out:
                        await tcp.send_all(out)
            times.append(time.perf_counter() - start)
            await trio.aclose_forcefully(tcp)
        nursery.cancel_scope.cancel()
    return statistics.median(times) * 1000


async def main() -> None:
    ours_rate = await sessions_per_second(openssl=False)
    base_rate = await sessions_per_second(openssl=True)
    ours_hs = await handshake_ms(openssl=False)
    base_hs = await handshake_ms(openssl=True)
    print(
        json.dumps(
            {
                "bench": "ota",
                "cards": CARDS,
                "sessions": SESSIONS,
                "sessions_per_s": round(ours_rate, 1),
                "sessions_per_s_openssl_client": round(base_rate, 1),
                "sessions_ratio": round(ours_rate / base_rate, 3),
                "handshake_ms": round(ours_hs, 3),
                "handshake_ms_openssl_client": round(base_hs, 3),
                "handshake_ratio": round(ours_hs / base_hs, 3),
            }
        )
    )


if __name__ == "__main__":
    trio.run(main)
