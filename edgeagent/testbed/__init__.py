"""The local testbed: real Keylime and Kubernetes components on loopback, for tests, benchmarks and demos.

    procs           free loopback ports, process groups (start / stop by killpg), readiness waits
    keylime_config  Keylime 7.14's configuration files generated from typed settings
    keylime         Keylime verifier + registrar (+ tenant) from the Keylime venv (`make keylime`)
    kube_pki        a throwaway cluster PKI (ECDSA P-256)
    kube            etcd + kube-apiserver (+ kube-controller-manager, + kube-scheduler for real nodes),
                    1.36.5 (`make kube-current`) or 1.20.2 (`make kube`), admin by client certificate or token
    images          the pause and busybox images as OCI archives, built here (no registry)
    node            a real worker: containerd + runc + CNI bridge + kubelet in a mount namespace of its own
    worker          a device that becomes a worker: its agent's configuration, the kubelet after it, pods

Everything binds 127.0.0.1 only, lives under a caller-given directory and is torn down by process group: it
is never a deployment. The test suite wraps these as pytest fixtures (tests/fixtures/), `edgeagent bench
enroll` uses them directly, so benchmarks run from an installed package too (given the two caches).
Missing binaries are a one-line ConfigError naming the make target that provides them.
"""
