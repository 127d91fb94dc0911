#!/usr/bin/env bash
# tunpipe in place of wireguard-go for an app built on WireGuardKit: the build tool of the
# app's "WireGuardGoBridge<PLATFORM>" External Build System target (wireguard-apple's README),
# instead of `make` in Sources/WireGuardKitGo. It writes what that Makefile writes, the
# library WireGuardKitGo links (`linkedLibrary("wg-go")`): $CONFIGURATION_BUILD_DIR/libwg-go.a,
# here the slice of tunpipe's XCFramework for $PLATFORM_NAME. tunpipe's library exports
# WireGuardKit's eight functions with the types of WireGuardKitGo's wireguard.h, which stays,
# as does every line of Swift. See swift/README.md, "WireGuardKit apps".
#
# In the target: Build Tool /bin/bash, Arguments
#   "$(SRCROOT)/path/to/tunpipe/swift/scripts/wireguardkit-bridge.sh" $(ACTION)
# and a build setting TUNPIPE_XCFRAMEWORK with the path of TunPipeFFI.xcframework (made by
# build-xcframework.sh). Xcode passes PLATFORM_NAME and CONFIGURATION_BUILD_DIR.
#
# Written where no Mac exists: not yet run by Xcode.
set -euo pipefail
action=${1:-build}
: "${CONFIGURATION_BUILD_DIR:?run by Xcode, which sets CONFIGURATION_BUILD_DIR}"
out="$CONFIGURATION_BUILD_DIR/libwg-go.a"
if [ "$action" = clean ]; then
  rm -f "$out"
  exit 0
fi
: "${PLATFORM_NAME:?run by Xcode, which sets PLATFORM_NAME}"
xcframework=${TUNPIPE_XCFRAMEWORK:-$(cd "$(dirname "$0")/.." && pwd)/TunPipeFFI.xcframework}
[ -d "$xcframework" ] || { echo "error: no $xcframework (build it with swift/scripts/build-xcframework.sh)" >&2; exit 1; }

# The XCFramework's slice folders are named by platform and architectures
# (ios-arm64, ios-arm64_x86_64-simulator, macos-arm64_x86_64, tvos-...).
case "$PLATFORM_NAME" in
  iphoneos) os=ios simulator=no ;;
  iphonesimulator) os=ios simulator=yes ;;
  macosx) os=macos simulator=no ;;
  appletvos) os=tvos simulator=no ;;
  appletvsimulator) os=tvos simulator=yes ;;
  *) echo "error: platform $PLATFORM_NAME: tunpipe ships no slice for it" >&2; exit 1 ;;
esac
slice=""
for dir in "$xcframework/$os"-*; do
  case "$dir" in *-simulator) is_sim=yes ;; *) is_sim=no ;; esac
  if [ "$is_sim" = "$simulator" ] && [ -f "$dir/libtunpipe_ffi.a" ]; then slice="$dir/libtunpipe_ffi.a"; fi
done
[ -n "$slice" ] || { echo "error: $xcframework has no $PLATFORM_NAME slice" >&2; exit 1; }
mkdir -p "$CONFIGURATION_BUILD_DIR"
cp "$slice" "$out"
echo "tunpipe: $slice -> $out (in place of wireguard-go's libwg-go.a)"
