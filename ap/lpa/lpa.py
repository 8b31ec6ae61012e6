"""The LPA's flow with the cloud backup (docs/protocols.md, "The LPA on the AP"): the
invention's steps 000:201..203 and 000:401..404 over GSMA SGP.22's profile download (section 3.1.3).

Login check (the user interface policy) -> the EID by GetEID -> ES9+ initiateAuthentication, authenticateClient,
getBoundProfilePackage (with ES10b GetEUICCInfo1, GetEUICCChallenge, AuthenticateServer, PrepareDownload) -> the
package as records (ap/lpa/records.py) -> cloud upload -> LoadBoundProfilePackage -> on a failed install: fetch the
records from the cloud, check they are this flow's (EID, module, PPR), join them, install again (a package from the
cloud that the eUICC refuses ends the flow; an install of it cut off with no ProfileInstallationResult is fetched and
tried again, CLOUD_INSTALL_ATTEMPTS in all) -> on success: cloud delete, handleNotification with the
ProfileInstallationResult, RemoveNotificationFromList, EnableProfile and `AT+CIMI`.

The state machine (ap/lpa/state.py) is saved at every change, so the flow resumes where it stopped: a restart in
INSTALLING asks the eUICC (GetProfilesInfo) whether the profile arrived, and goes to the cloud when it did not; no
state after REQUESTING sends a request to the SM-DP+ again. The state file belongs to one activation code and one
EID (ap/lpa/state.py open_state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import trio

from bipsim.ap.lpa.es9_client import Es9Client, Es9Unreachable
from bipsim.ap.lpa.es10_client import (
    AtPort,
    Es10Client,
    Es10Error,
    ctx_params1,
    parse_installation_result,
    parse_metadata,
)
from bipsim.ap.lpa.records import (
    FIELDS,
    MODULE,
    SEPARATOR,
    RecordError,
    encode_records,
    join_records,
    ppr_from_ids,
)
from bipsim.ap.lpa.state import (
    LpaEvent,
    LpaMachine,
    LpaState,
    StateFileError,
    default_state_path,
    open_state,
)
from bipsim.ap.lpa.ui_policy import CLOSED_MESSAGE, UiKind, UiPolicy
from bipsim.ap.slot_lock import slot_lock
from bipsim.link.at_chat import AtTimeout
from bipsim.ota.cloud_store import CloudError
from bipsim.ota.es9_json import Es9Error, parse_activation_code
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

DEVICE_TAC = bytes.fromhex("35290611")  # the terminal's type allocation code in DeviceInfo (SGP.22 5.7.13)
# AT+CIMI reads after EnableProfile until the modem answers the enabled profile's IMSI, which the LPA reads from the
# card's EF_IMSI with AT+CRSM (27.007 8.18; TS 31.102 4.2.2): the CP reads EF_IMSI at each AT+CIMI, so the first
# read has it; a modem that caches the IMSI may take a while. Without an EF_IMSI answer, until the IMSI differs
# from the one before the switch (and not at all when this run switched nothing).
CIMI_ATTEMPTS = 20
CIMI_INTERVAL = 0.25
READ_EF_IMSI = 'AT+CRSM=176,28423,0,0,9,,"3F007FFF"'  # READ BINARY of EF_IMSI (6F07) in the USIM's ADF
# installs from the cloud's copy when they end with no ProfileInstallationResult (the card reset, the line went):
# the eUICC never judged the package, so it is fetched and sent again, this many times in all; an install the
# eUICC answered with an error is never retried (no loop)
CLOUD_INSTALL_ATTEMPTS = 3
S = LpaState
E = LpaEvent
# states whose next step talks to the eUICC the package was bound to (a resumed run checks its EID first)
EUICC_STATES = frozenset(
    {S.DOWNLOADED, S.UPLOADED, S.INSTALLING, S.FAILED, S.CLOUD_FETCH, S.PARSING, S.INSTALLED, S.CLOUD_DELETED}
)


class CloudPort(Protocol):
    """What the LPA needs of the cloud store's client (ota/cloud_store.py's CloudClient, or a test's fake)."""

    async def login(self, user: str, password: str) -> None: ...

    async def register(self, user: str, password: str) -> None: ...

    async def upload(self, records: list[str]) -> None: ...

    async def fetch(self, eid: str, module: str) -> list[str]: ...

    async def delete(self, eid: str, module: str) -> None: ...


