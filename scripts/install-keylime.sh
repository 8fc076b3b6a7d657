#!/usr/bin/env bash
# Installs stock Keylime 7.14.3 (verifier, registrar, tenant) into its own virtual environment, once per machine:
# ${EDGEAGENT_CACHE:-~/.cache/edgeagent}/keylime-7.14.3. It is the cloud side the tests run against; the agent
# never imports it.
# Why these details: the keylime wheel declares no dependencies (they are listed here by hand), and it imports
# `gpg` unconditionally, which only works as Debian's python3-gpg: hence a venv made from /usr/bin/python3 with
# --system-site-packages.
set -euo pipefail

VERSION=7.14.3
CACHE="${EDGEAGENT_CACHE:-$HOME/.cache/edgeagent}"
VENV="$CACHE/keylime-$VERSION"
DEPS=(tornado pyzmq pyyaml requests sqlalchemy alembic pyasn1 pyasn1-modules jinja2 jsonschema lark packaging
      psutil typing_extensions argcomplete cryptography)
# The stamp records what was installed: changing the list above reinstalls.
WANT="keylime==$VERSION ${DEPS[*]}"
STAMP="$VENV/.edgeagent-stamp"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/keylime_verifier" ]; then
  exit 0
fi

for bin in /usr/bin/python3 /usr/bin/tpm2_eventlog; do
  [ -x "$bin" ] || { echo "install-keylime: $bin missing (run scripts/install-system-deps.sh)" >&2; exit 1; }
done
/usr/bin/python3 -c 'import gpg' 2>/dev/null \
  || { echo "install-keylime: Debian python3-gpg missing (run scripts/install-system-deps.sh)" >&2; exit 1; }

echo "installing keylime $VERSION into $VENV (once per machine)" >&2
mkdir -p "$CACHE"
[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "keylime==$VERSION" "${DEPS[@]}"
# Fail here, not in a test, when an import is missing.
CHECK='import keylime.cmd.verifier, keylime.cmd.registrar, keylime.cmd.tenant, gpg'
"$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1 || "$VENV/bin/python" -c "$CHECK"
printf '%s' "$WANT" >"$STAMP"
echo "keylime $VERSION ready in $VENV" >&2
