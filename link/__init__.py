"""Serial lines as trio Streams (pty, pyserial), 3GPP TS 27.010 CMUX, V.250 AT syntax, AT chat (DTE) and server (DCE)."""
