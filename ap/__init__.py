"""The application processor: the proxy service on DLC 2 (%GETNET, %WEBOPCH, %WEBCLCH), its network model
(Wi-Fi, APN database) and the relay between CMUX data channels and TCP (CN101594614A embodiment 2)."""
