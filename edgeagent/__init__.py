"""edgeagent: take an edge device from power-on to a trusted Kubernetes worker, then run its drivers and
controllers in WebAssembly."""

__version__ = "0.1.0"
