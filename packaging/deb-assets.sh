#!/usr/bin/env bash
# Builds the release binaries and the files the .deb ships beside them that
# are generated rather than kept in git: manual pages and shell completions
# (made by the binaries' own `man` and `completions` subcommands, so they
# always match their flags) and the units with the Debian paths. Then
# `cargo deb --no-build --strip` packs them ([package.metadata.deb] in Cargo.toml).
#
#   packaging/deb-assets.sh && cargo deb --no-build --strip
#
# Everything goes under $CARGO_TARGET_DIR/release/deb-assets (target/ by
# default), which cargo-deb reads as `target/release/deb-assets`.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bins
out="$target/release/deb-assets"
rm -rf "$out"
mkdir -p "$out/man" "$out/bash" "$out/zsh" "$out/fish" "$out/systemd"

for program in addreality-exporter jobctl; do
  binary="$target/release/$program"
  "$binary" man "$out/man" >/dev/null
  "$binary" completions bash >"$out/bash/$program"
  "$binary" completions zsh >"$out/zsh/_$program"
  "$binary" completions fish >"$out/fish/$program.fish"
  # The units in systemd/ are for a binary installed by hand in
  # /usr/local/bin; the package installs it in /usr/bin.
  sed "s|/usr/local/bin/|/usr/bin/|g" "systemd/$program.service" >"$out/systemd/$program.service"
done
# Debian keeps manual pages compressed; -n leaves the timestamp out, so the
# same sources give the same package.
gzip -9n "$out"/man/*.1
