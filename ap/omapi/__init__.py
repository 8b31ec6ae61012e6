"""The AP's Open Mobile API on a terminal without NFC (docs/protocols.md, "OMAPI on the AP"): the Framework layer
loads the card's GlobalPlatform SE Access Control rules at start-up into one variable per card
(`enforceCarrierPrivilege`), the PhoneInterfaceManager layer reads that variable before any channel is opened, the
RIL layer reaches the card through 3GPP TS 27.007 `+CCHO`/`+CGLA`/`+CCHC` on DLC 1, and the OMAPI service
(GlobalPlatform Open Mobile API: SEService, Reader, Session, Channel) serves applications."""