@dataclass
class LpaOutcome:
    """How the flow ended this time: `state` the machine's, `ok` when the profile is installed (and enabled)."""

    state: LpaState
    ok: bool
    reason: str = ""
    iccid: str = ""
    imsi: str = ""


def describe_outcome(outcome: LpaOutcome) -> str:
    """One line for the user: the profile installed (ICCID, IMSI), or where the flow stands and why."""
    if outcome.ok:
        imsi = f", IMSI {outcome.imsi}" if outcome.imsi else ""
        return f"installed ICCID {outcome.iccid}{imsi}"
    reason = f": {outcome.reason}" if outcome.reason else ""
    return f"{outcome.state.value}{reason}"


class FlowStopped(Exception):
    """The flow cannot go on in this run (the state says where it stands)."""


class Lpa:
    """One profile download with the cloud backup. `run(port)` drives the flow over the modem's AT port until it
    ends or cannot go on in this modem session; call it again (a new session after a power cycle) to resume."""

    def __init__(
        self,
        *,
        activation_code: str,
        machine: LpaMachine,
        ui: UiPolicy,
        es9: Es9Client,
        cloud: CloudPort,
        cloud_account: tuple[str, str] | None = None,
        limit: int = 1024,
        tracer: Tracer = NULL_TRACER,
    ) -> None:
        self.code = parse_activation_code(activation_code)
        self.machine = machine
        self.ui = ui
        self.es9 = es9
        self.cloud = cloud
        self.cloud_account = cloud_account  # the terminal's saved account (the `logged-in` policy)
        self.limit = limit
        self.tracer = tracer
        self.logged_in = False
        self.fetches = 0  # cloud fetches in this process
        recorded = machine.record.activation_code
        if recorded and recorded != activation_code:
            # the file's package, EID and transaction are another download's (open_state says what to do)
            raise StateFileError(
                f"the LPA state holds the flow of activation code {recorded!r}, not of {activation_code!r}"
            )
        if not recorded:
            machine.note(activation_code=activation_code)

    # --- tracing --------------------------------------------------------------------------------------------------

    def _emit(
        self,
        kind: str,
        summary: str,
        fields: dict[str, Any],
        *,
        dst: Actor = Actor.AP,
        step: str | None = None,
        error: bool = False,
        data: bytes | None = None,
    ) -> None:
        self.tracer.emit(
            Actor.AP, dst, Layer.APP, summary, data, step=step, error=error, kind=kind, fields=fields
        )

    def _fire(self, event: LpaEvent, step: str | None = None, **facts: Any) -> None:
        before, after = self.machine.fire(event, **facts)
        self._emit(
            Kind.LPA_STATE,
            f"LPA {before.value} -> {after.value} ({event.value})",
            {
                "previous": before.value,
                "state": after.value,
                "event": event.value,
                "attempts": self.machine.record.attempts,
            },
            step=step,
        )

    def _cloud_event(self, op: str, *, step: str | None = None, error: str = "", **facts: Any) -> None:
        summary = f"cloud {op}" + (f" failed: {error}" if error else "")
        fields = {"op": op, **facts}
        if error:
            fields["reason"] = error
        self._emit(Kind.LPA_CLOUD, summary, fields, dst=Actor.CLOUD, step=step, error=bool(error))

    def _result(self, outcome: LpaOutcome) -> LpaOutcome:
        name = "installed" if outcome.ok else "stopped" if self.machine.finished else "pending"
        self._emit(
            Kind.LPA_RESULT,
            f"LPA: {name}" + (f" ({outcome.reason})" if outcome.reason else ""),
            {
                "outcome": name,
                "state": outcome.state.value,
                "iccid": outcome.iccid,
                "imsi": outcome.imsi,
                "reason": outcome.reason,
                "es9_requests": self.es9.requests,
                "cloud_fetches": self.fetches,
            },
            error=not outcome.ok,
        )
        return outcome

    # --- the flow -------------------------------------------------------------------------------------------------

    async def run(self, port: AtPort) -> LpaOutcome:
        """Drives the flow from the saved state as far as it goes; the outcome is also an `lpa.result` event."""
        es10 = Es10Client(port, tracer=self.tracer)
        record = self.machine.record
        install_due = False  # INSTALLING entered in this run: send the package (else ask whether it arrived)
        try:
            if record.eid and self.machine.state in EUICC_STATES:
                await self._same_euicc(es10)
            while True:
                state = self.machine.state
                if state is S.LOGIN_CHECK:
                    await self._login_check()
                elif state is S.REQUESTING:
                    await self._download(es10)
                elif state is S.DOWNLOADED:
                    await self._upload()
                elif state is S.UPLOADED:
                    self._fire(E.INSTALL, "000:202", attempts=record.attempts + 1)
                    install_due = True
                elif state is S.INSTALLING:
                    if install_due:
                        install_due = False
                        await self._install(es10)
                    else:  # a restart in INSTALLING: the power went while the segments went in
                        await self._installed_or_failed(es10, "the install was interrupted")
                elif state is S.FAILED:
                    if not record.from_cloud:
                        self._fire(E.FETCH, "000:203")
                    elif record.interrupted and record.cloud_installs < CLOUD_INSTALL_ATTEMPTS:
                        self._retry_from_cloud()
                    else:
                        # the cloud's package failed too: report it, never a loop of fetches
                        self._give_up_on_cloud()
                elif state is S.CLOUD_FETCH:
                    await self._fetch()
                elif state is S.PARSING:
                    install_due = self._parse()
                elif state is S.INSTALLED:
                    await self._delete()
                elif state is S.CLOUD_DELETED:
                    outcome = await self._finish(es10)
                    await self._close(es10)
                    return self._result(outcome)
                else:  # STOPPED
                    await self._close(es10)
                    return self._result(LpaOutcome(state, False, record.reason, record.iccid))
        except FlowStopped as exc:
            await self._close(es10)
            return self._result(LpaOutcome(self.machine.state, False, str(exc), record.iccid))
        # a session that ends under the flow (cancelled, the line gone) takes the channel with it: no +CCHC then

    async def _same_euicc(self, es10: Es10Client) -> None:
        """A flow resumed after its download goes on only with the eUICC it downloaded for: the package is bound to
        that EID (SGP.22 2.5.5), and the cloud's backup is filed under it."""
        record = self.machine.record
        try:
            eid = await es10.get_eid()
        except Es10Error as exc:
            raise FlowStopped(f"the eUICC does not answer: {exc}") from None
        if eid != record.eid:
            self._emit(
                Kind.LPA_RESULT,
                f"the eUICC is {eid}, the flow's EID is {record.eid}",
                {"outcome": "pending", "reason": "another eUICC", "eid": eid, "flow_eid": record.eid},
                error=True,
            )
            raise FlowStopped(
                f"the eUICC's EID is {eid}, but this flow downloaded for {record.eid}: insert that eUICC, or "
                "use another --lpa-state"
            )

    async def _close(self, es10: Es10Client) -> None:
        try:
            await es10.close()
        except Es10Error:
            pass  # the card or the modem forgot the channel already: nothing is left to close

    async def _login(self, user: str, password: str, page: str) -> None:
        try:
            await self.cloud.login(user, password)
        except CloudError as exc:
            self._cloud_event("login", error=str(exc), status=exc.status, user=user)
            raise
        self._cloud_event("login", status=200, user=user, page=page)
        self.logged_in = True

    async def _ensure_login(self) -> None:
        """A cloud session for the requests after the check (a restarted AP lost its session: log in again)."""
        if self.logged_in:
            return
        try:
            await self._login_pages()
        except CloudError as exc:
            raise FlowStopped(f"no cloud session: {exc}") from None

    async def _login_pages(self) -> bool:
        """The pages of the login check by the policy; False when the user closed the page."""
        ui = self.ui
        if ui.kind is UiKind.LOGGED_IN:
            if self.cloud_account is None:
                raise FlowStopped("logged-in needs the terminal's cloud account (USER:PASS@ in --lpa-cloud)")
            await self._login(*self.cloud_account, page="none")
            return True
        self._emit(Kind.LPA_UI, "the cloud's login page shown", {"page": "login", "action": "shown"})
        if ui.kind is UiKind.CLOSE:
            self._emit(Kind.LPA_UI, "the user closed the login page", {"page": "login", "action": "closed"})
            self._emit(
                Kind.LPA_UI,
                CLOSED_MESSAGE,
                {"page": "login", "action": "message", "message": CLOSED_MESSAGE},
            )
            return False
        self._emit(Kind.LPA_UI, "the user logs in", {"page": "login", "action": "login", "user": ui.user})
        try:
            await self._login(ui.user, ui.password, page="login")
            return True
        except CloudError as exc:
            # the website sends a user it does not know to its registration page (303 to /register)
            if not exc.location.startswith("/register") or ui.kind is not UiKind.REGISTER:
                raise
        self._emit(
            Kind.LPA_UI,
            "the cloud's registration page shown",
            {"page": "register", "action": "shown", "user": ui.user},
        )
        self._emit(
            Kind.LPA_UI, "the user registers", {"page": "register", "action": "register", "user": ui.user}
        )
        try:
            await self.cloud.register(ui.user, ui.password)  # the cloud logs a new user in at once
        except CloudError as exc:
            self._cloud_event("register", error=str(exc), status=exc.status, user=ui.user)
            raise
        self._cloud_event("register", status=200, user=ui.user)
        self.logged_in = True
        return True

    async def _login_check(self) -> None:
        try:
            logged_in = await self._login_pages()
        except CloudError as exc:
            # a refused login is a failed check: no ES9+ request (the document: no download without a login)
            self._fire(E.LOGIN_REFUSED, reason=f"the cloud refused the login: {exc}")
            return
        if not logged_in:
            self._fire(E.LOGIN_REFUSED, reason=CLOSED_MESSAGE)
            return
        self._fire(E.LOGGED_IN)

    async def _download(self, es10: Es10Client) -> None:
        """SGP.22 3.1.3: the common mutual authentication and the download, the EID read first (000:4012 uses
        it); DOWNLOADED with the package, or STOPPED with the reason."""
        code = self.code
        try:
            eid = await es10.get_eid()
            self.machine.note(eid=eid)
            info1 = await es10.get_euicc_info1()
            challenge = await es10.get_euicc_challenge()
        except Es10Error as exc:
            # nothing asked of the SM-DP+ yet: the eUICC is not reachable now, the next session tries again
            raise FlowStopped(f"the eUICC does not answer: {exc}") from None
        try:
            auth = await self.es9.initiate_authentication(
                euicc_challenge=challenge, euicc_info1=info1, smdp_address=code.smdp_address
            )
            transaction = auth["transactionId"]
            self.machine.note(transaction_id=transaction.hex().upper())
            ctx = ctx_params1(code.matching_id, DEVICE_TAC)
            server_response = await es10.authenticate_server(
                server_signed1=auth["serverSigned1"],
                server_signature1=auth["serverSignature1"],
                euicc_ci_pkid=auth["euiccCiPKIdToBeUsed"],
                server_certificate=auth["serverCertificate"],
                ctx_params1=ctx,
            )
            client = await self.es9.authenticate_client(
                transaction_id=transaction, authenticate_server_response=server_response
            )
            metadata = parse_metadata(client["profileMetadata"])
            iccid = metadata.iccid
            ppr = ppr_from_ids(metadata.ppr_ids)
            prepared = await es10.prepare_download(
                smdp_signed2=client["smdpSigned2"],
                smdp_signature2=client["smdpSignature2"],
                smdp_certificate=client["smdpCertificate"],
            )
            package = await self.es9.get_bound_profile_package(
                transaction_id=transaction, prepare_download_response=prepared
            )
        except (Es9Error, Es9Unreachable, Es10Error, RecordError, KeyError, AtTimeout) as exc:
            self._fire(E.DOWNLOAD_REFUSED, reason=f"download failed: {exc}")
            return
        self._fire(E.DOWNLOADED, "000:401", iccid=iccid, ppr=ppr, package=package)

    async def _upload(self) -> None:
        """Flow 400's 4011..4015: the records of the package, uploaded one a request."""
        record = self.machine.record
        await self._ensure_login()
        limit = await self._cloud_limit()
        protocol = SEPARATOR.join(f"{name}=" for name in FIELDS)
        self._emit(
            Kind.LPA_RECORDS,
            f"record protocol: {protocol} (limit {limit} bytes)",
            {"part": "protocol", "fields": list(FIELDS), "separator": SEPARATOR, "limit": limit},
            step="000:4011",
        )
        self._emit(
            Kind.LPA_RECORDS,
            f"terminal identity EID={record.eid}",
            {"part": "identity", "eid": record.eid},
            step="000:4012",
        )
        self._emit(
            Kind.LPA_RECORDS,
            f"management file module={MODULE}",
            {"part": "management", "module": MODULE},
            step="000:4013",
        )
        try:
            records = encode_records(eid=record.eid, ppr=record.ppr, package=record.package, limit=limit)
        except RecordError as exc:
            self._emit(
                Kind.LPA_RECORDS,
                f"cannot encapsulate: {exc}",
                {"part": "encapsulate", "error": str(exc)},
                error=True,
            )
            raise FlowStopped(f"the package cannot be put in records: {exc}") from None
        self._emit(
            Kind.LPA_RECORDS,
            f"{len(records)} records for {len(record.package)} bytes, PPR={record.ppr}",
            {
                "part": "encapsulate",
                "count": len(records),
                "length": len(record.package),
                "ppr": record.ppr,
                "eid": record.eid,
                "module": MODULE,
            },
            step="000:4014",
        )
        try:
            await self.cloud.upload(records)
        except CloudError as exc:
            self._cloud_event(
                "upload",
                step="000:4015",
                error=str(exc),
                status=exc.status,
                records=len(records),
            )
            # stays DOWNLOADED: the package is saved, the next run uploads it again before any install
            raise FlowStopped(f"the cloud upload failed: {exc}") from None
        self._cloud_event(
            "upload", step="000:4015", status=200, records=len(records), eid=record.eid, module=MODULE
        )
        self._fire(E.UPLOADED, "000:201", records=len(records))

    async def _cloud_limit(self) -> int:
        """The package bytes a record carries: --lpa-limit, or less when the cloud's session check says its
        single-upload maximum is smaller (ota/cloud_store.py CloudClient.logged_in), so no record is refused."""
        check = getattr(self.cloud, "logged_in", None)
        if check is None:
            return self.limit
        try:
            await check()
        except CloudError:
            return self.limit
        limit = getattr(self.cloud, "limit", None)
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < self.limit:
            return limit
        return self.limit

    async def _install(self, es10: Es10Client) -> None:
        package = self.machine.record.package
        try:
            result = await es10.load_bound_profile_package(package, step="000:402")
        except Es10Error as exc:
            await self._installed_or_failed(es10, f"the install broke off: {exc}")
            return
        try:
            value = parse_installation_result(result)
        except Es10Error as exc:
            self._fire(
                E.INSTALL_FAILED,
                reason=f"an unreadable ProfileInstallationResult: {exc}",
                package=b"",
                interrupted=False,
            )
            return
        if value.ok:
            self._fire(E.INSTALL_OK, result=result, package=b"", reason="", interrupted=False)
            return
        reason = (
            f"ProfileInstallationResult error: bppCommandId {value.bpp_command_id}, "
            f"errorReason {value.error_reason}"
        )
        self._fire(E.INSTALL_FAILED, reason=reason, package=b"", interrupted=False)

    async def _installed_or_failed(self, es10: Es10Client, why: str) -> None:
        """An install that ended with no ProfileInstallationResult: the eUICC's profile list says how it went."""
        record = self.machine.record
        es10.session = None  # the channel of the interrupted install is gone with the line or the card
        try:
            profiles = await es10.get_profiles_info()
        except Es10Error as exc:
            raise FlowStopped(f"{why}, and the eUICC cannot be asked: {exc}") from None
        if any(p.get("iccid") == record.iccid for p in profiles):
            self._fire(E.INSTALL_OK, package=b"", reason="", interrupted=False)
        else:
            self._fire(E.INSTALL_FAILED, reason=why, package=b"", interrupted=True)

    def _retry_from_cloud(self) -> None:
        """The install from the cloud's copy was cut off before the eUICC answered: fetch it and install again."""
        record = self.machine.record
        self._emit(
            Kind.LPA_RESULT,
            f"the install from the cloud was interrupted ({record.reason}): install {record.cloud_installs + 1} "
            f"of {CLOUD_INSTALL_ATTEMPTS} from the cloud",
            {
                "outcome": "retry",
                "state": record.state.value,
                "reason": record.reason,
                "attempt": record.cloud_installs + 1,
                "max": CLOUD_INSTALL_ATTEMPTS,
            },
            error=True,
        )
        self._fire(E.FETCH, "000:203")

    def _give_up_on_cloud(self) -> None:
        record = self.machine.record
        reason = record.reason
        if record.interrupted:
            reason = f"{reason} ({record.cloud_installs} installs from the cloud, none answered)"
        self._fire(E.GIVE_UP, reason=reason)

    async def _fetch(self) -> None:
        record = self.machine.record
        await self._ensure_login()
        self.fetches += 1
        try:
            texts = await self.cloud.fetch(record.eid, MODULE)
        except CloudError as exc:
            self._cloud_event(
                "fetch",
                step="000:403",
                error=str(exc),
                status=exc.status,
                eid=record.eid,
                module=MODULE,
            )
            self._fire(E.GIVE_UP, reason=f"the cloud has no backup: {exc}")
            return
        self._cloud_event(
            "fetch", step="000:403", status=200, records=len(texts), eid=record.eid, module=MODULE
        )
        self._fire(E.FETCHED, fetched=list(texts))

    def _parse(self) -> bool:
        record = self.machine.record
        try:
            # the backup must be this terminal's (EID), of the LPA's management file, with the profile's PPR
            package = join_records(record.fetched, eid=record.eid, module=MODULE, ppr=record.ppr)
        except RecordError as exc:
            self._emit(
                Kind.LPA_RECORDS,
                f"the cloud's records are bad: {exc}",
                {"part": "parse", "error": str(exc), "field": exc.field},
                step="000:404",
                error=True,
            )
            self._fire(E.GIVE_UP, reason=f"the cloud's records are bad: {exc}")
            return False
        self._emit(
            Kind.LPA_RECORDS,
            f"{len(record.fetched)} records parsed: {len(package)} bytes",
            {"part": "parse", "count": len(record.fetched), "length": len(package)},
            step="000:404",
        )
        self._fire(
            E.PARSED,
            package=package,
            from_cloud=True,
            fetched=[],
            attempts=record.attempts + 1,
            cloud_installs=record.cloud_installs + 1,
        )
        return True

    async def _delete(self) -> None:
        record = self.machine.record
        await self._ensure_login()
        try:
            await self.cloud.delete(record.eid, MODULE)
        except CloudError as exc:
            self._cloud_event("delete", step="000:203", error=str(exc), status=exc.status)
            raise FlowStopped(f"installed, but the cloud delete failed: {exc}") from None
        self._cloud_event("delete", step="000:203", status=200, eid=record.eid, module=MODULE)
        self._fire(E.CLOUD_DELETED)

    async def _finish(self, es10: Es10Client) -> LpaOutcome:
        """After the delete: the install notification to the SM-DP+ (then removed from the eUICC's list), the
        profile enabled, and the IMSI the modem reads now."""
        record = self.machine.record
        if not record.notified:
            if record.result:
                try:
                    await self.es9.handle_notification(record.result)
                    seq = parse_installation_result(record.result).seq_number
                    await es10.remove_notification_from_list(seq)
                except (Es9Error, Es9Unreachable, Es10Error) as exc:
                    # the notification is the SM-DP+'s bookkeeping: the profile is installed all the same
                    self._emit(
                        Kind.LPA_RESULT,
                        f"install notification not delivered: {exc}",
                        {"outcome": "notification", "reason": str(exc)},
                        error=True,
                    )
            self.machine.note(notified=True)
        before = await self._imsi(es10.port)
        switched = False
        if not record.enabled:
            try:
                result = await es10.enable_profile(record.iccid)
            except Es10Error as exc:
                return LpaOutcome(
                    self.machine.state, False, f"EnableProfile failed: {exc}", record.iccid, before
                )
            if result != 0:
                return LpaOutcome(
                    self.machine.state, False, f"EnableProfile answered {result}", record.iccid, before
                )
            self.machine.note(enabled=True)
            switched = True
        expected = await self._card_imsi(es10.port)  # the enabled profile's IMSI, as the card holds it
        imsi = before
        for _ in range(CIMI_ATTEMPTS):
            imsi = await self._imsi(es10.port)
            if imsi and (imsi == expected if expected else imsi != before or not switched):
                break
            await trio.sleep(CIMI_INTERVAL)
        return LpaOutcome(self.machine.state, True, "", record.iccid, imsi)

    async def _card_imsi(self, port: AtPort) -> str:
        """EF_IMSI of the card's USIM through AT+CRSM; "" when the modem or the card does not answer it."""
        try:
            async with slot_lock(port):
                answer = await port.command(READ_EF_IMSI, timeout=10.0)
        except AtTimeout:
            return ""
        if not answer.ok:
            return ""
        for line in answer.lines:
            head, _, rest = line.strip().partition(":")
            fields = rest.split(",")
            if head == "+CRSM" and len(fields) == 3 and fields[0].strip() in ("144", "145"):
                try:
                    return imsi_from_ef(bytes.fromhex(fields[2].strip().strip('"')))
                except ValueError:
                    return ""
        return ""

    async def _imsi(self, port: AtPort) -> str:
        try:
            async with slot_lock(port):  # slot 1's IMSI, whatever slot another user of the line chose
                answer = await port.command("AT+CIMI", timeout=10.0)
        except AtTimeout:
            return ""
        if not answer.ok:
            return ""
        for line in answer.lines:
            text = line.strip()
            if text.startswith("+CIMI:"):
                text = text[6:].strip()
            if text.isdigit():
                return text
        return ""


