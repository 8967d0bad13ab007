#!/usr/bin/env bash
# Post example payloads to a running receiver, each to the endpoint its directory
# names, and print the HTTP status and response body.
#
#   examples/send.sh [BASE_URL] [FILE...]
#
#   BASE_URL  default http://127.0.0.1:8080 (what `receiver serve` listens on)
#   FILE      default examples/alertmanager/sark-api-down.firing.json
#
#   examples/alertmanager/*.json -> POST /webhooks/alertmanager
#       with "Authorization: Bearer $RECEIVER_TOKEN" when RECEIVER_TOKEN is set
#   examples/pagerduty/*.json    -> POST /webhooks/pagerduty
#       signed "X-PagerDuty-Signature: v1=<HMAC-SHA256 of the body>" with
#       $RECEIVER_PAGERDUTY_SECRET when it is set
#   examples/events-v2/*.json    -> POST /v2/enqueue (the routing_key in the file
#       must be in RECEIVER_ROUTING_KEYS unless the receiver runs without credentials)
#
# Without credentials configured, a receiver on 127.0.0.1 accepts all three
# unauthenticated. Exits 1 if any request was not answered with 2xx.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
base="http://127.0.0.1:8080"
if [[ $# -gt 0 && "$1" =~ ^https?:// ]]; then
  base="${1%/}"
  shift
fi
if [[ $# -eq 0 ]]; then
  set -- "$here/alertmanager/sark-api-down.firing.json"
fi

command -v curl >/dev/null || { echo "send.sh: curl is required" >&2; exit 2; }

response="$(mktemp)"
trap 'rm -f "$response"' EXIT

failed=0
for file in "$@"; do
  if [[ ! -r "$file" ]]; then
    echo "send.sh: cannot read $file" >&2
    failed=1
    continue
  fi
  headers=(-H "Content-Type: application/json")
  case "$(basename "$(dirname "$file")")" in
    alertmanager)
      path=/webhooks/alertmanager
      if [[ -n "${RECEIVER_TOKEN:-}" ]]; then
        headers+=(-H "Authorization: Bearer $RECEIVER_TOKEN")
      fi
      ;;
    pagerduty)
      path=/webhooks/pagerduty
      if [[ -n "${RECEIVER_PAGERDUTY_SECRET:-}" ]]; then
        command -v openssl >/dev/null || { echo "send.sh: openssl is required to sign" >&2; exit 2; }
        # Sign the exact bytes curl sends (--data-binary keeps them unchanged).
        sig="$(openssl dgst -sha256 -hmac "$RECEIVER_PAGERDUTY_SECRET" -r <"$file" | cut -d' ' -f1)"
        headers+=(-H "X-PagerDuty-Signature: v1=$sig")
      fi
      ;;
    events-v2)
      path=/v2/enqueue
      ;;
    *)
      echo "send.sh: $file: put it under alertmanager/, pagerduty/ or events-v2/ so the endpoint is known" >&2
      failed=1
      continue
      ;;
  esac
  echo "==> POST $base$path  ($file)"
  if ! code="$(curl -sS -o "$response" -w '%{http_code}' "${headers[@]}" \
      --data-binary "@$file" "$base$path")"; then
    echo "send.sh: no answer from $base (is \`receiver serve\` running?)" >&2
    exit 2
  fi
  echo "HTTP $code"
  cat "$response"
  echo
  [[ "$code" =~ ^2 ]] || failed=1
done
exit "$failed"
