"""Wire formats shared by the device (`edgeagent.attest`) and the cluster side (`edgeagent.cloud`).

Pure data types and functions, no I/O and no TPM: each side imports them from here, so neither imports the
other. `keylime`: Keylime's agent protocol. `nodebinding`: the CSR annotation binding a node key to the AK.
"""
