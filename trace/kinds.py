"""The catalogue of trace event kinds (docs/protocols.md, "Traces": the `kind` field).

A kind is `<layer>.<what>`, lower case, dotted. The component that sends or receives a message names its kind when
it emits the event; pcap, replay, render, scenario checks and benches select events by kind and read `fields`,
never the human `summary`. Add a kind here when a new message type is traced, with one line saying what it is.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """Every kind a bipsim component emits.

    Common `fields`: `channel` (BIP channel number), `dlci`, `host`/`port`, `status`/`sw`; field names are
    snake_case, values JSON scalars or lists. Events about a BIP data channel relayed over CMUX carry `dlci` too.
    `t_src`/`t_dst` are written by the merge (trace/reader.py), not by emitters: when both ends recorded one
    message, the sender's and the receiver's times.
    """

    # card interface (TS 102 221 / TS 102 223): one event per C-APDU and one per R-APDU
    APDU_COMMAND = "apdu.command"  # a C-APDU that is not a CAT command below (SELECT, READ BINARY, ...)
    APDU_RESPONSE = "apdu.response"  # the R-APDU of any command, status word last; fields: sw
    APDU_ATR = "apdu.atr"  # the card's answer to reset (not an R-APDU)
    CAT_TERMINAL_PROFILE = "cat.terminal_profile"
    CAT_FETCH = "cat.fetch"  # FETCH C-APDU
    # fields: command (the spec's name, "OPEN CHANNEL"), number, qualifier
    CAT_PROACTIVE = "cat.proactive"  # FETCH R-APDU holding a proactive command
    # fields: command (name of the command answered), result (general result, int)
    CAT_TERMINAL_RESPONSE = "cat.terminal_response"
    # fields: envelope ("event_download", "sms_pp_download"), event ("data_available", "channel_status"),
    # channel (int), link ("established" | "dropped" | "not_established") for channel status
    CAT_ENVELOPE = "cat.envelope"
    # V.250 / 27.007 on a line or DLC
    AT_COMMAND = "at.command"  # a command line sent by the DTE (or the CP on the proxy DLC)
    AT_ECHO = "at.echo"  # the DCE's echo of a command line
    AT_INFO = "at.info"  # an information text line answering a command
    AT_FINAL = "at.final"  # OK, ERROR, +CME ERROR: n, CONNECT, ...; fields: result
    AT_URC = "at.urc"  # an unsolicited result code
    AT_ERROR = "at.error"  # a line refused or dropped (too long, late answer, torn command)
    AT_TEXT = "at.text"  # 27.005 text entry after the "> " prompt (+CMGS, +CMGW, +CNMA); fields: cancelled
    # 27.005 SMS at the CP (cp/sms_commands.py): what the ME hands the network and what it got from it
    SMS_SUBMIT = "sms.submit"  # an MO TPDU to the SMSC; fields: mr, storage, index (for +CMSS)
    # an MT TPDU from the SMSC; fields: route (cmt, cmti, download), storage, index
    SMS_DELIVER = "sms.deliver"
    SMS_STATUS_REPORT = "sms.status_report"  # an SMS-STATUS-REPORT from the SMSC; fields: route (cds, cdsi)
    SMS_ACK = "sms.ack"  # the TE's +CNMA: RP-ACK/RP-ERROR of a +CMT/+CDS to the network; fields: ack
    SMS_ERROR = "sms.error"  # a 27.005 command refused; fields: command, code (+CMS ERROR), reason
    # 27.010
    CMUX_FRAME = "cmux.frame"  # a control frame (SABM/UA/DM/DISC); fields: dlci, frame, pf
    CMUX_CONTROL = (
        "cmux.control"  # a DLC 0 control message (MSC, PN, CLD, Test, FCon/FCoff, NSC); fields: message
    )
    CMUX_DATA = "cmux.data"  # UIH data on a DLC; fields: dlci
    CMUX_ERROR = "cmux.error"  # frames dropped (bad FCS, bad structure) or refused
    # the serial line itself
    LINE_OPEN = "line.open"
    LINE_REOPENED = "line.reopened"  # the line was lost and opened again; fields: count
    LINE_CLOSED = "line.closed"
    # PPP of a host's data call (cp/data_mode.py, net/ppp.py): hex the frame without FCS (address/control if sent,
    # protocol, packet); fields: cid, protocol, code, direction ("in" from the host, "out"), length, dlci on a DLC
    PPP_LCP = "ppp.lcp"  # an LCP packet (Configure-*, Terminate-*, Echo, Protocol-Reject, Code-Reject)
    PPP_AUTH = "ppp.auth"  # a PAP or CHAP packet
    PPP_IPCP = "ppp.ipcp"  # an IPCP packet
    PPP_IP = "ppp.ip"  # an IPv4 packet carried in PPP
    PPP_FRAME = "ppp.frame"  # a frame of another protocol (answered with Protocol-Reject)
    # bytes or a frame dropped: bad FCS, runt, too long, aborted, wrong phase; reason
    PPP_DROPPED = "ppp.dropped"
    # the call's life: event (connect, link_up, authenticated, network_up, escape, ended...)
    PPP_CALL = "ppp.call"
    # transport
    TCP_CONNECT = "tcp.connect"  # a connection request (SYN); fields: host, port, channel
    TCP_ACCEPT = "tcp.accept"  # the peer's acknowledgement (SYN/ACK): the connection is up
    TCP_DATA = "tcp.data"  # payload bytes
    TCP_CLOSE = "tcp.close"  # our close (FIN)
    TCP_CLOSED = "tcp.closed"  # the peer's close or its acknowledgement
    TCP_ERROR = "tcp.error"  # refused, reset, timed out
    # the link models of net/radio.py: a packet the radio (or Wi-Fi) model dropped; hex the packet, never on a wire
    IP_LOST = "ip.lost"  # fields: direction ("up" | "down"), reason ("lost", "queue_full", "closed"), length
    # the packet gateway (net/pgw.py): its answer to a DNS query of a context; fields: name, qtype, rcode, addresses
    DNS_ANSWER = "dns.answer"
    # the packets of the CP's own IPv4 stack (net/stack.py): hex the exact IPv4 packet; fields src, dst (addresses)
    # and for TCP/UDP sport, dport, len (payload bytes)
    IP_PACKET = "ip.packet"  # an IPv4 packet of a protocol the stack does not carry; fields: protocol
    # one fragment; fields: protocol, id, offset, more, len, complete (reassembled)
    IP_FRAGMENT = "ip.fragment"
    # a packet dropped (bad checksum, truncated, refused fragment...); fields: reason
    IP_DROPPED = "ip.dropped"
    TCP_SYN = "tcp.syn"  # a segment with SYN (SYN, SYN/ACK); fields: flags, seq, ack, win
    TCP_SEGMENT = "tcp.segment"  # any other segment (data, ACK, FIN, RST); fields: flags, seq, ack, win
    TCP_RETRANSMIT = "tcp.retransmit"  # a segment sent again; fields as tcp.segment and rto, reason
    UDP_DATAGRAM = "udp.datagram"  # one UDP datagram
    ICMP_MESSAGE = "icmp.message"  # an ICMP message (layer ip); fields: type, code, id and seq for echo
    # security and the admin protocol
    TLS_HANDSHAKE = "tls.handshake"
    TLS_ALERT = "tls.alert"
    HTTP_REQUEST = "http.request"  # fields: method, target
    HTTP_RESPONSE = "http.response"  # fields: status
    HTTP_ERROR = "http.error"  # a malformed message or a limit passed
    SMS_PP = "sms.pp"  # an SMS-PP (data download) TPDU
    SMS_POR = "sms.por"  # a proof of receipt; fields: status (hex of the response status code)
    # the CP's SIM security commands (+CPIN, +CLCK, +CPWD: docs/protocols.md "SIM security"); fields: command,
    # result ("OK" or "+CME ERROR: n"), slot, sw of the card's refusal, code/facility/mode as they apply
    SIM_SECURITY = "sim.security"
    # the proxy dialect (docs/protocols.md, "The proxy dialect") and application events
    APP_EVENT = "app.event"  # a notable state change of a process or session; fields say which
    APP_ERROR = "app.error"  # a task's failure, ended with its connection or channel
    # the vsmartcard vpcd reader protocol of `bipsim card serve` (docs/protocols.md, "The card as a PC/SC card")
    VPCD_CONTROL = "vpcd.control"  # power off / power on / reset from the reader; fields: control
    VPCD_ERROR = "vpcd.error"  # a reader message vpcd never sends; the connection is dropped; fields: reason
    # the AP's OMAPI stack (docs/protocols.md, "OMAPI on the AP"); fields: layer, reader, and as each says
    OMAPI_FRAMEWORK = "omapi.framework"  # a Framework step: power on, card check, rule load, the variable set
    OMAPI_CHECK = "omapi.check"  # PhoneInterfaceManager reads the variable; fields: variable, allowed
    OMAPI_RIL = "omapi.ril"  # the RIL's open/close request to the modem; fields: op, aid, session
    OMAPI_CALL = "omapi.call"  # an application's OMAPI call and its outcome; fields: api, app, result
    OMAPI_ERROR = "omapi.error"  # an OMAPI exception raised to the application; fields: exception, reason
    OMAPI_CHOOSER = "omapi.chooser"  # the dialog listing the available readers, or the user's choice
    OMAPI_ACCESS = "omapi.access"  # the GP SEAC decision for an applet and an application; fields: granted
    OMAPI_CONTROL = "omapi.control"  # the AP's OMAPI control socket listening; fields: host, port
    # USAT through 27.007 section 12 (docs/protocols.md, "USAT through 27.007")
    USAT_ACTIVATE = "usat.activate"  # the host's toolkit activated (+CUSATA); fields: activation, commands
    # a proactive command handed to the host (+CUSATP); fields: command, number
    USAT_HANDOVER = "usat.handover"
    USAT_END = "usat.end"  # the card ended the proactive session after the host's TR (+CUSATEND)
    # the AP's toolkit answered a command by policy; fields: command, policy, result
    USAT_TOOLKIT = "usat.toolkit"
    # the network's SMS centre (net/smsc.py; docs/protocols.md, "SMS and the SMSC")
    SMSC_MO = "smsc.mo"  # an MO SMS-SUBMIT the SMSC took; fields: id, mr, origin, destination, srr, status
    SMSC_REFUSED = "smsc.refused"  # an MO TPDU the SMSC refused; fields: origin, reason, code (+CMS ERROR)
    SMSC_MT = "smsc.mt"  # an MT TPDU offered to the ME; fields: id, type, originator, data_download
    # the ME's answer to an MT TPDU (hex: the PoR); fields: id, state, sw, cause
    SMSC_OUTCOME = "smsc.outcome"
    SMSC_CONTROL = "smsc.control"  # the control socket listening (host, port) or a request answered (op, ok)
    # the CP and the network model beyond SMS (issue 16: cp/pdp_choice.py, cp/voice_calls.py, cp/status_commands.py)
    # the APN a card's channel uses without an AP; fields: source, apn, user, cid, channel
    PDP_CHOICE = "pdp.choice"
    # a voice call changed state (no audio); fields: id, state, number, direction, cause
    CALL_STATE = "call.state"
    # a USSD string to or from the network; fields: direction, m (27.007 <m>), dcs
    USSD_MESSAGE = "ussd.message"
    NITZ = "nitz.update"  # the network's time and time zone reached the ME; fields: tz (quarter hours), dst
    # the publish server's access log (ota/publish_server.py; docs/protocols.md, "Push deployment"): one event per
    # answered request (hex: the answer's JSON); fields: method, target, status, imei, and as each says
    PUBLISH_CHALLENGE = "publish.challenge"  # a nonce issued; fields: imei, channel (http, push)
    PUBLISH_AUTH = "publish.auth"  # a terminal's MAC checked; fields: imei, ok, reason, channel
    PUBLISH_CATALOGUE = "publish.catalogue"  # a release looked up; fields: name, version
    PUBLISH_CHECK = "publish.check"  # the version check (embodiment 3); fields: name, version, update, latest
    PUBLISH_DOWNLOAD = "publish.download"  # a package served; fields: name, version, size, sha256, fault
    PUBLISH_REPORT = "publish.report"  # a terminal's result; fields: name, version, result (JSR-118), reason
    PUBLISH_NOTIFY = "publish.notify"  # a release's notice sent; fields: name, version, via, msisdn, sent
    # a request refused (4xx/5xx) before its endpoint's work; fields: reason
    PUBLISH_REFUSED = "publish.refused"
    # a frame of the IP-push connection (hex: length prefix and JSON); fields: connection, direction, type, reason
    PUBLISH_PUSH = "publish.push"
    # the AP's upgrade agent (ap/upgrade/; docs/protocols.md, "The upgrade agent")
    # a notice heard, a look-alike or another SMS; fields: via, name, version
    UPGRADE_NOTICE = "upgrade.notice"
    UPGRADE_PROMPT = "upgrade.prompt"  # the user asked; fields: name, version, via, answer, installed
    # the result told the user; fields: name, version, result (JSR-118), reason
    UPGRADE_RESULT = "upgrade.result"
    UPGRADE_PUSH = "upgrade.push"  # a frame of the terminal's IP-push connection; fields: type, direction
    # the cloud store's access log (ota/cloud_store.py; docs/protocols.md, "eUICC and the cloud backup"): one event
    # per answered request (hex: the answer's body, never a page); fields: method, target, status, user, reason
    CLOUD_PAGE = "cloud.page"  # a page of the website served (login, register, home); fields: page
    CLOUD_LOGIN = "cloud.login"  # a login, logout or session check; fields: ok, check, logout
    CLOUD_REGISTER = "cloud.register"  # a registration; fields: ok
    CLOUD_UPLOAD = "cloud.upload"  # a record stored; fields: eid, module, index, count, bytes, complete, ppr
    # a fetch by (EID, module): 200, 404 none, 409 incomplete; fields: records, missing
    CLOUD_FETCH = "cloud.fetch"
    CLOUD_DELETE = "cloud.delete"  # a backup deleted (or 404 none); fields: eid, module, records
    # a request refused before its endpoint's work (401, 400 naming the field, 403, 404, 405, 413, 415); fields: field
    CLOUD_REFUSED = "cloud.refused"
    # ES9+ of GSMA SGP.22 between the LPA and the SM-DP+ (ota/smdp.py, ota/es9_json.py; docs/protocols.md, "eUICC and
    # the cloud backup"): hex the JSON body; fields: function, transaction_id, and as each says
    ES9_REQUEST = "es9.request"  # an ES9+ function called; fields: function, call_id, peer
    # its answer; fields: function, http_status, status, subject_code, reason_code, message, matching_id, eid
    ES9_RESPONSE = "es9.response"
    # refused before any function ran (404, 405, 400 unreadable JSON); fields: status
    ES9_REFUSED = "es9.refused"
    # a served profile's state changed (released, downloaded, installed, error); fields: matching_id, iccid, eid
    ES9_PROFILE = "es9.profile"
    # a handleNotification taken; fields: notification, iccid, seq_number, result, verified
    ES9_NOTIFICATION = "es9.notification"
    # the AP's LPA (ap/lpa/; docs/protocols.md, "eUICC and the cloud backup"), steps 000:*
    LPA_ES10 = "lpa.euicc"  # an ES10 request or answer (hex: its DER); fields: function, direction
    # the LPA's ES9+ call and the answer it got (hex: the JSON); fields: function, direction, status
    LPA_ES9 = "lpa.smdp"
    # a page shown or the user's answer (login, registration, the preset message); fields: page, action
    LPA_UI = "lpa.ui"
    LPA_STATE = "lpa.state"  # a change of the LPA's persisted state; fields: previous, state, event
    # the record format's steps 4011..4014 and the parse of 404; fields: part, count
    LPA_RECORDS = "lpa.records"
    LPA_CLOUD = "lpa.cloud"  # a request of the LPA to the cloud store; fields: op, status, records, reason
    LPA_RESULT = "lpa.result"  # the flow's outcome told the user; fields: outcome, state, iccid, imsi, reason