def imsi_from_ef(data: bytes) -> str:
    """The IMSI digits of EF_IMSI (TS 31.102 4.2.2: a length byte, then the digits in BCD behind the parity nibble,
    whose bit 4 says an odd count); "" when it is not one."""
    if len(data) < 2 or not 1 <= data[0] <= 8 or len(data) < 1 + data[0]:
        return ""
    nibbles = [n for b in data[1 : 1 + data[0]] for n in (b & 0x0F, b >> 4)]
    digits = nibbles[1:] if data[1] & 0x08 else nibbles[1:-1]
    if not digits or any(d > 9 for d in digits):
        return ""
    return "".join(str(d) for d in digits)


@dataclass
class LpaOptions:
    """`bipsim ap --lpa ...`: the activation code, the cloud store (`http://[USER:PASS@]HOST:PORT`: the account is
    the terminal's saved one, used by the `logged-in` policy), the UI policy, the state file, the PKI directory
    whose CI the ES9+ TLS trusts (None: bipsim.uicc.euicc.pki.default_pki_dir()), the cloud's record limit."""

    activation_code: str
    cloud_url: str
    ui: str = "logged-in"
    state: Path | None = None  # None: bipsim-lpa-<matchingId>.json in the working directory
    pki: Path | None = None
    limit: int = 1024
    new_flow: bool = False  # a finished flow of this code in the state file: start a new one (else refused)

    def state_path(self) -> Path:
        return self.state or default_state_path(parse_activation_code(self.activation_code).matching_id)


