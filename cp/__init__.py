"""The modem processor: the 3GPP TS 27.007 command set, the card driver, the BIP gateway (ETSI TS 102 223) and its
bearers (own TCP/IP stack, AP proxy)."""
