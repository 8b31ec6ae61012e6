"""The simulated UICC: TLV codec, CAT proactive engine, APDU processor, file system and the OTA (SCP81) agent."""
