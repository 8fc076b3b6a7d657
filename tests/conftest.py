"""Shared fixtures. Real components live in tests/fixtures/, one plugin module each."""

pytest_plugins: list[str] = [
    "tests.fixtures.swtpm",
    "tests.fixtures.keylime",
    "tests.fixtures.kube",
    "tests.fixtures.umockdev",
    "tests.fixtures.wasm_guests",
    "tests.fixtures.components",
]
