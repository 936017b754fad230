# Sourced by the model and dataset build scripts with `root` (the repository) set: sets `cache`
# (EDGEPATCH_CACHE or cache/), makes cache/downloads, and the model venv cache/venv with the
# pinned packages of models/mobilenet_v2/requirements.txt (created once, checked each time).
cache="${EDGEPATCH_CACHE:-$root/cache}"
mkdir -p "$cache/downloads"
if [ ! -x "$cache/venv/bin/python" ]; then
  python3 -m venv "$cache/venv"
fi
"$cache/venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/models/mobilenet_v2/requirements.txt"
