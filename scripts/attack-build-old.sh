#!/bin/sh
# Builds the floatlm of the commit before the seat-promise change (0cf4dc6,
# "adjacent version" of this one) as target/debug/floatlm-old, for
# tests/attack_upgrade.rs. Shares target/ with this tree, so only the old
# floatlm crates are compiled (Cargo.lock is the same).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
src="$here/target/old-src"
rm -rf "$src"
mkdir -p "$src"
git -C "$here" archive 0cf4dc67988c5c6fb1fcd1e217207dd3faea887b | tar -x -C "$src"
python3 - "$src/Cargo.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace('[[bin]]\nname = "floatlm"\n', '[[bin]]\nname = "floatlm-old"\n', 1)
s = s.replace('default-run = "floatlm"', 'default-run = "floatlm-old"')
open(p, "w").write(s)
PY
cd "$src"
CARGO_TARGET_DIR="$here/target" nice cargo build -j 2 --bin floatlm-old
ls -l "$here/target/debug/floatlm-old"
