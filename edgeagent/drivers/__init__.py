"""Driver side of the agent: loading Wasm drivers with their policies, and the native Python twins."""
