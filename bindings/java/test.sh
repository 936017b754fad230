#!/usr/bin/env bash
# Compiles the Java API (bindings/java/java) with the JDK, runs its JUnit suite against the JNI
# library of the workspace build, then compiles and runs README.md's "Use from Java" example.
#   cargo build --release --workspace && bash bindings/java/test.sh
# Needs javac/java (Debian: default-jdk-headless) and JUnit 4 (Debian: junit4).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
lib="$target/release/libedgepatch_jni.so"
[ -f "$lib" ] || { echo "no $lib: run cargo build --release --workspace first" >&2; exit 1; }
junit=/usr/share/java/junit4.jar
hamcrest=/usr/share/java/hamcrest-core.jar
for jar in "$junit" "$hamcrest"; do
  [ -f "$jar" ] || { echo "no $jar: apt-get install junit4" >&2; exit 1; }
done
out="${TMPDIR:-/tmp}/edgepatch-java"
rm -rf "$out" && mkdir -p "$out/classes" "$out/example"
javac -Xlint:all -Werror --release 11 -d "$out/classes" -cp "$junit" \
  "$root"/bindings/java/java/dev/edgepatch/*.java "$root"/bindings/java/test/dev/edgepatch/*.java
java -Xcheck:jni -Dedgepatch.library="$lib" -Dedgepatch.root="$root" \
  -cp "$out/classes:$junit:$hamcrest" org.junit.runner.JUnitCore dev.edgepatch.EdgepatchTest | tee "$out/junit.txt"
grep -q "^OK (" "$out/junit.txt"
if grep -q "^WARNING: JNI" "$out/junit.txt"; then echo "the JVM's JNI checks warned" >&2; exit 1; fi

awk '/^## Use from Java/{f=1} f&&/^```java$/{g=1;next} g&&/^```$/{exit} g' "$root/README.md" > "$out/example/Example.java"
[ -s "$out/example/Example.java" ] || { echo "README.md has no 'Use from Java' example" >&2; exit 1; }
javac -Xlint:all -Werror -d "$out/example" -cp "$out/classes" "$out/example/Example.java"
java -Xcheck:jni -Dedgepatch.library="$lib" -cp "$out/example:$out/classes" Example | tee "$out/example.txt"
grep -q "^red " "$out/example.txt"
