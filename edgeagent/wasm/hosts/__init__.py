"""Host modules, one per WIT interface a guest can import (see edgeagent.wasm for the API they follow)."""
