# Shared settings for the project's scripts. Source it: `. scripts/env.sh`.
# A stable target directory outside the clone, so CI and repeated runs reuse builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wardgate/target}"
WARDGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export WARDGATE_ROOT
export WARDGATE_PLUGINS="${WARDGATE_PLUGINS:-$WARDGATE_ROOT/dist/plugins}"
