#!/usr/bin/env bash
# Compiles the generated Kotlin bindings and NodeTunnelTest.kt with the Kotlin compiler from the
# PyPI wheel kotlin-jupyter-kernel (no Gradle or Android SDK here), and runs the test on the
# host JVM through JNA against the debug build of the library.
set -euo pipefail
cd "$(dirname "$0")/../.."
K=target/kotlin
J=$K/jars
if [ ! -f "$J/kotlin-stdlib-2.3.10-RC.jar" ]; then
    echo "fetching the Kotlin compiler (PyPI kotlin-jupyter-kernel, about 80 MB)"
    mkdir -p "$K"
    pip download -q --no-deps -d "$K" kotlin-jupyter-kernel==0.19.0.944
    rm -rf "$K/unzipped" && mkdir -p "$K/unzipped" "$J"
    unzip -q -o "$K"/kotlin_jupyter_kernel-*.whl 'run_kotlin_kernel/jars/*' -d "$K/unzipped"
    cp "$K"/unzipped/run_kotlin_kernel/jars/*.jar "$J"/
fi
JNA=/usr/share/java/jna.jar
[ -f "$JNA" ] || { echo "JNA missing: apt-get install -y libjna-java (tests/setup.sh does)" >&2; exit 1; }
cargo build -q -p skyroute-ffi -p uniffi-bindgen
STD="$J/kotlin-stdlib-2.3.10-RC.jar"
COMPILER="$J/kotlin-jupyter-kernel-0.19.0-944-all.jar:$STD:$J/kotlin-reflect-2.3.10-RC.jar:$J/annotations-13.0.jar:$J/kotlin-script-runtime-2.4.0-dev-6891.jar"
OUT=$K/out
rm -rf "$OUT" && mkdir -p "$OUT"
java -cp "$COMPILER" org.jetbrains.kotlin.cli.jvm.K2JVMCompiler -no-stdlib -no-reflect -nowarn \
    -classpath "$STD:$JNA" -d "$OUT" \
    bindings/generated/kotlin/net/skyroute/skyroute_ffi.kt android/jvm-test/NodeTunnelTest.kt
java -Djna.library.path=target/debug -cp "$OUT:$STD:$JNA" NodeTunnelTestKt
