#!/bin/sh
# A private CA and the broker's certificate for deploy/compose.yaml (devices pin the CA, handed to them at
# enrollment). Use your own PKI instead by putting ca.crt, server.crt and server.key into deploy/certs.
#   deploy/make-certs.sh [DOMAIN]   (default: $EDGELOOP_DOMAIN or localhost)
set -eu
domain=${1:-${EDGELOOP_DOMAIN:-localhost}}
dir=$(dirname "$0")/certs
mkdir -p "$dir"
cd "$dir"
[ -f ca.key ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=edgeloop broker CA" -keyout ca.key -out ca.crt
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$domain" -keyout server.key -out server.csr
printf 'subjectAltName=DNS:%s\n' "$domain" > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile san.ext -out server.crt
rm -f server.csr san.ext
chmod 600 ca.key
chmod 644 server.key  # the broker container reads it as its own user: keep deploy/certs itself private (0700)
chmod 700 .
echo "wrote $dir/ca.crt, server.crt, server.key for $domain"
