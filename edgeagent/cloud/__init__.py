"""The cluster side: node credentials and the attestation controller (`edgeagent attestation-controller`).

Modules, one concept each: `crd` (the EdgeNode resource), `keylime` (registrar/verifier REST client),
`tenant` (Keylime's tenant role: U/V payload delivery), `bootstrap` (bootstrap tokens), `ekcheck` (EK
certificate against the vendor CA store and the pin), `csr` (the approver), `webhook` (Keylime's revocation
notifier endpoint), `revoke` (grants, cordon/taint, events), `leader` (Lease election), `controller` (the
reconcile loop tying them together), `kubeconfig` (kubeconfig files).
"""
