# Shared by bench/compare.sh and bench/instructions.sh (sourced, not run).

# install_missing NAME TOOL...: apt-get install the tools that are not on PATH.
install_missing() {
  local name="$1"; shift
  local need=() tool
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
  if [ ${#need[@]} -gt 0 ]; then
    echo "$name: installing ${need[*]}" >&2
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# The backends: nginx answering a fixed 150-byte JSON on two ports. The answers differ only in
# served_at, which the shadow rules ignore.
B1=127.0.0.1:8401 B2=127.0.0.1:8402

# backend_conf DIR: write DIR/nginx.conf for the backends (pid file in DIR).
backend_conf() {
  cat > "$1/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $1/pid; error_log stderr warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; default_type application/json;
  server { listen $B1; location / { return 200 '{"id":1,"status":"paid","total":{"amount":1299,"currency":"EUR"},"items":[{"sku":"SKU-0001","qty":2}],"served_at":"b1"}'; } }
  server { listen $B2; location / { return 200 '{"id":1,"status":"paid","total":{"amount":1299,"currency":"EUR"},"items":[{"sku":"SKU-0001","qty":2}],"served_at":"b2"}'; } } }
CONF
}
