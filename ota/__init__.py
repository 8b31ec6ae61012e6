"""The remote OTA server: GlobalPlatform Amendment B (SCP81) HTTP admin over PSK-TLS, RAM/RFM campaigns."""