def split_cloud_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """`http://USER:PASS@HOST:PORT` -> (`http://HOST:PORT`, (USER, PASS)); without an account, None."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "http", url
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        return f"{scheme}://{rest}", None
    user, colon, password = userinfo.partition(":")
    if not colon or not user:
        raise ValueError("the cloud account in the URL is USER:PASS@")
    return f"{scheme}://{hostport}", (unquote(user), unquote(password))


class LpaService:
    """The LPA in the AP process: one Lpa for the process's life, run on each modem session until its flow has
    ended (a power cycle of the CP ends a session; the next one resumes the flow from the state file)."""

    def __init__(self, options: LpaOptions, tracer: Tracer = NULL_TRACER) -> None:
        from bipsim.ota.cloud_store import CloudClient
        from bipsim.uicc.euicc.pki import client_ssl_context, ensure_pki

        url, account = split_cloud_url(options.cloud_url)
        code = parse_activation_code(options.activation_code)
        pki = ensure_pki(options.pki)
        self.lpa = Lpa(
            activation_code=options.activation_code,
            machine=open_state(options.state_path(), options.activation_code, new_flow=options.new_flow),
            ui=UiPolicy.parse(options.ui),
            es9=Es9Client(code.smdp_address, context=client_ssl_context(pki), tracer=tracer),
            cloud=CloudClient(url, tracer=tracer),
            cloud_account=account,
            limit=options.limit,
            tracer=tracer,
        )
        self.tracer = tracer
        self.outcome: LpaOutcome | None = None

    async def session(self, port: AtPort) -> None:
        """Runs the flow on this modem session; a session that ends under it leaves the state for the next."""
        if self.lpa.machine.finished and self.outcome is not None:
            return
        try:
            self.outcome = await self.lpa.run(port)
            # the one line a user at the terminal reads; the trace has the steps
            print(f"lpa: {describe_outcome(self.outcome)}", flush=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.tracer.emit(
                Actor.AP,
                Actor.AP,
                Layer.APP,
                f"LPA paused in {self.lpa.machine.state.value}: the modem session ended",
                error=True,
                kind=Kind.LPA_RESULT,
                fields={"outcome": "pending", "state": self.lpa.machine.state.value, "reason": repr(exc)},
            )
