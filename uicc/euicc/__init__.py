"""The eUICC of the simulated card: remote SIM provisioning as GSMA SGP.22 (RSP Technical Specification v2.2-2.5).

The ISD-R applet (bipsim.uicc.applets.isd_r) answers the ES10 functions of SGP.22 section 5.7 over STORE DATA;
this package holds what it and the SM-DP+ (bipsim.ota.smdp) share: the ASN.1 subset of SGP.22 (rsp.asn, asn1.py),
the ECDSA/ECKA/SCP03t cryptography of SGP.22 sections 2.5-2.6 and Annex G (crypto.py), the test PKI of section 4.5
(pki.py), the Bound Profile Package on both sides (bpp_build.py, bpp_loader.py, section 2.5.5), the installed
profiles (profile_store.py) and the download session (session.py). See docs/protocols.md, "eUICC and the cloud
backup".
"""
